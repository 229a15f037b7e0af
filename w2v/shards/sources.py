"""The source table of a shard folder: one row per raw file and what prepare made of it, in Parquet.

Each commit writes the rows of the sources it decided (new, changed, or turned down as duplicates) as
`sources-gGGGGG.parquet`, so a nightly run adds a file instead of rewriting one; where a URI appears in more
than one file, the latest generation's row is the one that holds. manifest.json lists the files and keeps
only summaries, so it grows with shards, not with files. Planning reads only the fingerprint columns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from w2v.errors import ManifestError
from w2v.shards.location import Location
from w2v.shards.manifest import FileEntry, Manifest, SourceEntry, source_entry_to_json

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime", pa.float64()),
        pa.field("etag", pa.string()),
        pa.field("metadata_sha256", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("utterances", pa.list_(pa.string()), nullable=False),
        pa.field("decoded_seconds", pa.float64(), nullable=False),
        pa.field("kept_seconds", pa.float64(), nullable=False),
        pa.field("dropped_seconds", pa.float64(), nullable=False),
        pa.field("dropped_pieces", pa.int64(), nullable=False),
        pa.field("filtered", pa.string(), nullable=False),  # JSON list of {id, start_seconds, seconds, reason, ...}
        pa.field("filtered_seconds", pa.float64(), nullable=False),
        pa.field("audio_sha256", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("decoder", pa.string()),
        pa.field("original_sample_rate", pa.int64()),
        pa.field("channels", pa.int64()),
        pa.field("gain", pa.float64(), nullable=False),
    ]
)
FINGERPRINT_COLUMNS = ("uri", "size", "mtime", "etag", "metadata_sha256")
# Rows are sorted by URI: a lookup of a few URIs reads only the row groups whose URI range can hold them.
ROW_GROUP_ROWS = 65_536


# Rows per source table file (about 66 bytes each in Parquet: ~550 MB): a commit deciding more writes several.
SOURCE_FILE_ROWS = 1 << 23


def sources_file_name(generation: int, part: int = 0) -> str:
    return f"sources-g{generation:05d}{f'-p{part:04d}' if part else ''}.parquet"


def write_source_files(folder: Path | Location, generation: int, table: pa.Table) -> tuple[FileEntry, ...]:
    """Write source rows (`table`, in SOURCES_SCHEMA, sorted by URI) as the generation's source table files,
    at most SOURCE_FILE_ROWS rows each (each holds a URI range, so a lookup still skips what cannot hold its
    URIs)."""
    return tuple(
        write_source_table(folder, sources_file_name(generation, k), table.slice(start, SOURCE_FILE_ROWS))
        for k, start in enumerate(range(0, table.num_rows, SOURCE_FILE_ROWS))
    )


def source_rows(entries: Iterable[SourceEntry]) -> pa.Table:
    """Source records as rows of the source table (SOURCES_SCHEMA), sorted by URI."""
    columns: dict[str, list[Any]] = {field.name: [] for field in SOURCES_SCHEMA}
    for entry in sorted(entries, key=lambda e: e.uri):
        for key, value in source_entry_to_json(entry).items():
            columns[key].append(json.dumps(value) if key == "filtered" else value)
    return pa.Table.from_pydict(columns, schema=SOURCES_SCHEMA)


def write_sources(folder: Path | Location, name: str, entries: Sequence[SourceEntry]) -> FileEntry:
    """Write `entries` as the source table file `name` in `folder`, atomically."""
    return write_source_table(folder, name, source_rows(entries))


def table_summary(table: pa.Table) -> dict[str, Any]:
    """What `summary_of` says of a manifest holding the source rows `table` and no shard, from its columns:
    no Python per row but for the rows with pieces a quality filter removed."""
    rejected = pc.equal(table.column("status"), "rejected")
    is_rejected = rejected.to_numpy(zero_copy_only=False)
    kept = pc.equal(table.column("status"), "kept")
    reasons = pc.fill_null(table.column("reason"), "unknown").filter(rejected).to_pylist()
    decoded = table.column("decoded_seconds").to_numpy()
    with_pieces = table.column("filtered").filter(pc.not_equal(table.column("filtered"), "[]"))
    pieces = [piece for text in with_pieces.to_pylist() for piece in json.loads(text)]
    removed: dict[str, float] = defaultdict(float)
    for reason, seconds in zip(reasons, decoded[is_rejected].tolist(), strict=True):
        removed[reason] += seconds
    for piece in pieces:
        removed[piece["reason"]] += piece["seconds"]
    dropped = table.column("dropped_seconds").to_numpy()
    if np.any(dropped):
        removed["short_piece"] += math.fsum(dropped)
    return {
        "counts": {
            "files_seen": table.num_rows,
            "files_kept": pc.sum(kept).as_py() or 0,
            "utterances": 0,
            "rejected": dict(sorted(Counter(reasons).items())),
            "short_pieces_dropped": pc.sum(table.column("dropped_pieces")).as_py() or 0,
            "filtered": dict(sorted(Counter(piece["reason"] for piece in pieces).items())),
            "shards": 0,
        },
        "seconds": {
            "decoded": math.fsum(decoded),
            "kept": math.fsum(table.column("kept_seconds").to_numpy()),
            "dropped_short": math.fsum(dropped),
            "filtered": math.fsum(table.column("filtered_seconds").to_numpy()),
            "rejected": math.fsum(decoded[is_rejected]),
            "in_shards": 0,
        },
        "seconds_removed_by_reason": dict(sorted(removed.items())),
    }


def write_source_table(folder: Path | Location, name: str, table: pa.Table) -> FileEntry:
    """Write `table` (in SOURCES_SCHEMA, sorted by URI) as the source table file `name`, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    data = sink.getvalue().to_pybytes()
    Location.of(folder).write_bytes(name, data)
    return FileEntry(name, table.num_rows, len(data), hashlib.sha256(data).hexdigest())


