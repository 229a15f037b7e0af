"""manifest.json: what a shard folder holds, where each utterance came from, and what was rejected and why.

It is written last and atomically, so a reader never sees shards that a crash left half made.
The fields are documented in shards/README.md.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from w2v.errors import ManifestError
from w2v.shards.location import Location
from w2v.shards.schema import DTYPE, FORMAT, READABLE_VERSIONS, VERSION

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"


@dataclass(frozen=True)
class ShardEntry:
    path: str  # relative to the manifest's folder
    bucket: int
    rows: int
    seconds: float
    bytes: int
    sha256: str


@dataclass(frozen=True)
class FileEntry:
    """A metadata file of the folder (a source table) as the manifest lists it."""

    path: str  # relative to the manifest's folder
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class IndexEntry:
    """An index file (w2v.shards.index) as the manifest lists it."""

    path: str  # relative to the manifest's folder
    rows: int
    bytes: int
    sha256: str
    shards: tuple[str, ...]  # the shards whose utterances it holds


StoredFile = ShardEntry | IndexEntry | FileEntry  # a file the manifest names with its size and checksum


@dataclass(frozen=True)
class SourceEntry:
    """One raw file and what prepare made of it."""

    uri: str
    size: int
    mtime: float | None
    etag: str | None
    metadata_sha256: str | None
    status: str  # "kept" or "rejected"
    reason: str | None = None  # reject code when status == "rejected"
    error: str | None = None
    utterances: tuple[str, ...] = ()
    decoded_seconds: float = 0.0
    kept_seconds: float = 0.0
    dropped_seconds: float = 0.0
    dropped_pieces: int = 0
    # Pieces removed by the quality filters: {id, start_seconds, seconds, reason, value, threshold} each.
    filtered: tuple[dict[str, Any], ...] = ()
    filtered_seconds: float = 0.0
    audio_sha256: str | None = None
    duplicate_of: str | None = None  # the kept source this one duplicates
    decoder: str | None = None
    original_sample_rate: int | None = None
    channels: int | None = None
    gain: float = 1.0

    def rejected_as(self, reason: str, error: str, **details: Any) -> SourceEntry:
        """This source rejected whole: its decoded seconds all count as rejected, none as kept or dropped."""
        return replace(
            self,
            status="rejected",
            reason=reason,
            error=error,
            utterances=(),
            kept_seconds=0.0,
            dropped_seconds=0.0,
            dropped_pieces=0,
            filtered=(),
            filtered_seconds=0.0,
            **details,
        )


SOURCE_FIELDS = fields(SourceEntry)


@dataclass(frozen=True)
class Manifest:
    sample_rate: int
    generation: int = 0
    bucket_edges_seconds: tuple[float, ...] = ()
    # Inline, or read from the shard list files on first use once there are many (w2v.shards.shard_list).
    shards: Sequence[ShardEntry] = ()
    index: tuple[IndexEntry, ...] = ()
    # Read from the source table files on first use (w2v.shards.sources); a dict while a commit builds one.
    sources: Mapping[str, SourceEntry] = field(default_factory=dict)
    source_tables: tuple[FileEntry, ...] = ()
    shard_tables: tuple[FileEntry, ...] = ()  # set by write_manifest: the shard list's files, when not inline
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    last_run: dict[str, Any] = field(default_factory=dict)
    quality_histograms: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    # counts(), seconds() and seconds_removed_by_reason() as the manifest file states them: readers need not
    # read the source table for them. Empty when the sources were changed in memory.
    summary: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def files(self) -> tuple[StoredFile, ...]:
        """Every file the folder holds besides manifest and rejects: shards, index files, source tables and
        shard list files."""
        return (*self.shards, *self.index, *self.source_tables, *self.shard_tables)

    @property
    def training_files(self) -> tuple[StoredFile, ...]:
        """The files training reads: the shard list files (if any), the shards, then the index files."""
        return (*self.shard_tables, *self.shards, *self.index)

    @property
    def kept_sources(self) -> list[SourceEntry]:
        return [s for s in self.sources.values() if s.status == "kept"]

    @property
    def rejected_sources(self) -> list[SourceEntry]:
        return [s for s in self.sources.values() if s.status == "rejected"]

    def counts(self) -> dict[str, Any]:
        if "counts" in self.summary:
            return dict(self.summary["counts"])
        rejected = Counter(s.reason or "unknown" for s in self.rejected_sources)
        return {
            "files_seen": len(self.sources),
            "files_kept": len(self.kept_sources),
            "utterances": sum(s.rows for s in self.shards),
            "rejected": dict(sorted(rejected.items())),
            "short_pieces_dropped": sum(s.dropped_pieces for s in self.sources.values()),
            "filtered": dict(sorted(Counter(f["reason"] for s in self.sources.values() for f in s.filtered).items())),
            "shards": len(self.shards),
        }

    def seconds(self) -> dict[str, float]:
        if "seconds" in self.summary:
            return dict(self.summary["seconds"])
        sources = self.sources.values()
        return {
            "decoded": sum(s.decoded_seconds for s in sources),
            "kept": sum(s.kept_seconds for s in sources),
            "dropped_short": sum(s.dropped_seconds for s in sources),
            "filtered": sum(s.filtered_seconds for s in sources),
            "rejected": sum(s.decoded_seconds for s in self.rejected_sources),
            "in_shards": sum(s.seconds for s in self.shards),
        }

    def seconds_removed_by_reason(self) -> dict[str, float]:
        """Audio each reason removed: whole rejected sources, and pieces removed by the quality filters."""
        if "seconds_removed_by_reason" in self.summary:
            return dict(self.summary["seconds_removed_by_reason"])
        removed: dict[str, float] = defaultdict(float)
        for source in self.sources.values():
            if source.status == "rejected":
                removed[source.reason or "unknown"] += source.decoded_seconds
            for piece in source.filtered:
                removed[piece["reason"]] += piece["seconds"]
            if source.dropped_seconds:
                removed["short_piece"] += source.dropped_seconds
        return dict(sorted(removed.items()))

    def to_json(self) -> dict[str, Any]:
        if isinstance(self.sources, dict) and self.sources and not self.source_tables:
            raise ValueError("the manifest's sources are in no source table: write one (w2v.shards.sources) first")
        return {
            "format": FORMAT,
            "version": VERSION,
            "generation": self.generation,
            "sample_rate": self.sample_rate,
            "dtype": DTYPE,
            "created": self.created,
            "updated": self.updated,
            "counts": self.counts(),
            "seconds": self.seconds(),
            "seconds_removed_by_reason": self.seconds_removed_by_reason(),
            "bucket_edges_seconds": list(self.bucket_edges_seconds),
            **(
                {"shard_tables": [asdict(t) for t in self.shard_tables]}
                if self.shard_tables
                else {"shards": [asdict(s) for s in self.shards]}
            ),
            "index": [{**asdict(i), "shards": list(i.shards)} for i in self.index],
            "source_tables": [asdict(t) for t in self.source_tables],
            "config": self.config,
            "versions": self.versions,
            "last_run": self.last_run,
            "quality_histograms": self.quality_histograms,
        }

    def with_changes(self, **changes: Any) -> Manifest:
        if "sources" in changes:
            changes.setdefault("summary", {})
        return replace(self, **changes)


def source_entry_to_json(source: SourceEntry) -> dict[str, Any]:
    # Field by field, not asdict: its deep copy cost more per file than writing the file's shard rows.
    data = {f.name: getattr(source, f.name) for f in SOURCE_FIELDS}
    data["utterances"] = list(source.utterances)
    data["filtered"] = [dict(f) for f in source.filtered]
    return data


def source_entry_from_json(data: dict[str, Any]) -> SourceEntry:
    return SourceEntry(**{**data, "utterances": tuple(data["utterances"]), "filtered": tuple(data["filtered"])})


def manifest_from_json(data: dict[str, Any], where: str, folder: Path | Location | None = None) -> Manifest:
    """The manifest `data` (read from `where`); its source table, if any, is read from `folder` on use."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: not a {FORMAT} manifest (a JSON {type(data).__name__}, not an object)")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where}: not a {FORMAT} manifest (format={data.get('format')!r})")
    if data.get("version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{where}: shard format version {data.get('version')} but this w2v reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; upgrade w2v, or re-run `w2v prepare` into a new folder"
        )
    try:
        tables = tuple(FileEntry(**t) for t in data.get("source_tables", []))
        sources: Mapping[str, SourceEntry]
        if "sources" in data:  # version 2: every source inline
            sources = {uri: source_entry_from_json({**entry, "uri": uri}) for uri, entry in data["sources"].items()}
        else:
            from w2v.shards.sources import SourceRecords  # it builds on this module

            sources = SourceRecords(folder if folder is not None else Path(where).parent, tables)
        summary: dict[str, Any] = {k: data[k] for k in ("counts", "seconds", "seconds_removed_by_reason") if k in data}
        shard_tables = tuple(FileEntry(**t) for t in data.get("shard_tables", []))
        shards: Sequence[ShardEntry]
        if shard_tables:
            from w2v.shards.shard_list import ShardList  # it builds on this module

            shards = ShardList(folder if folder is not None else Path(where).parent, shard_tables)
        else:
            shards = tuple(ShardEntry(**s) for s in data["shards"])
        return Manifest(
            sample_rate=int(data["sample_rate"]),
            generation=int(data["generation"]),
            bucket_edges_seconds=tuple(float(e) for e in data["bucket_edges_seconds"]),
            shards=shards,
            shard_tables=shard_tables,
            index=tuple(IndexEntry(**{**i, "shards": tuple(i["shards"])}) for i in data.get("index", [])),
            sources=sources,
            source_tables=tables,
            summary=summary if "sources" not in data else {},
            config=dict(data["config"]),
            versions=dict(data["versions"]),
            last_run=dict(data.get("last_run", {})),
            quality_histograms=dict(data.get("quality_histograms", {})),
            created=str(data.get("created", "")),
            updated=str(data.get("updated", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ManifestError(f"{where}: malformed manifest ({type(error).__name__}: {error})") from error


def read_manifest(folder: Path | Location) -> Manifest:
    """The manifest of a folder, local or at a URL."""
    place = Location.of(folder)
    path = place.url(MANIFEST_NAME)
    try:
        data = json.loads(place.read_bytes(MANIFEST_NAME))
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: no manifest; is this a folder made by `w2v prepare`?") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error
    return manifest_from_json(data, path, place)


def read_manifest_or_none(folder: Path | Location) -> Manifest | None:
    return read_manifest(folder) if Location.of(folder).exists(MANIFEST_NAME) else None


def write_manifest(folder: Path | Location, manifest: Manifest) -> Manifest:
    """Switch the folder to `manifest`: locally a rename, in a store one put (both atomic for readers). A long
    shard list goes to its own files first (w2v.shards.shard_list). Returns the manifest as written: its
    `shard_tables` name those files, so that what no manifest names can be removed."""
    from w2v.shards.shard_list import SHARDS_INLINE, ShardList, write_shard_list  # it builds on this module

    if len(manifest.shards) <= SHARDS_INLINE:
        manifest = replace(manifest, shards=tuple(manifest.shards), shard_tables=())
    elif not (isinstance(manifest.shards, ShardList) and manifest.shards.files == manifest.shard_tables):
        manifest = replace(manifest, shard_tables=write_shard_list(folder, manifest.generation, manifest.shards))
    Location.of(folder).write_bytes(MANIFEST_NAME, (json.dumps(manifest.to_json(), indent=1) + "\n").encode())
    return manifest


def summary_after(
    before: dict[str, Any], removed: dict[str, Any], added: dict[str, Any], shards: Sequence[ShardEntry]
) -> dict[str, Any]:
    """A manifest's summary (counts, seconds, seconds_removed_by_reason) after a commit replaced the records
    summed up in `removed` by those in `added` (summaries of sources alone: `sources_summary`,
    `w2v.shards.sources.table_summary`) and left `shards`: the cost follows the change, not the corpus."""
    result = _combined(_combined(before, removed, -1), added, +1)
    counts = result["counts"]
    # A reason is listed while some source has it, even with 0 s (a file that did not decode at all).
    present = {*counts["rejected"], *counts["filtered"], *(["short_piece"] if counts["short_pieces_dropped"] else [])}
    result["seconds_removed_by_reason"] = {k: v for k, v in result["seconds_removed_by_reason"].items() if k in present}
    result["counts"]["utterances"] = sum(s.rows for s in shards)
    result["counts"]["shards"] = len(shards)
    result["seconds"]["in_shards"] = sum(s.seconds for s in shards)
    return result


def summary_of(manifest: Manifest) -> dict[str, Any]:
    return {
        "counts": manifest.counts(),
        "seconds": manifest.seconds(),
        "seconds_removed_by_reason": manifest.seconds_removed_by_reason(),
    }


def sources_summary(sources: Iterable[SourceEntry]) -> dict[str, Any]:
    """The summary of a manifest holding `sources` and no shard."""
    return summary_of(Manifest(sample_rate=1, sources={s.uri: s for s in sources}))


# The counts keyed by reason: a reason whose count falls to zero is dropped.
REASON_MAPS = frozenset({("counts", "rejected"), ("counts", "filtered")})


def _combined(a: dict[str, Any], b: dict[str, Any], sign: int, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """a + sign * b, key by key and into nested dicts (in a's order, then b's new keys)."""
    result: dict[str, Any] = {}
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) or isinstance(y, dict):
            result[key] = _combined(x or {}, y or {}, sign, (*path, key))
        else:
            result[key] = (x or 0) + sign * (y or 0)
    if path in REASON_MAPS:
        return {k: v for k, v in sorted(result.items()) if v}
    if path == ("seconds_removed_by_reason",):
        return dict(sorted(result.items()))
    return result


def rejects_jsonl(rejected: Iterable[SourceEntry]) -> str:
    """One line per source rejected whole (uri, reason code, error text, seconds lost), then one per piece a
    quality filter removed from a source that kept others."""
    sources = sorted(rejected, key=lambda s: s.uri)
    lines = []
    for source in (s for s in sources if s.status == "rejected"):
        row = {
            "source": source.uri,
            "reason": source.reason,
            "error": source.error,
            "decoded_seconds": source.decoded_seconds,
        }
        if source.duplicate_of:
            row["duplicate_of"] = source.duplicate_of
        lines.append(json.dumps(row))
    for source in (s for s in sources if s.status == "kept"):
        for piece in source.filtered:
            lines.append(json.dumps({"source": source.uri, **piece}))
    return "".join(line + "\n" for line in lines)
