"""Length buckets with equal total duration, computed from the corpus' own durations."""

from __future__ import annotations

import numpy as np


def equal_duration_edges(durations_seconds: np.ndarray, num_buckets: int) -> tuple[float, ...]:
    """Inner bucket edges (ascending, unique) that split the summed duration into `num_buckets` equal parts.

    Bucket k holds durations d with edges[k-1] < d <= edges[k]; fewer distinct durations than buckets
    gives fewer buckets.
    """
    if durations_seconds.size == 0 or num_buckets <= 1:
        return ()
    ordered = np.sort(durations_seconds.astype(np.float64))
    cumulative = np.cumsum(ordered)
    total = cumulative[-1]
    edges = []
    for k in range(1, num_buckets):
        index = int(np.searchsorted(cumulative, total * k / num_buckets, side="left"))
        edges.append(float(ordered[min(index, ordered.size - 1)]))
    largest = float(ordered[-1])
    return tuple(e for e in sorted(set(edges)) if e < largest)


def assign_buckets(durations_seconds: np.ndarray, inner_edges: tuple[float, ...]) -> np.ndarray:
    """The bucket index of each duration under `inner_edges` (0 .. len(inner_edges))."""
    return np.searchsorted(np.asarray(inner_edges, dtype=np.float64), durations_seconds, side="left")
