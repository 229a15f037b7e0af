"""A worker's output: the final shards of one chunk, written where the corpus lives, plus a small record.

The worker that decodes a chunk files its utterances into length buckets (edges fixed before the run) and
writes each bucket's rows, sorted by length, as finished shards named `bBB-gGGGGG-cLABEL-NNNN.arrow`
(bucket, generation, chunk label: its number in the run's plan and its key), each renamed into place whole.
It then writes the chunk's index rows, its sources' outcomes (source table rows) and its record (the
shards with their sizes and checksums, their quality histograms) into the staging folder, the record last: a
chunk is done when its record is there and its files have the sizes the record names. The commit reads
only these staging files; no audio byte is copied again. Until the manifest names them, these shards are
invisible to readers and removed by the next commit if it does not take them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from w2v.atomic import WrittenFile
from w2v.prepare.buckets import assign_buckets
from w2v.prepare.progress import PROGRESS_SUFFIX, STAGING_NAME
from w2v.shards.histograms import table_histograms
from w2v.shards.index import INDEX_SCHEMA, table_index
from w2v.shards.location import Location
from w2v.shards.manifest import ShardEntry, SourceEntry
from w2v.shards.sources import entries_of, source_rows
from w2v.shards.table import Utterance, stream_buffer, utterance_table

# How often a chunk writer tells how many of its files are done (for progress bars; chunks are large).
PROGRESS_SECONDS = 1.0
# Decoded audio a chunk writer holds before it writes its fullest bucket out early (a compressed source
# decodes to several times its size): a worker's memory stays near this whatever the chunk holds.
BUFFER_BYTES = 512 << 20


@dataclass(frozen=True)
class ShardLayout:
    """How a run's utterances become shards: the generation it writes, the bucket edges (all of them, in
    seconds, min_seconds first), the most audio bytes per shard, the sample rate."""

    generation: int
    edges_seconds: tuple[float, ...]
    shard_bytes: int
    sample_rate: int

    def buckets(self, num_samples: np.ndarray) -> np.ndarray:
        return assign_buckets(num_samples / self.sample_rate, tuple(self.edges_seconds[1:-1]))

    def shard_name(self, bucket: int, chunk_label: str, number: int) -> str:
        return f"b{bucket:02d}-g{self.generation:05d}-c{chunk_label}-{number:04d}.arrow"

    def fingerprint(self) -> str:
        """Part of each chunk's key: a chunk's shards depend on the layout as much as on its files."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChunkRecord:
    """What a finished chunk left: its shards, and where its sources' outcomes and index rows are."""

    key: str
    files: int
    shards: tuple[ShardEntry, ...]
    histograms: tuple[dict[str, Any], ...]  # per shard, as table_histograms
    staging: Location

    def index_rows(self) -> pa.Table:
        """The index rows of the chunk's shards, as the worker wrote them."""
        return _read_table_file(self.staging, index_name(self.key))

    def source_rows(self) -> pa.Table:
        """Its files' outcomes as source table rows (SOURCES_SCHEMA, sorted by URI), as the worker wrote them."""
        return _read_table_file(self.staging, sources_name(self.key))

    @property
    def sources(self) -> tuple[SourceEntry, ...]:
        return tuple(entries_of(self.source_rows()).values())


def record_name(key: str) -> str:
    return f"{key}.json"


def index_name(key: str) -> str:
    return f"{key}.index.arrow"


def sources_name(key: str) -> str:
    return f"{key}.sources.arrow"


def record_url(out: Path | Location, key: str) -> str:
    """Where a chunk's record is (a path, or a URL when the folder is one)."""
    return Location.of(out).child(STAGING_NAME).url(record_name(key))


