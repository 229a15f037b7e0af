"""What a shard folder holds, in figures a person reads: hours, utterances, durations, buckets, rejects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2v.shards.index import utterance_index
from w2v.shards.location import Location
from w2v.shards.manifest import Manifest


@dataclass(frozen=True)
class BucketRow:
    bucket: int
    low_seconds: float
    high_seconds: float
    shards: int
    utterances: int
    hours: float


@dataclass(frozen=True)
class CorpusStats:
    hours: float
    utterances: int
    files_seen: int
    files_kept: int
    rejected: dict[str, int]
    rejected_hours: float
    short_pieces_dropped: int
    dropped_hours: float
    histogram_edges_seconds: tuple[float, ...]
    histogram_counts: tuple[int, ...]
    buckets: tuple[BucketRow, ...]
    filtered: dict[str, int]
    seconds_removed_by_reason: dict[str, float]
    quality_histograms: dict[str, Any]


def utterance_seconds(folder: Path | Location, manifest: Manifest) -> np.ndarray:
    """Every utterance's duration, from the training index (mapped; shards no index covers are read)."""
    index = utterance_index(folder, [s.path for s in manifest.shards], manifest.index)
    return index.num_samples.astype(np.float64) / manifest.sample_rate


def describe(folder: Path | Location, manifest: Manifest, histogram_bins: int = 10) -> CorpusStats:
    seconds = utterance_seconds(folder, manifest)
    edges_list = list(manifest.bucket_edges_seconds)
    low, high = (edges_list[0], edges_list[-1]) if edges_list else (0.0, 1.0)
    if seconds.size:
        low, high = min(low, float(seconds.min())), max(high, float(seconds.max()))
    counts, edges = np.histogram(seconds, bins=histogram_bins, range=(low, high))
    totals = manifest.seconds()
    counted = manifest.counts()
    buckets = []
    for bucket in sorted({s.bucket for s in manifest.shards}):
        members = [s for s in manifest.shards if s.bucket == bucket]
        buckets.append(
            BucketRow(
                bucket=bucket,
                low_seconds=edges_list[bucket] if bucket < len(edges_list) else 0.0,
                high_seconds=edges_list[bucket + 1] if bucket + 1 < len(edges_list) else 0.0,
                shards=len(members),
                utterances=sum(s.rows for s in members),
                hours=sum(s.seconds for s in members) / 3600,
            )
        )
    return CorpusStats(
        hours=totals["in_shards"] / 3600,
        utterances=counted["utterances"],
        files_seen=counted["files_seen"],
        files_kept=counted["files_kept"],
        rejected=counted["rejected"],
        rejected_hours=totals["rejected"] / 3600,
        short_pieces_dropped=counted["short_pieces_dropped"],
        dropped_hours=totals["dropped_short"] / 3600,
        histogram_edges_seconds=tuple(float(e) for e in edges),
        histogram_counts=tuple(int(c) for c in counts),
        buckets=tuple(buckets),
        filtered=counted["filtered"],
        seconds_removed_by_reason=manifest.seconds_removed_by_reason(),
        quality_histograms=manifest.quality_histograms,
    )
