"""The batch planner and the stream over it: exactly once per epoch, budget kept, seeded, resumable anywhere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from w2v.data.plan import BatchConfig, _pack, _pack_reference, length_buckets, plan_batches
from w2v.data.stream import BatchStream, StreamState
from w2v.errors import W2VError

RATE = 16_000

corpora = st.lists(st.integers(RATE // 2, 20 * RATE), min_size=1, max_size=400).map(np.array)
configs = st.builds(
    BatchConfig,
    max_batch_seconds=st.floats(25.0, 120.0),
    quadratic_seconds=st.one_of(st.none(), st.floats(5.0, 100.0)),
    mode=st.sampled_from(["crop", "pad"]),
    max_sample_seconds=st.floats(5.0, 16.0),
    num_buckets=st.integers(1, 10),
    pool_batches=st.integers(1, 20),
)


def _fits(num_samples: np.ndarray, config: BatchConfig) -> bool:
    return bool(config.cost(config.row_lengths(num_samples)).max() <= config.budget_samples)


@settings(max_examples=150, deadline=None)
@given(num_samples=corpora, config=configs, seed=st.integers(0, 2**32), epoch=st.integers(0, 50))
def test_every_utterance_is_planned_exactly_once_per_epoch_within_the_budget(
    num_samples: np.ndarray, config: BatchConfig, seed: int, epoch: int
) -> None:
    assume(_fits(num_samples, config))
    batches = plan_batches(num_samples, config, seed, epoch)
    planned = np.concatenate(batches)
    assert np.array_equal(np.sort(planned), np.arange(num_samples.size))
    costs = config.cost(config.row_lengths(num_samples))
    for batch in batches:
        assert batch.size * costs[batch].max() <= config.budget_samples
    assert all(b.size > 0 for b in batches)


@settings(max_examples=50, deadline=None)
@given(num_samples=corpora, config=configs, seed=st.integers(0, 2**32))
def test_the_plan_is_a_function_of_seed_and_epoch(num_samples: np.ndarray, config: BatchConfig, seed: int) -> None:
    assume(_fits(num_samples, config))
    first = plan_batches(num_samples, config, seed, 3)
    again = plan_batches(num_samples.copy(), config, seed, 3)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    if num_samples.size >= 50:
        other_epoch = plan_batches(num_samples, config, seed, 4)
        assert [b.tolist() for b in first] != [b.tolist() for b in other_epoch]


def test_batches_are_shuffled_across_buckets_and_change_between_epochs() -> None:
    num_samples = np.random.default_rng(0).integers(RATE, 15 * RATE, 5000)
    config = BatchConfig(max_batch_seconds=60.0)
    batches = plan_batches(num_samples, config, seed=1, epoch=0)
    buckets = length_buckets(config.row_lengths(num_samples), config.num_buckets)
    first_bucket = [int(buckets[b[0]]) for b in batches]
    # Neighbouring batches come from different buckets about as often as independent draws would.
    changes = np.mean(np.diff(first_bucket) != 0)
    assert changes > 0.75
    pairs = {frozenset(b.tolist()) for b in batches}
    next_epoch = {frozenset(b.tolist()) for b in plan_batches(num_samples, config, seed=1, epoch=1)}
    assert len(pairs & next_epoch) < 0.05 * len(pairs)


def test_sorting_inside_pools_keeps_cropping_and_padding_small() -> None:
    num_samples = np.random.default_rng(0).integers(2 * RATE, 15 * RATE, 20_000)
    for mode in ("crop", "pad"):
        config = BatchConfig(max_batch_seconds=87.5, mode=mode)
        lengths = config.row_lengths(num_samples)
        batches = plan_batches(num_samples, config, seed=0, epoch=0)
        if mode == "crop":
            wasted = sum(int((lengths[b] - lengths[b].min()).sum()) for b in batches)
        else:
            wasted = sum(int((lengths[b].max() - lengths[b]).sum()) for b in batches)
        assert wasted / lengths.sum() < 0.01, mode


def test_a_budget_smaller_than_one_utterance_is_refused_with_the_numbers() -> None:
    config = BatchConfig(max_batch_seconds=10.0, max_sample_seconds=30.0)
    with pytest.raises(W2VError, match=r"budget of 10 s is smaller than one utterance of 12 s"):
        plan_batches(np.array([12 * RATE]), config, 0, 0)
    with pytest.raises(W2VError, match="exactly one of"):
        BatchConfig(max_batch_seconds=10.0, max_batch_samples=100)


def _consume(stream: BatchStream, state: StreamState, world_size: int, steps: int) -> tuple[list, StreamState]:
    """Run `steps` micro-steps on every rank; returns the global sequence of (position, indices) and the state."""
    iterators = [stream.for_rank(rank, world_size, state) for rank in range(world_size)]
    taken = []
    for _ in range(steps):
        items = [next(it) for it in iterators]
        assert len({item.state_after for item in items}) == 1  # every rank agrees on the state
        taken += [(item.position, tuple(item.indices.tolist())) for item in items]
        state = items[0].state_after
    return sorted(taken), state


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.lists(corpora, min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
    world_before=st.integers(1, 5),
    world_after=st.integers(1, 5),
    steps_before=st.integers(0, 30),
)
def test_restarting_at_any_cursor_with_any_world_size_continues_the_same_sequence(
    num_samples: list[np.ndarray], seed: int, world_before: int, world_after: int, steps_before: int
) -> None:
    config = BatchConfig(max_batch_seconds=40.0, pool_batches=4)
    weights = [1.0 + k for k in range(len(num_samples))]
    stream = BatchStream(num_samples, config, seed, weights)
    total = 60
    steps_after = -(-(total - steps_before * world_before) // world_after)
    if steps_after < 0:
        return
    before, state = _consume(stream, stream.initial_state(), world_before, steps_before)
    # A fresh stream object, as after a restart: only the state dict survives.
    restarted = BatchStream(num_samples, config, seed, weights)
    state = StreamState.from_dict(state.to_dict())
    after, _ = _consume(restarted, state, world_after, steps_after)
    reference, _ = _consume(
        BatchStream(num_samples, config, seed, weights), stream.initial_state(), 1, len(before) + len(after)
    )
    assert before + after == reference


def test_one_corpus_repeats_each_utterance_once_per_epoch_in_the_stream() -> None:
    num_samples = np.random.default_rng(3).integers(RATE, 10 * RATE, 300)
    stream = BatchStream([num_samples], BatchConfig(max_batch_seconds=30.0), seed=5)
    epoch_lengths = [len(stream.plan(0, e)) for e in range(3)]
    items = list(itertools.islice(stream.for_rank(0, 1), sum(epoch_lengths)))
    start = 0
    for epoch, count in enumerate(epoch_lengths):
        seen = np.concatenate([item.indices for item in items[start : start + count]])
        assert {item.epoch for item in items[start : start + count]} == {epoch}
        assert np.array_equal(np.sort(seen), np.arange(num_samples.size))
        start += count


def test_corpora_are_mixed_by_weight() -> None:
    small = np.full(50, 4 * RATE)
    large = np.full(5000, 4 * RATE)
    stream = BatchStream([small, large], BatchConfig(max_batch_seconds=20.0), seed=0, weights=[0.7, 0.3])
    drawn = [item.corpus for item in itertools.islice(stream.for_rank(0, 1), 4000)]
    assert np.mean(np.array(drawn) == 0) == pytest.approx(0.7, abs=0.03)
    # The small corpus cycled through many epochs meanwhile, each one whole.
    assert stream.take(StreamState(0, 4000, (stream.initial_state().corpora[0],) * 2))[0].epoch == 0


def test_a_state_from_another_run_is_refused() -> None:
    stream = BatchStream([np.full(10, RATE)], BatchConfig(), seed=1)
    with pytest.raises(W2VError, match="seed 2 differs"):
        stream.take(StreamState(seed=2))
    with pytest.raises(W2VError, match="same --shards"):
        stream.take(StreamState(seed=1, corpora=()))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(16_000, 320_000), min_size=1, max_size=400),
    st.one_of(st.just(0.0), st.floats(0.0, 0.02)),
    st.integers(1, 40),
    st.integers(0, 399),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
def test_compiled_packing_gives_the_python_loops_batches(
    lengths: list[int], wobble: float, first_rows: int, pick: int, times: int, seed: int
) -> None:
    # A pool as the planner sorts it: ascending up to the length tolerance, so not always ascending. The
    # budget is a whole multiple of one row's cost, so that ties with it (count × cost == budget) happen.
    rng = np.random.default_rng(seed)
    costs = np.sort(np.array(lengths, dtype=np.float64)) * (1 + wobble * rng.random(len(lengths)))
    budget = float(costs[pick % len(lengths)] * times)
    indices = rng.permutation(len(lengths))
    compiled = _pack(indices, costs, budget, first_rows)
    reference = _pack_reference(indices, costs, budget, first_rows)
    assert len(compiled) == len(reference)
    assert all(np.array_equal(a, b) for a, b in zip(compiled, reference, strict=True))


def test_a_nodes_items_are_its_ranks_items_in_the_order_they_read_them() -> None:
    stream = BatchStream([np.full(300, 2 * RATE)], BatchConfig(max_batch_seconds=10.0), seed=3)
    node = list(itertools.islice(stream.for_ranks([2, 3], world_size=4), 20))
    assert [rank for rank, _ in node] == [2, 3] * 10
    for rank in (2, 3):
        own = list(itertools.islice(stream.for_rank(rank, 4), 10))
        theirs = [item for r, item in node if r == rank]
        assert [i.position for i in theirs] == [i.position for i in own] == list(range(rank, 40, 4))
        assert all(np.array_equal(a.indices, b.indices) for a, b in zip(theirs, own, strict=True))
        assert [i.state_after for i in theirs] == [i.state_after for i in own]
    for wrong in ([3, 4], [], [1, 1]):
        with pytest.raises(W2VError, match=r"expected distinct ranks of a world of 4"):
            next(stream.for_ranks(wrong, world_size=4))
