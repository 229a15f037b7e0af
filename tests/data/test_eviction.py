"""Eviction with a known plan (Belady) against LRU: fewer fetches, never over the limit."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v.data.eviction import next_uses, simulate

accesses = st.lists(st.integers(0, 11), min_size=1, max_size=200)


def test_next_uses_point_at_the_following_read_of_the_same_shard() -> None:
    assert next_uses([3, 1, 3, 3, 2, 1]) == [2, 5, 3, 6, 6, 6]


def test_a_plan_that_walks_the_corpus_in_rounds_is_lrus_worst_case_and_not_the_plans() -> None:
    rounds = list(range(10)) * 5  # five passes over ten shards, a cache for four
    sizes = dict.fromkeys(range(10), 100)
    lru, plan = simulate(rounds, sizes, 400, "lru"), simulate(rounds, sizes, 400, "plan")
    assert lru.fetches == 50  # LRU evicts exactly the shard needed next: every read misses
    assert plan.fetches == 35 and plan.hits == 15  # the fewest possible (the brute-force test below)
    assert plan.hit_rate == pytest.approx(15 / 50)


def _fewest_fetches(reads: tuple[int, ...], slots: int) -> int:
    """The minimum number of fetches of any eviction policy, by trying every choice (small inputs only)."""

    @functools.cache
    def after(position: int, resident: frozenset[int]) -> int:
        if position == len(reads):
            return 0
        shard = reads[position]
        if shard in resident:
            return after(position + 1, resident)
        if len(resident) < slots:
            return 1 + after(position + 1, resident | {shard})
        return 1 + min(after(position + 1, (resident - {victim}) | {shard}) for victim in resident)

    return after(0, frozenset())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=14), st.integers(1, 4))
def test_with_equal_shards_the_plan_fetches_the_fewest_any_policy_could(reads: list[int], slots: int) -> None:
    sizes = dict.fromkeys(range(6), 10)
    assert simulate(reads, sizes, 10 * slots, "plan").fetches == _fewest_fetches(tuple(reads), slots)


@settings(max_examples=300, deadline=None)
@given(accesses, st.integers(1, 12))
def test_with_equal_shards_the_plan_never_fetches_more_than_lru(reads: list[int], slots: int) -> None:
    sizes = dict.fromkeys(range(12), 7)
    plan, lru = simulate(reads, sizes, 7 * slots, "plan"), simulate(reads, sizes, 7 * slots, "lru")
    assert plan.fetches <= lru.fetches
    assert plan.hits + plan.fetches == len(reads) == lru.hits + lru.fetches


@settings(max_examples=300, deadline=None)
@given(
    accesses,
    st.lists(st.integers(1, 50), min_size=12, max_size=12),
    st.integers(1, 300),
    st.sampled_from(["plan", "lru"]),
)
def test_disk_use_stays_within_the_limit_or_one_shard(
    reads: list[int], shard_sizes: list[int], limit: int, policy: str
) -> None:
    sizes = dict(enumerate(shard_sizes))
    replay = simulate(reads, sizes, limit, policy)
    assert replay.peak_bytes <= max(limit, max(sizes[s] for s in reads))
    if limit >= sum(sizes[s] for s in set(reads)):  # everything fits: each shard is fetched once
        assert replay.fetches == len(set(reads))
        assert replay.fetched_bytes == sum(sizes[s] for s in set(reads))


def test_an_unknown_policy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'fifo'"):
        simulate([0], {0: 1}, 1, "fifo")
