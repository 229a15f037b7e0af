"""A shard folder of N utterances with no audio, for measuring what opening a corpus costs at scale.

Written straight from numpy in seconds: a manifest naming ~256 MB shards (which do not exist), index files
(one per 1,000 shards, as commits write them) with each utterance's length (2-15 s at 16 kHz), place,
normalization and held-out position, and a source table of one file per 3 utterances (real-sized columns:
URIs, ids, random sha256 digests), which opening the corpus must not read. `measure` opens it as training
does (ShardCorpus, which opens no shard), plans one epoch, seeks the stream to the middle of it, splits off a
held-out share, and reports each time and the process's peak RSS; run it in a fresh process so that the
peak is the corpus's, not the writer's. Used by benchmarks/scale.py --synthetic.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.memory import own_peak_rss_mb
from w2v.data.corpus import ShardCorpus, split_held_out
from w2v.data.plan import BatchConfig
from w2v.data.stream import BatchStream, CorpusCursor
from w2v.shards.index import INDEX_SCHEMA, index_file_name, write_index
from w2v.shards.manifest import Manifest, ShardEntry, write_manifest
from w2v.shards.sources import SOURCES_SCHEMA, SourceRecords, sources_file_name, write_source_table

SAMPLE_RATE = 16_000
SHARD_BYTES = 256 << 20
SHARDS_PER_INDEX_FILE = 1_000
UTTERANCES_PER_SOURCE = 3
ROWS_PER_BATCH = 64


def write_synthetic_folder(folder: Path, utterances: int, seed: int = 0) -> Manifest:
    """The folder's manifest and index files for `utterances` rows; returns the manifest."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2 * SAMPLE_RATE, 15 * SAMPLE_RATE, utterances, dtype=np.int32)
    shard_of = (np.cumsum(2 * lengths.astype(np.int64)) // SHARD_BYTES).astype(np.int32)
    shards = int(shard_of[-1]) + 1 if utterances else 0
    starts = np.searchsorted(shard_of, np.arange(shards))
    position = (np.arange(utterances) - starts[shard_of]).astype(np.int32)
    sources = rng.random(utterances // UTTERANCES_PER_SOURCE + 1)
    source_position = sources[np.arange(utterances) // UTTERANCES_PER_SOURCE]
    names = [f"b00-g{1 + n // SHARDS_PER_INDEX_FILE:05d}-{n:06d}.arrow" for n in range(shards)]
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for first in range(0, shards, SHARDS_PER_INDEX_FILE):
        last = min(first + SHARDS_PER_INDEX_FILE, shards)
        rows = slice(int(starts[first]), int(starts[last]) if last < shards else utterances)
        codes = (shard_of[rows] - first).astype(np.int32)
        columns = [
            pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names[first:last])),
            pa.array(position[rows]),
            pa.array(position[rows] // ROWS_PER_BATCH),
            pa.array(position[rows] % ROWS_PER_BATCH),
            pa.array(lengths[rows]),
            pa.array(rng.normal(0, 1e-3, codes.size).astype(np.float32)),
            pa.array(rng.uniform(0.05, 0.2, codes.size).astype(np.float32)),
            pa.array(source_position[rows]),
        ]
        table = pa.Table.from_arrays(columns, schema=INDEX_SCHEMA)
        index.append(write_index(folder, index_file_name(1 + first // SHARDS_PER_INDEX_FILE), [table]))
    counts = np.bincount(shard_of, minlength=shards)
    seconds = np.bincount(shard_of, weights=lengths, minlength=shards) / SAMPLE_RATE
    entries = tuple(
        ShardEntry(name, 0, int(c), float(s), int(2 * s * SAMPLE_RATE), "0" * 64)
        for name, c, s in zip(names, counts, seconds, strict=True)
    )
    sources = source_table(lengths)
    table = write_source_table(folder, sources_file_name(len(index)), sources)
    total_seconds = float(lengths.sum()) / SAMPLE_RATE
    summary = {
        "counts": {
            **{"files_seen": sources.num_rows, "files_kept": sources.num_rows, "utterances": utterances},
            **{"rejected": {}, "short_pieces_dropped": 0, "filtered": {}, "shards": shards},
        },
        "seconds": {
            **{"decoded": total_seconds, "kept": total_seconds, "dropped_short": 0.0, "filtered": 0.0},
            **{"rejected": 0.0, "in_shards": total_seconds},
        },
        "seconds_removed_by_reason": {},
    }
    manifest = Manifest(
        sample_rate=SAMPLE_RATE,
        generation=len(index),
        shards=entries,
        index=tuple(index),
        sources=SourceRecords(folder, (table,)),
        source_tables=(table,),
        summary=summary,
    )
    write_manifest(folder, manifest)
    return manifest


def source_table(lengths: np.ndarray, seed: int = 1) -> pa.Table:
    """Records of ceil(N / 3) kept files of 3 utterances each (the last may hold fewer), sorted by URI."""
    utterances = lengths.size
    count = -(-utterances // UTTERANCES_PER_SOURCE)
    rng = np.random.default_rng(seed)
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(count)), pa.string()), 9, "0")
    uris = pc.binary_join_element_wise("s3://corpus-bucket/crawl/", numbers, ".flac", "")
    piece = pc.cast(pa.array(np.arange(utterances) % UTTERANCES_PER_SOURCE), pa.string())
    owner = pc.take(numbers, pa.array(np.arange(utterances) // UTTERANCES_PER_SOURCE))
    ids = pc.binary_join_element_wise(owner, "-4b1d2c3e-000", piece, "")
    offsets = np.minimum(np.arange(count + 1) * UTTERANCES_PER_SOURCE, utterances).astype(np.int32)
    seconds = np.add.reduceat(lengths.astype(np.float64), offsets[:-1]) / SAMPLE_RATE if count else np.zeros(0)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    raw = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    hexes = np.empty((count, 64), np.uint8)
    hexes[:, 0::2], hexes[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    digest_offsets = pa.py_buffer(np.arange(0, 64 * count + 1, 64, dtype=np.int32))
    digests = pa.StringArray.from_buffers(count, digest_offsets, pa.py_buffer(hexes.tobytes()))
    columns = {
        "uri": uris,
        "size": pa.array((seconds * 22_000).astype(np.int64)),  # FLAC at about 22 kB/s
        "mtime": pa.array(1.7e9 + rng.uniform(0, 3e7, count)),
        "etag": pa.nulls(count, pa.string()),
        "metadata_sha256": pa.nulls(count, pa.string()),
        "status": pa.repeat("kept", count),
        "reason": pa.nulls(count, pa.string()),
        "error": pa.nulls(count, pa.string()),
        "utterances": pa.ListArray.from_arrays(pa.array(offsets), ids),
        "decoded_seconds": pa.array(seconds),
        "kept_seconds": pa.array(seconds),
        "dropped_seconds": pa.array(np.zeros(count)),
        "dropped_pieces": pa.array(np.zeros(count, np.int64)),
        "filtered": pa.repeat("[]", count),
        "filtered_seconds": pa.array(np.zeros(count)),
        "audio_sha256": digests,
        "duplicate_of": pa.nulls(count, pa.string()),
        "decoder": pa.repeat("soundfile", count),
        "original_sample_rate": pa.repeat(pa.scalar(44_100, pa.int64()), count),
        "channels": pa.repeat(pa.scalar(2, pa.int64()), count),
        "gain": pa.array(np.ones(count)),
    }
    return pa.Table.from_arrays([columns[f.name] for f in SOURCES_SCHEMA], schema=SOURCES_SCHEMA)


def measure(folder: Path, val_share: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Open, plan one epoch, seek to its middle and split held-out recordings; seconds each and peak RSS."""
    started = time.perf_counter()
    corpus = ShardCorpus(folder)
    opened = time.perf_counter()
    stream = BatchStream([corpus.num_samples], BatchConfig(), seed)
    batches = stream.plan(0, 0)
    planned = time.perf_counter()
    state = stream.initial_state()
    middle = dataclasses.replace(state, corpora=(CorpusCursor(0, len(batches) // 2, len(corpus)),))
    item, _ = stream.take(middle)
    sought = time.perf_counter()
    training, held_out = split_held_out(corpus, val_share)
    split = time.perf_counter()
    return {
        "utterances": len(corpus),
        "shards": len(corpus.paths),
        "hours": round(corpus.seconds / 3600, 1),
        "batches_per_epoch": len(batches),
        "open_s": round(opened - started, 3),
        "plan_s": round(planned - opened, 3),
        "seek_s": round(sought - planned, 4),
        "split_s": round(split - sought, 3),
        "held_out": 0 if held_out is None else len(held_out),
        "sought_batch_rows": int(item.indices.size),
        "peak_rss_mb": own_peak_rss_mb(),
        "training": len(training),
    }
