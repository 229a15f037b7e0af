"""Length buckets: log-spaced edges fixed before decoding, each bucket with the same length ratio."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v.prepare.buckets import assign_buckets, log_spaced_edges


def test_every_bucket_spans_the_same_length_ratio() -> None:
    edges = np.array(log_spaced_edges(2.0, 20.0, 8))
    assert edges[0] == 2.0 and edges[-1] == 20.0 and len(edges) == 9
    ratios = edges[1:] / edges[:-1]
    assert np.allclose(ratios, 10 ** (1 / 8), rtol=1e-5)


def test_one_bucket_or_a_single_length_has_only_the_outer_edges() -> None:
    assert log_spaced_edges(2.0, 20.0, 1) == (2.0, 20.0)
    assert log_spaced_edges(5.0, 5.0, 8) == (5.0, 5.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=0.5, max_value=30.0), min_size=1, max_size=300),
    st.floats(min_value=0.5, max_value=5.0),
    st.floats(min_value=1.0, max_value=10.0),
    st.integers(1, 12),
)
def test_every_duration_in_range_gets_the_bucket_its_edges_name(
    durations: list[float], low: float, factor: float, num_buckets: int
) -> None:
    high = low * factor
    edges = log_spaced_edges(low, high, num_buckets)
    assert list(edges) == sorted(edges)
    array = np.clip(np.array(durations), low, high)
    buckets = assign_buckets(array, edges[1:-1])
    assert buckets.min() >= 0 and buckets.max() <= max(0, len(edges) - 2)
    for duration, bucket in zip(array.tolist(), buckets.tolist(), strict=True):
        assert bucket == 0 or edges[bucket] < duration
        assert duration <= edges[bucket + 1] or bucket == len(edges) - 2
    # Longer utterances never land in an earlier bucket.
    order = np.argsort(array, kind="stable")
    assert np.all(np.diff(buckets[order]) >= 0)
