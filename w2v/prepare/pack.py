"""Commit a run: take the chunks' shards, deduplicate, write the index, the rejects file and the manifest, last.

The workers wrote the final shards (w2v.prepare.shard_writer); the commit reads only their records and index
rows. What it rewrites follows the change: the shards holding utterances of sources that changed since the
last run or that turn out to duplicate audio already kept. Until manifest.json is renamed into place nothing
a reader sees has changed; files a crash leaves behind are unreferenced and removed by the next commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from w2v.prepare.config import PrepareConfig
from w2v.prepare.progress import STAGING_NAME
from w2v.prepare.shard_writer import ChunkRecord, ShardLayout, read_chunk_record, write_shard
from w2v.shards.histograms import BINS, can_merge, merged_histograms, table_histograms
from w2v.shards.index import read_index, shard_index, split_position, write_index_files
from w2v.shards.location import Location
from w2v.shards.manifest import (
    REJECTS_NAME,
    IndexEntry,
    Manifest,
    ShardEntry,
    SourceEntry,
    rejects_jsonl,
    summary_after,
    summary_of,
    write_manifest,
)
from w2v.shards.sources import (
    SourceRecords,
    kept_with_audio,
    records_of,
    with_rejects,
    write_source_files,
)

FILE_GLOBS = ("*.arrow", "sources-*.parquet")


def commit(
    out: Path | Location,
    previous: Manifest,
    chunk_keys: list[str],
    config: PrepareConfig,
    layout: ShardLayout,
    versions: dict[str, str],
    last_run: dict[str, Any],
    now: str,
) -> Manifest:
    """Fold the finished chunks into the shard folder (local or at a URL) and return the manifest written."""
    out = Location.of(out)
    records = [read_chunk_record(out, key) for key in chunk_keys]
    staged = {entry.uri: entry for record in records for entry in record.sources}
    # Only the records these sources had, and the kept ones with the same audio, are read: not the corpus.
    before = records_of(out, previous, staged)
    digests = {e.audio_sha256 for e in staged.values() if e.status == "kept" and e.audio_sha256}
    owners = [s for s in kept_with_audio(out, previous, digests) if s.uri not in before]
    decided = _deduplicate(owners, staged)
    # Sources whose rows a worker wrote but that the commit turned down (duplicates of audio already kept).
    turned_down = {uri for uri, entry in staged.items() if entry.status == "kept" and decided[uri].status != "kept"}

    # Only the shards that can hold a row of a changed or turned-down source are read (the index says which).
    chunk_rows = [record.index_rows() for record in records]
    gone_before = shards_holding(set(before), _index_tables(out, previous.index), previous.shards, previous.index)
    old, old_removed, old_rewritten = _shards_without(out, previous.shards, set(before), layout, gone_before)
    new_shards = [shard for record in records for shard in record.shards]
    gone_now = shards_holding(turned_down, iter(chunk_rows))
    new, new_removed, new_rewritten = _shards_without(out, new_shards, turned_down, layout, gone_now)
    rewritten = {**old_rewritten, **new_rewritten}
    all_shards = tuple(sorted([*old, *new], key=lambda s: (s.bucket, s.path)))

    written = decided
    if not previous.source_tables and previous.sources:  # a version-2 folder: its records move to the table
        written = {**previous.sources, **decided}
    source_tables = previous.source_tables
    if written:
        source_tables = (*source_tables, *write_source_files(out, layout.generation, list(written.values())))

    index_rows = [*_chunk_index_rows(chunk_rows, {s.path for s in new}), *(shard_index(out, n) for n in rewritten)]
    manifest = previous.with_changes(
        sample_rate=config.sample_rate,
        generation=layout.generation,
        bucket_edges_seconds=layout.edges_seconds,
        shards=all_shards,
        index=updated_index(out, previous.index, index_rows, all_shards, layout.generation),
        sources=SourceRecords(out, source_tables),
        source_tables=source_tables,
        summary=summary_after(summary_of(previous), before.values(), decided.values(), all_shards),
        quality_histograms=_histograms(out, previous, records, [*old_removed, *new_removed], all_shards),
        config=config.to_dict(),
        versions=versions,
        last_run=last_run,
        created=previous.created or now,
        updated=now,
    )
    out.write_bytes(REJECTS_NAME, rejects_jsonl(with_rejects(out, manifest)).encode())
    write_manifest(out, manifest)
    remove_unreferenced(out, manifest)
    return manifest


def _deduplicate(kept_before: list[SourceEntry], staged: dict[str, SourceEntry]) -> dict[str, SourceEntry]:
    """Exact duplicates of decoded audio are kept once: the first by URI, or the one already in the shards."""
    owner = {s.audio_sha256: s for s in sorted(kept_before, key=lambda s: s.uri) if s.audio_sha256}
    result = {}
    for uri in sorted(staged):
        entry = staged[uri]
        sha = entry.audio_sha256 if entry.status == "kept" else None
        first = owner.get(sha) if sha else None
        if first is None:
            if sha:
                owner[sha] = entry
            result[uri] = entry
            continue
        kept_id = first.utterances[0] if first.utterances else first.uri
        error = f"{uri}: same decoded audio as {first.uri} (kept as {kept_id})"
        result[uri] = entry.rejected_as("duplicate", error, duplicate_of=kept_id)
    return result


def _chunk_index_rows(chunk_rows: list[pa.Table], shards: set[str]) -> list[pa.Table]:
    """The index rows the workers wrote, of the shards in `shards` (those the commit did not rewrite)."""
    tables = []
    for table in chunk_rows:
        if not table.num_rows:
            continue
        names = pc.cast(table.column("shard"), pa.string())
        tables.append(table.filter(pc.is_in(names, value_set=pa.array(sorted(shards), pa.string()))))
    return tables


def _index_tables(out: Location, index: tuple[IndexEntry, ...]) -> Iterator[pa.Table]:
    for entry in index:
        yield read_index(out, entry.path)


def shards_holding(
    sources: set[str],
    index_tables: Iterator[pa.Table],
    shards: Sequence[ShardEntry] = (),
    index: Sequence[IndexEntry] = (),
) -> set[str]:
    """The shards that may hold rows of `sources`, found in index rows by split position (a hash of a URI's
    last two parts: another source with the same two parts only adds a shard to read), plus those of
    `shards` no file of `index` covers (folders indexed before the index existed). The index files are
    mapped, not the shards: the cost follows the change."""
    if not sources:
        return set()
    positions = pa.array(sorted({split_position(uri) for uri in sources}), pa.float64())
    found: set[str] = set()
    for table in index_tables:
        hits = table.filter(pc.is_in(table.column("source_position"), value_set=positions))
        found.update(pc.unique(pc.cast(hits.column("shard"), pa.string())).to_pylist())
    covered = {name for entry in index for name in entry.shards}
    return found | {s.path for s in shards if s.path not in covered}


def updated_index(
    out: Path | Location,
    previous: tuple[IndexEntry, ...],
    rows: list[pa.Table],
    shards: tuple[ShardEntry, ...],
    generation: int,
) -> tuple[IndexEntry, ...]:
    """The index files after a commit: those still covering a shard of the folder, and one holding `rows`,
    the index rows of the shards written now (its cost follows the change)."""
    alive = {s.path for s in shards}
    kept = tuple(entry for entry in previous if alive & set(entry.shards))
    if not any(table.num_rows for table in rows):
        return kept
    return (*kept, *write_index_files(out, generation, rows))


def _histograms(
    out: Location,
    previous: Manifest,
    records: list[ChunkRecord],
    removed: list[pa.Table],
    shards: tuple[ShardEntry, ...],
) -> dict[str, Any]:
    """The quality histograms after this commit: the previous counts, plus the rows the workers wrote (their
    records carry the counts), minus the rows removed (its cost follows the change); from every shard only
    when the previous ones are on other bins (made by an older version)."""
    if previous.shards and not can_merge(previous.quality_histograms):
        return table_histograms(pa.concat_tables([out.read_stream(s.path).select(list(BINS)) for s in shards]))
    total = previous.quality_histograms if previous.shards else table_histograms(None)
    nothing = table_histograms(None)
    for record in records:
        for added in record.histograms:
            total = merged_histograms(total, added, nothing)
    return merged_histograms(total, nothing, table_histograms(pa.concat_tables(removed) if removed else None))


def _shards_without(
    out: Location,
    shards: list[ShardEntry] | tuple[ShardEntry, ...],
    gone: set[str],
    layout: ShardLayout,
    candidates: set[str],
) -> tuple[list[ShardEntry], list[pa.Table], dict[str, ShardEntry]]:
    """`shards`, with those holding rows of the sources `gone` rewritten without them (or dropped when
    nothing is left); only the `candidates` among them are read. Returns the shards, the quality columns of
    the rows removed, and the rewritten shards by their new names."""
    if not gone:
        return list(shards), [], {}
    value_set = pa.array(sorted(gone), pa.string())
    kept, removed, rewritten = [], [], {}
    for shard in shards:
        if shard.path not in candidates:
            kept.append(shard)
            continue
        table = out.read_stream(shard.path)
        mask = pc.invert(pc.is_in(table.column("source"), value_set=value_set))
        if pc.all(mask).as_py():
            kept.append(shard)
            continue
        removed.append(table.filter(pc.invert(mask)).select(list(BINS)))
        remaining = table.filter(mask)
        if remaining.num_rows:
            tag = hashlib.sha256(shard.path.encode()).hexdigest()[:12]
            name = f"b{shard.bucket:02d}-g{layout.generation:05d}-r{tag}.arrow"
            entry = write_shard(out, name, remaining.combine_chunks(), shard.bucket, layout.sample_rate)
            kept.append(entry)
            rewritten[name] = entry
    return kept, removed, rewritten


def remove_unreferenced(out: Path | Location, manifest: Manifest) -> None:
    """Delete shards, index files and source tables no manifest names (superseded, or left by a crash),
    temporaries, and the staging area."""
    out = Location.of(out)
    referenced = {f.path for f in manifest.files}
    for pattern in FILE_GLOBS:
        for name in out.names(pattern):
            if name not in referenced:
                out.remove(name)
    for name in out.names(".*.tmp-*"):
        out.remove(name)
    out.child(STAGING_NAME).remove_all()
