"""Commit a run: deduplicate, bucket by length, write shards, then the rejects file and the manifest, last.

Until manifest.json is renamed into place nothing a reader sees has changed; files a crash leaves behind are
unreferenced and removed by the next commit.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from w2v.prepare.buckets import assign_buckets, equal_duration_edges
from w2v.prepare.config import PrepareConfig
from w2v.prepare.process import part_paths, read_part
from w2v.prepare.progress import STAGING_NAME
from w2v.shards.histograms import BINS, can_merge, merged_histograms, quality_histograms, table_histograms
from w2v.shards.index import index_file_name, shard_index, write_index
from w2v.shards.manifest import (
    REJECTS_NAME,
    IndexEntry,
    Manifest,
    ShardEntry,
    SourceEntry,
    rejects_jsonl,
    write_manifest,
    write_text_atomic,
)
from w2v.shards.table import read_stream, write_stream_atomic

SHARD_GLOB = "*.arrow"


@dataclass(frozen=True)
class _Row:
    part: int
    row: int
    num_samples: int
    id: str


def commit(
    out: Path,
    previous: Manifest,
    part_keys: list[str],
    config: PrepareConfig,
    versions: dict[str, str],
    last_run: dict[str, Any],
    now: str,
) -> Manifest:
    """Fold the staged parts into the shard folder and return the manifest that was written."""
    staging = out / STAGING_NAME
    generation = previous.generation + 1
    parts = [read_stream(part_paths(staging, key)[0]) for key in part_keys]
    staged: dict[str, tuple[SourceEntry, int]] = {}
    for index, key in enumerate(part_keys):
        for entry in read_part(part_paths(staging, key)[1]):
            staged[entry.uri] = (entry, index)

    replaced = {uri for uri in staged if uri in previous.sources}
    sources = {uri: s for uri, s in previous.sources.items() if uri not in replaced}
    sources.update(_deduplicate(sources, {uri: entry for uri, (entry, _) in staged.items()}))

    new_rows = _rows_to_pack(parts, staged, sources)
    edges = previous.bucket_edges_seconds
    if not edges and new_rows:
        durations = np.array([r.num_samples for r in new_rows]) / config.sample_rate
        inner = equal_duration_edges(durations, config.num_buckets)
        edges = (config.min_seconds, *inner, config.max_seconds)
    kept, removed = _rewrite_shards_without(out, previous, replaced, generation, config.sample_rate)
    new = _write_new_shards(out, parts, new_rows, edges, generation, config)

    all_shards = tuple(sorted([*kept, *new], key=lambda s: (s.bucket, s.path)))
    written = [s.path for s in all_shards if s.path not in {p.path for p in previous.shards}]
    manifest = previous.with_changes(
        sample_rate=config.sample_rate,
        generation=generation,
        bucket_edges_seconds=tuple(edges),
        shards=all_shards,
        index=updated_index(out, previous.index, written, all_shards, generation),
        sources=sources,
        quality_histograms=_histograms(out, previous, new, removed, all_shards),
        config=config.to_dict(),
        versions=versions,
        last_run=last_run,
        created=previous.created or now,
        updated=now,
    )
    write_text_atomic(out / REJECTS_NAME, rejects_jsonl(manifest))
    write_manifest(out, manifest)
    remove_unreferenced(out, manifest)
    return manifest


def _deduplicate(kept_before: dict[str, SourceEntry], staged: dict[str, SourceEntry]) -> dict[str, SourceEntry]:
    """Exact duplicates of decoded audio are kept once: the first by URI, or the one already in the shards."""
    owner = {s.audio_sha256: s for s in kept_before.values() if s.status == "kept" and s.audio_sha256}
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


def _rows_to_pack(
    parts: list[pa.Table], staged: dict[str, tuple[SourceEntry, int]], sources: dict[str, SourceEntry]
) -> list[_Row]:
    wanted_parts = {staged[uri][1] for uri, s in sources.items() if uri in staged and s.status == "kept"}
    rows = []
    for index in sorted(wanted_parts):
        table = parts[index]
        ids = table.column("id").to_pylist()
        owners = table.column("source").to_pylist()
        lengths = table.column("num_samples").to_numpy()
        for row, (utterance_id, uri) in enumerate(zip(ids, owners, strict=True)):
            if sources[uri].status == "kept" and staged.get(uri, (None, -1))[1] == index:
                rows.append(_Row(index, row, int(lengths[row]), utterance_id))
    return rows


def _write_new_shards(
    out: Path,
    parts: list[pa.Table],
    rows: list[_Row],
    edges: tuple[float, ...],
    generation: int,
    config: PrepareConfig,
) -> list[ShardEntry]:
    if not rows:
        return []
    inner = tuple(edges[1:-1])
    durations = np.array([r.num_samples for r in rows]) / config.sample_rate
    by_bucket: dict[int, list[_Row]] = defaultdict(list)
    for row, bucket in zip(rows, assign_buckets(durations, inner), strict=True):
        by_bucket[int(bucket)].append(row)
    max_bytes = config.shard_mb * (1 << 20)
    planned = []
    for bucket, members in sorted(by_bucket.items()):
        members.sort(key=lambda r: (r.num_samples, r.id))
        for number, group in enumerate(_split_by_bytes(members, max_bytes)):
            planned.append((out / f"b{bucket:02d}-g{generation:05d}-{number:04d}.arrow", bucket, group))

    def write(path: Path, bucket: int, group: list[_Row]) -> ShardEntry:
        return _write_shard(path, _gather(parts, group), bucket, config.sample_rate)

    # Copying rows, hashing and fsync release the GIL: shards are written side by side, in a fixed order.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda plan: write(*plan), planned))


def _split_by_bytes(rows: list[_Row], max_bytes: float) -> list[list[_Row]]:
    groups: list[list[_Row]] = [[]]
    size = 0
    for row in rows:
        row_bytes = 2 * row.num_samples
        if groups[-1] and size + row_bytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += row_bytes
    return groups


def _gather(parts: list[pa.Table], rows: list[_Row]) -> pa.Table:
    """Take `rows` (already in shard order) out of the staged parts."""
    pieces = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end].part == rows[start].part:
            end += 1
        indices = pa.array([r.row for r in rows[start:end]], pa.int64())
        pieces.append(parts[rows[start].part].take(indices))
        start = end
    return pa.concat_tables(pieces).combine_chunks()


def _write_shard(path: Path, table: pa.Table, bucket: int, sample_rate: int) -> ShardEntry:
    written = write_stream_atomic(table, path)
    seconds = float(pc.sum(table.column("num_samples")).as_py() or 0) / sample_rate
    return ShardEntry(
        path=path.name,
        bucket=bucket,
        rows=table.num_rows,
        seconds=seconds,
        bytes=written.bytes,
        sha256=written.sha256,
    )


def updated_index(
    out: Path,
    previous: tuple[IndexEntry, ...],
    written: list[str],
    shards: tuple[ShardEntry, ...],
    generation: int,
) -> tuple[IndexEntry, ...]:
    """The index files after a commit: those still covering a shard of the folder, and one for the shards
    written now (its cost follows the change: only they are read, and only their small columns)."""
    alive = {s.path for s in shards}
    kept = tuple(entry for entry in previous if alive & set(entry.shards))
    if not written:
        return kept
    return (*kept, write_index(out, index_file_name(generation), [shard_index(out, path) for path in written]))


def _histograms(
    out: Path, previous: Manifest, new: list[ShardEntry], removed: list[pa.Table], shards: tuple[ShardEntry, ...]
) -> dict[str, Any]:
    """The quality histograms after this commit: the previous counts, plus the new shards' rows, minus the
    rows removed (its cost follows the change); from every shard only when the previous ones are on other
    bins (made by an older version)."""
    if previous.shards and not can_merge(previous.quality_histograms):
        return quality_histograms([out / s.path for s in shards])
    before = previous.quality_histograms if previous.shards else table_histograms(None)
    gone = table_histograms(pa.concat_tables(removed) if removed else None)
    return merged_histograms(before, quality_histograms([out / s.path for s in new]), gone)


def _rewrite_shards_without(
    out: Path, previous: Manifest, replaced: set[str], generation: int, sample_rate: int
) -> tuple[list[ShardEntry], list[pa.Table]]:
    """Keep old shards as they are, except those holding utterances of changed files: rewrite those.
    Returns the shards, and the quality columns of the rows removed."""
    if not replaced:
        return list(previous.shards), []
    gone = pa.array(sorted(replaced), pa.string())
    kept, removed = [], []
    for number, shard in enumerate(previous.shards):
        table = read_stream(out / shard.path)
        mask = pc.invert(pc.is_in(table.column("source"), value_set=gone))
        if pc.all(mask).as_py():
            kept.append(shard)
            continue
        removed.append(table.filter(pc.invert(mask)).select(list(BINS)))
        remaining = table.filter(mask)
        if remaining.num_rows:
            name = f"b{shard.bucket:02d}-g{generation:05d}-r{number:04d}.arrow"
            kept.append(_write_shard(out / name, remaining.combine_chunks(), shard.bucket, sample_rate))
    return kept, removed


def remove_unreferenced(out: Path, manifest: Manifest) -> None:
    """Delete shards and index files no manifest names (superseded, or left by a crash), temporaries, and the
    staging area."""
    referenced = {f.path for f in manifest.files}
    for path in out.glob(SHARD_GLOB):
        if path.name not in referenced:
            path.unlink()
    for tmp in out.glob(".*.tmp-*"):
        tmp.unlink()
    shutil.rmtree(out / STAGING_NAME, ignore_errors=True)