def read_sources(
    folder: Path | Location,
    files: Sequence[FileEntry],
    columns: Sequence[str] | None = None,
    uris: Iterable[str] | None = None,
) -> pa.Table:
    """The rows that hold (the latest generation's per URI) of the source table files `files`, listed oldest
    first, restricted to `columns` (always with `uri`) and, given `uris`, to those URIs (files are sorted by
    URI, so Parquet skips the row groups that cannot hold them)."""
    wanted = None if columns is None else list(dict.fromkeys(["uri", *columns]))
    where = None if uris is None else pc.field("uri").isin(sorted(set(uris)))
    place = Location.of(folder)
    tables = []
    for entry in files:
        try:
            tables.append(place.read_parquet(entry.path, columns=wanted, filters=where))
        except (OSError, pa.ArrowInvalid) as error:
            raise _unreadable(place, entry.path, error) from error
    if not tables:
        schema = SOURCES_SCHEMA if wanted is None else pa.schema([SOURCES_SCHEMA.field(n) for n in wanted])
        return schema.empty_table()
    table = pa.concat_tables(tables)
    if len(tables) == 1:
        return table
    # The last row of each URI wins: unique over the reversed codes gives each URI's last position.
    codes = table.column("uri").combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    _, first_from_end = np.unique(codes[::-1], return_index=True)
    last = np.sort(len(codes) - 1 - first_from_end)
    return table.take(pa.array(last))


def entries_of(table: pa.Table) -> dict[str, SourceEntry]:
    """URI → SourceEntry of every row of a full source table."""
    entries = {}
    for row in table.to_pylist():
        row["utterances"] = tuple(row["utterances"])
        row["filtered"] = tuple(json.loads(row["filtered"]))
        entries[row["uri"]] = SourceEntry(**row)
    return entries


def records_of(folder: Path | Location, manifest: Manifest, uris: Iterable[str]) -> dict[str, SourceEntry]:
    """The records of those of `uris` the folder knows (reading only what can hold them)."""
    wanted = set(uris)
    if not manifest.source_tables:
        return {uri: manifest.sources[uri] for uri in wanted if uri in manifest.sources}
    return entries_of(read_sources(folder, manifest.source_tables, uris=wanted)) if wanted else {}


def kept_with_audio(folder: Path | Location, manifest: Manifest, digests: Iterable[str]) -> list[SourceEntry]:
    """The kept sources whose decoded audio has one of the sha256 `digests` (for deduplication)."""
    wanted = set(digests)
    if not wanted:
        return []
    found = _latest_where(folder, manifest, pc.field("audio_sha256").isin(sorted(wanted)))
    return [s for s in found if s.status == "kept" and s.audio_sha256 in wanted]


def with_rejects(folder: Path | Location, manifest: Manifest) -> list[SourceEntry]:
    """The sources rejected whole, or with pieces a quality filter removed (what rejects.jsonl lists)."""
    expression = (pc.field("status") == "rejected") | (pc.field("filtered") != "[]")
    return [s for s in _latest_where(folder, manifest, expression) if s.status == "rejected" or s.filtered]


def _latest_where(folder: Path | Location, manifest: Manifest, expression: pc.Expression) -> list[SourceEntry]:
    """The latest records of the URIs with a row matching `expression` in any source table file (the caller
    checks the latest record still matches: a later generation may have replaced the row that did)."""
    if not manifest.source_tables:
        return list(manifest.sources.values())
    place = Location.of(folder)
    candidates = set()
    for entry in manifest.source_tables:
        try:
            candidates.update(
                place.read_parquet(entry.path, columns=["uri"], filters=expression).column("uri").to_pylist()
            )
        except (OSError, pa.ArrowInvalid) as error:
            raise _unreadable(place, entry.path, error) from error
    return list(records_of(place, manifest, candidates).values())


def _unreadable(folder: Location, name: str, error: Exception) -> ManifestError:
    return ManifestError(f"{folder.url(name)}: cannot be read as a source table ({error}); run w2v shards verify")


Fingerprint = tuple[int, float | None, str | None, str | None]  # size, mtime, etag, metadata_sha256


def fingerprints(folder: Path | Location, manifest: Manifest) -> dict[str, Fingerprint]:
    """URI → fingerprint of every source the folder knows, read from the fingerprint columns only."""
    if not manifest.source_tables:  # version 2 (records inline), or a folder not written yet
        return {uri: (s.size, s.mtime, s.etag, s.metadata_sha256) for uri, s in manifest.sources.items()}
    table = read_sources(folder, manifest.source_tables, FINGERPRINT_COLUMNS)
    uris, *rest = (table.column(name).to_pylist() for name in FINGERPRINT_COLUMNS)
    return dict(zip(uris, zip(*rest, strict=True), strict=True))


class SourceRecords(Mapping[str, SourceEntry]):
    """A folder's source table as a mapping URI → SourceEntry, read from disk on first use (opening a folder
    to train never reads it)."""

    def __init__(self, folder: Path | Location, files: Sequence[FileEntry]) -> None:
        self._folder = Location.of(folder)
        self._files = tuple(files)
        self._loaded: dict[str, SourceEntry] | None = None

    def _entries(self) -> dict[str, SourceEntry]:
        if self._loaded is None:
            self._loaded = entries_of(read_sources(self._folder, self._files))
        return self._loaded

    def __getitem__(self, uri: str) -> SourceEntry:
        return self._entries()[uri]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())
