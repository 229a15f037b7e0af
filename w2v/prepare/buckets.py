"""Length buckets of a shard folder: log-spaced edges between the shortest and longest utterance kept.

The edges are fixed before any audio is decoded (a folder keeps its first run's edges), so every worker files
its utterances into the same buckets on its own. Log spacing gives every bucket the same ratio between its
longest and shortest utterance, so the padding a batch of one bucket could carry is bounded the same way in
each; the batch planner draws its own buckets from the index at train time.
"""

from __future__ import annotations

import numpy as np


def log_spaced_edges(min_seconds: float, max_seconds: float, num_buckets: int) -> tuple[float, ...]:
    """All edges, min_seconds first and max_seconds last: `num_buckets` buckets of equal length ratio."""
    if num_buckets <= 1 or min_seconds >= max_seconds:
        return (float(min_seconds), float(max_seconds))
    inner = np.geomspace(min_seconds, max_seconds, num_buckets + 1)[1:-1]
    # Rounded for a readable manifest, but never past an outer edge (min and max may be a rounding apart).
    rounded = (min(max(round(float(e), 6), min_seconds), max_seconds) for e in inner)
    return (float(min_seconds), *(float(e) for e in rounded), float(max_seconds))


def assign_buckets(durations_seconds: np.ndarray, inner_edges: tuple[float, ...]) -> np.ndarray:
    """The bucket index of each duration under `inner_edges` (0 .. len(inner_edges)); bucket k holds
    durations d with inner_edges[k-1] < d <= inner_edges[k]."""
    return np.searchsorted(np.asarray(inner_edges, dtype=np.float64), durations_seconds, side="left")
