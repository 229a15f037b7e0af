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

import numpy as np
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
    sources_summary,
    summary_after,
    summary_of,
    write_manifest,
)
from w2v.shards.sources import (
    SOURCES_SCHEMA,
    SourceRecords,
    entries_of,
    kept_with_audio,
    records_of,
    source_rows,
    table_summary,
    with_rejects,
    write_source_files,
)

FILE_GLOBS = ("*.arrow", "sources-*.parquet", "shards-*.parquet")


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
    # The workers' source rows, concatenated: no Python per file from here on but for duplicates.
    staged = _sorted_by_uri(pa.concat_tables([SOURCES_SCHEMA.empty_table(), *(r.source_rows() for r in records)]))
    # Only the records these sources had, and the kept ones with the same audio, are read: not the corpus.
    before = records_of(out, previous, staged.column("uri").to_pylist())
    owners = [s for s in kept_with_audio(out, previous, _kept_digests(staged)) if s.uri not in before]
    decided, turned_down = _deduplicate(owners, staged)

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
        decided_uris = set(decided.column("uri").to_pylist())
        moved = source_rows(s for uri, s in previous.sources.items() if uri not in decided_uris)
        written = _sorted_by_uri(pa.concat_tables([moved, decided]))
    source_tables = (*previous.source_tables, *write_source_files(out, layout.generation, written))

    index_rows = [*_chunk_index_rows(chunk_rows, {s.path for s in new}), *(shard_index(out, n) for n in rewritten)]
    manifest = previous.with_changes(
        sample_rate=config.sample_rate,
        generation=layout.generation,
        bucket_edges_seconds=layout.edges_seconds,
        shards=all_shards,
        index=updated_index(out, previous.index, index_rows, all_shards, layout.generation),
        sources=SourceRecords(out, source_tables),
        source_tables=source_tables,
        summary=summary_after(
            summary_of(previous), sources_summary(before.values()), table_summary(decided), all_shards
        ),
        quality_histograms=_histograms(out, previous, records, [*old_removed, *new_removed], all_shards),
        config=config.to_dict(),
        versions=versions,
        last_run=last_run,
        created=previous.created or now,
        updated=now,
    )
    out.write_bytes(REJECTS_NAME, rejects_jsonl(with_rejects(out, manifest)).encode())
    manifest = write_manifest(out, manifest)
    remove_unreferenced(out, manifest)
    return manifest


def _sorted_by_uri(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("uri", "ascending")]))


def _kept_digests(staged: pa.Table) -> set[str]:
    digests = staged.column("audio_sha256").filter(pc.equal(staged.column("status"), "kept")).drop_null()
    return set(pc.unique(digests).to_pylist())


def _deduplicate(owners: list[SourceEntry], staged: pa.Table) -> tuple[pa.Table, set[str]]:
    """Exact duplicates of decoded audio are kept once: the one already in the shards (`owners`, the first by
    URI), else the first by URI of `staged` (source rows sorted by URI). Returns the rows decided, with the
    others rejected as duplicates, and the URIs turned down. Python runs only for the duplicates."""
    status, digests = staged.column("status"), staged.column("audio_sha256")
    candidates = np.flatnonzero(pc.and_(pc.equal(status, "kept"), pc.is_valid(digests)).to_numpy(zero_copy_only=False))
    encoded = digests.take(pa.array(candidates)).combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    shas = encoded.dictionary.to_pylist()
    _, first_of_code = np.unique(codes, return_index=True)  # rows sorted by URI: the first is the lowest
    owner: dict[str | None, SourceEntry] = {}
    for source in sorted(owners, key=lambda s: s.uri):
        owner.setdefault(source.audio_sha256, source)
    owned = np.array([sha in owner for sha in shas], dtype=bool)
    repeated = np.ones(len(codes), dtype=bool)
    repeated[first_of_code] = False
    duplicate = owned[codes] | repeated if len(codes) else repeated
    if not duplicate.any():
        return staged, set()
    rows = candidates[duplicate]
    firsts = {shas[c]: candidates[first_of_code[c]] for c in np.unique(codes[duplicate]) if not owned[c]}
    first_entries = entries_of(staged.take(pa.array(sorted(firsts.values()), pa.int64())))
    for sha, row in firsts.items():
        owner.setdefault(sha, first_entries[staged.column("uri")[int(row)].as_py()])
    rejected = []
    for entry in entries_of(staged.take(pa.array(rows))).values():
        first = owner[entry.audio_sha256]
        kept_id = first.utterances[0] if first.utterances else first.uri
        error = f"{entry.uri}: same decoded audio as {first.uri} (kept as {kept_id})"
        rejected.append(entry.rejected_as("duplicate", error, duplicate_of=kept_id))
    keep = np.ones(staged.num_rows, dtype=bool)
    keep[rows] = False
    decided = _sorted_by_uri(pa.concat_tables([staged.filter(pa.array(keep)), source_rows(rejected)]))
    return decided, {entry.uri for entry in rejected}


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
    shards: Sequence[ShardEntry],
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
    """Delete shards, index files, source tables and shard lists no manifest names (superseded, or left by a crash),
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
