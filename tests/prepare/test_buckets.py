"""Length buckets: equal total duration per bucket, from the corpus' own durations."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v.prepare.buckets import assign_buckets, equal_duration_edges


def test_buckets_hold_equal_total_duration_on_a_smooth_corpus() -> None:
    durations = np.random.default_rng(0).uniform(2.0, 20.0, 20_000)
    edges = equal_duration_edges(durations, 4)
    buckets = assign_buckets(durations, edges)
    totals = np.bincount(buckets, weights=durations)
    assert len(totals) == 4
    assert np.allclose(totals / totals.sum(), 0.25, atol=0.01)


def test_fewer_distinct_lengths_than_buckets_gives_fewer_buckets() -> None:
    durations = np.array([5.0, 5.0, 5.0, 20.0])
    edges = equal_duration_edges(durations, 8)
    assert len(set(assign_buckets(durations, edges).tolist())) <= 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=30.0), min_size=1, max_size=300), st.integers(1, 12))
def test_edges_are_sorted_and_every_duration_gets_a_bucket(durations: list[float], num_buckets: int) -> None:
    array = np.array(durations)
    edges = equal_duration_edges(array, num_buckets)
    assert list(edges) == sorted(set(edges))
    buckets = assign_buckets(array, edges)
    assert buckets.min() >= 0 and buckets.max() <= len(edges) < num_buckets + 1
    # Longer utterances never land in an earlier bucket.
    order = np.argsort(array, kind="stable")
    assert np.all(np.diff(buckets[order]) >= 0)
