"""The Arrow schema of a shard and the format name and version its manifest declares."""

from __future__ import annotations

import pyarrow as pa

FORMAT = "w2v-shards"
VERSION = 1
DTYPE = "int16"

METADATA_COLUMNS = ("text", "speaker", "label")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("audio", pa.list_(pa.int16()), nullable=False),
        pa.field("num_samples", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("start_seconds", pa.float64(), nullable=False),
        pa.field("mean", pa.float32(), nullable=False),
        pa.field("std", pa.float32(), nullable=False),
        *(pa.field(name, pa.string(), nullable=True) for name in METADATA_COLUMNS),
    ],
    metadata={"format": FORMAT, "version": str(VERSION)},
)

# Rows per Arrow record batch: readers stream a shard a batch at a time.
ROWS_PER_BATCH = 64
