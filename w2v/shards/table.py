"""Build and write shard tables: utterance rows to Arrow, Arrow to a stream file renamed into place."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from w2v.atomic import WrittenFile, write_buffer_atomic
from w2v.quality import Quality
from w2v.shards.schema import METADATA_COLUMNS, QUALITY_COLUMNS, ROWS_PER_BATCH, SCHEMA


@dataclass(frozen=True)
class Utterance:
    """One row of a shard, with its audio as int16 samples."""

    id: str
    audio: np.ndarray
    source: str
    start_seconds: float
    mean: float
    std: float
    text: str | None = None
    speaker: str | None = None
    label: str | None = None
    quality: Quality | None = None


def utterance_table(rows: Sequence[Utterance]) -> pa.Table:
    """An Arrow table in the shard schema; the audio column is built from one concatenated buffer."""
    lengths = np.array([r.audio.shape[0] for r in rows], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    values = np.concatenate([r.audio for r in rows]) if rows else np.zeros(0, np.int16)
    audio = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int16()))
    columns: dict[str, pa.Array] = {
        "id": pa.array([r.id for r in rows], pa.string()),
        "audio": audio,
        "num_samples": pa.array(lengths.astype(np.int32), pa.int32()),
        "source": pa.array([r.source for r in rows], pa.string()),
        "start_seconds": pa.array([r.start_seconds for r in rows], pa.float64()),
        "mean": pa.array([r.mean for r in rows], pa.float32()),
        "std": pa.array([r.std for r in rows], pa.float32()),
    }
    for name in METADATA_COLUMNS:
        columns[name] = pa.array([getattr(r, name) for r in rows], pa.string())
    for name in QUALITY_COLUMNS:
        columns[name] = pa.array([getattr(r.quality, name) if r.quality else None for r in rows], pa.float32())
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def write_stream_atomic(table: pa.Table, path: Path) -> WrittenFile:
    """Write `table` as an Arrow IPC stream file at `path`, whole or not at all (see `write_buffer_atomic`)."""
    return write_buffer_atomic(stream_buffer(table), path)


def stream_buffer(table: pa.Table) -> pa.Buffer:
    """`table` as the bytes of an Arrow IPC stream, in memory."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=ROWS_PER_BATCH)
    return sink.getvalue()


def sha256_file(path: Path, block_bytes: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def read_stream(path: Path) -> pa.Table:
    """Open a shard (or staging part) zero-copy through a memory map."""
    # The map stays open as long as the table's buffers point into it.
    return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