class ChunkWriter:
    """Collects a chunk's decoded sources and writes them as final shards into `out`, a local folder or a
    Location (see the module doc)."""

    def __init__(
        self,
        out: Path | Location,
        key: str,
        layout: ShardLayout,
        label: str | None = None,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.out = Location.of(out)
        self.staging = self.out.child(STAGING_NAME)
        self.key = key
        self.label = label or key[:12]  # in shard names
        self.layout = layout
        self.buffer_bytes = max(buffer_bytes, layout.shard_bytes)
        self._sources: list[SourceEntry] = []
        self._pending: dict[int, list[Utterance]] = defaultdict(list)
        self._pending_bytes: dict[int, int] = defaultdict(int)
        # Per shard: its name, bucket, rows, seconds, the file write (a thread's), index rows, histograms.
        self._written: list[tuple[str, int, int, float, Future[WrittenFile], pa.Table, dict[str, Any]]] = []
        self._numbers: dict[int, int] = defaultdict(int)
        self._progress_at = time.monotonic()
        # Hashing, writing and fsyncing a shard overlap decoding the next files; one shard at a time.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shards-{key[:8]}")

    def add(self, entry: SourceEntry, utterances: list[Utterance]) -> None:
        """One source's outcome and its rows; writes a bucket out once it holds a shard's worth."""
        self._sources.append(entry)
        if time.monotonic() - self._progress_at >= PROGRESS_SECONDS:
            self._tell_progress()
        if not utterances:
            return
        lengths = np.array([u.audio.shape[0] for u in utterances], dtype=np.int64)
        for utterance, bucket in zip(utterances, self.layout.buckets(lengths).tolist(), strict=True):
            self._pending[bucket].append(utterance)
            self._pending_bytes[bucket] += utterance.audio.nbytes
            if self._pending_bytes[bucket] >= self.layout.shard_bytes:
                self._flush(bucket)
        while sum(self._pending_bytes.values()) > self.buffer_bytes:
            self._flush(max(self._pending_bytes, key=lambda b: self._pending_bytes[b]))

    def finish(self) -> str:
        """Write what is left, then the index rows and the record (last); returns where the record is."""
        for bucket in sorted(self._pending):
            self._flush(bucket)
        self._io.shutdown(wait=True)
        shards = []
        for name, bucket, rows, seconds, written, _, histograms in self._written:
            file = written.result()  # a failed write raises here, before any record names the shard
            entry = ShardEntry(name, bucket, rows, seconds, file.bytes, file.sha256)
            shards.append({**asdict(entry), "histograms": histograms})
        if shards:
            self.out.sync()  # the shards' names are durable before the record that names them
        self.staging.make()
        index_bytes = write_index_rows(self.staging, index_name(self.key), [index for *_, index, _ in self._written])
        # The commit concatenates these tables: it runs no Python per file for them.
        sources_bytes = write_table_file(self.staging, sources_name(self.key), source_rows(self._sources))
        record = {
            "key": self.key,
            "files": len(self._sources),
            "sources_bytes": sources_bytes,
            "shards": shards,
            "index_bytes": index_bytes,
        }
        self.staging.write_bytes(record_name(self.key), (json.dumps(record) + "\n").encode())
        return self.staging.url(record_name(self.key))

    def close(self) -> None:
        """Stop the write thread of a chunk given up half-way (its shards stay unreferenced)."""
        self._io.shutdown(wait=True, cancel_futures=True)

    def _tell_progress(self) -> None:
        self.staging.make()
        self.staging.write_bytes(f"{self.key}{PROGRESS_SUFFIX}", str(len(self._sources)).encode(), sync=False)
        self._progress_at = time.monotonic()

    def _flush(self, bucket: int) -> None:
        rows = self._pending.pop(bucket, [])
        self._pending_bytes.pop(bucket, None)
        if not rows:
            return
        rows.sort(key=lambda u: (u.audio.shape[0], u.id))
        name = self.layout.shard_name(bucket, self.label, self._numbers[bucket])
        self._numbers[bucket] += 1
        if self._written:
            self._written[-1][4].result()  # one shard's bytes at a time wait for the disk
        table = utterance_table(rows)
        data = stream_buffer(table)
        seconds = float(pc.sum(table.column("num_samples")).as_py() or 0) / self.layout.sample_rate
        written = self._io.submit(self.out.write_hashed, name, data)
        self._written.append(
            (name, bucket, table.num_rows, seconds, written, table_index(table, name), table_histograms(table))
        )


def write_shard(folder: Location, name: str, table: pa.Table, bucket: int, sample_rate: int) -> ShardEntry:
    """Write `table` as the shard `name` (whole or not at all) and return its manifest entry."""
    written = folder.write_hashed(name, stream_buffer(table))
    seconds = float(pc.sum(table.column("num_samples")).as_py() or 0) / sample_rate
    return ShardEntry(name, bucket, table.num_rows, seconds, written.bytes, written.sha256)


def write_index_rows(staging: Location, name: str, tables: list[pa.Table]) -> int:
    """A chunk's index rows as one Arrow IPC file."""
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks() if tables else INDEX_SCHEMA.empty_table()
    return write_table_file(staging, name, table)


def write_table_file(staging: Location, name: str, table: pa.Table) -> int:
    """`table` as an Arrow IPC file in the staging folder (not fsynced: a lost one only means decoding again);
    returns its size, which the record names."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    staging.write_bytes(name, data, sync=False)
    return len(data)


def _read_table_file(staging: Location, name: str) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(staging.read_bytes(name))).read_all()


def chunk_is_complete(out: Path | Location, key: str) -> bool:
    """Whether a chunk is done: its record is there, and its index rows and shards have the sizes it names."""
    folder = Location.of(out)
    staging = folder.child(STAGING_NAME)
    try:
        record = json.loads(staging.read_bytes(record_name(key)))
        if staging.size(index_name(key)) != record["index_bytes"]:
            return False
        if staging.size(sources_name(key)) != record["sources_bytes"]:
            return False
        return all(folder.size(s["path"]) == s["bytes"] for s in record["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_chunk_record(out: Path | Location, key: str) -> ChunkRecord:
    staging = Location.of(out).child(STAGING_NAME)
    record = json.loads(staging.read_bytes(record_name(key)))
    shards = [{k: v for k, v in s.items() if k != "histograms"} for s in record["shards"]]
    return ChunkRecord(
        key=key,
        files=int(record["files"]),
        shards=tuple(ShardEntry(**s) for s in shards),
        histograms=tuple(s["histograms"] for s in record["shards"]),
        staging=staging,
    )
