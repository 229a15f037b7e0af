"""The Arrow schema of a shard and the format name and version its manifest declares."""

from __future__ import annotations

import pyarrow as pa

FORMAT = "w2v-shards"
# 2: per-utterance quality columns. 3: per-source records in Parquet source tables, not in manifest.json.
VERSION = 3
# Version 2 folders read as they are; the next prepare into one writes version 3.
READABLE_VERSIONS = (2, 3)
DTYPE = "int16"

METADATA_COLUMNS = ("text", "speaker", "label")
# Null when prepare ran with measure_quality off (loudness also when an utterance is too short to measure).
QUALITY_COLUMNS = ("peak", "clipped_share", "dc_offset", "rms_dbfs", "loudness_lufs", "snr_db", "speech_share")

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
        *(pa.field(name, pa.float32(), nullable=True) for name in QUALITY_COLUMNS),
    ],
    metadata={"format": FORMAT, "version": str(VERSION)},
)

# Rows per Arrow record batch: readers stream a shard a batch at a time.
ROWS_PER_BATCH = 64
