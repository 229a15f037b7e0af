"""Planning an epoch in windows of shards: every utterance once, each batch inside one window, and a cache
of one window downloads the corpus once where a full shuffle downloads it many times."""

from __future__ import annotations

import numpy as np
import pytest

from w2v.data.eviction import simulate
from w2v.data.plan import BatchConfig, plan_batches, plan_shard_windows
from w2v.data.stream import BatchStream
from w2v.errors import W2VError

SHARDS, ROWS_PER_SHARD = 40, 50


def _corpus(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(16_000, 160_000, SHARDS * ROWS_PER_SHARD)
    return lengths, np.repeat(np.arange(SHARDS), ROWS_PER_SHARD)


def _accesses(batches: list[np.ndarray], shard_of: np.ndarray) -> list[int]:
    return [int(s) for batch in batches for s in np.unique(shard_of[batch])]


def test_every_utterance_is_planned_once_and_each_batch_stays_inside_a_window() -> None:
    lengths, shard_of = _corpus()
    config = BatchConfig(max_batch_seconds=40.0, shuffle_window_shards=4)
    batches = plan_shard_windows(lengths, shard_of, config, seed=3, epoch=0)
    planned = np.concatenate(batches)
    assert np.array_equal(np.sort(planned), np.arange(lengths.size))
    # Each shard is read by batches first..last; shards whose spans overlap share a window. Windows that
    # follow one another without overlap mean a shard is done once its window is.
    spans: dict[int, list[int]] = {}
    for position, batch in enumerate(batches):
        for shard in np.unique(shard_of[batch]).tolist():
            spans.setdefault(shard, [position, position])[1] = position
    windows: list[set[int]] = []
    end = -1
    for shard, (first, last) in sorted(spans.items(), key=lambda item: item[1]):
        if first > end:
            windows.append(set())
        windows[-1].add(shard)
        end = max(end, last)
    assert len(windows) == SHARDS // 4 and all(len(w) == 4 for w in windows)


def test_a_cache_of_two_windows_downloads_the_corpus_once_where_a_full_shuffle_thrashes() -> None:
    lengths, shard_of = _corpus()
    sizes = dict.fromkeys(range(SHARDS), 1)
    windowed = BatchConfig(max_batch_seconds=40.0, shuffle_window_shards=4)
    full = BatchConfig(max_batch_seconds=40.0)
    for policy in ("plan", "lru"):
        replay = simulate(_accesses(plan_shard_windows(lengths, shard_of, windowed, 3, 0), shard_of), sizes, 8, policy)
        assert replay.fetches == SHARDS  # one download per shard per epoch
    shuffled = simulate(_accesses(plan_batches(lengths, full, 3, 0), shard_of), sizes, 8, "plan")
    assert shuffled.fetches > 5 * SHARDS


def test_without_a_window_the_plan_is_the_full_shuffle_and_epochs_reorder_the_shards() -> None:
    lengths, shard_of = _corpus()
    full = BatchConfig(max_batch_seconds=40.0)
    same = plan_shard_windows(lengths, shard_of, full, 3, 0)
    assert all(np.array_equal(a, b) for a, b in zip(same, plan_batches(lengths, full, 3, 0), strict=True))
    windowed = BatchConfig(max_batch_seconds=40.0, shuffle_window_shards=4)
    first = [np.unique(shard_of[b]).tolist() for b in plan_shard_windows(lengths, shard_of, windowed, 3, 0)[:3]]
    again = [np.unique(shard_of[b]).tolist() for b in plan_shard_windows(lengths, shard_of, windowed, 3, 0)[:3]]
    other = [np.unique(shard_of[b]).tolist() for b in plan_shard_windows(lengths, shard_of, windowed, 3, 1)[:3]]
    assert first == again and first != other


def test_the_stream_plans_in_windows_when_the_config_asks_and_the_shards_are_known() -> None:
    lengths, shard_of = _corpus()
    config = BatchConfig.from_dict({"max_batch_seconds": 40.0, "shuffle_window_shards": 4})
    expected = plan_shard_windows(lengths, shard_of, config, 3, 0)
    stream = BatchStream([lengths], config, seed=3, shards=[shard_of])
    items = stream.for_rank(0, 1)
    taken = [next(items).indices for _ in range(len(expected))]
    assert all(np.array_equal(a, b) for a, b in zip(taken, expected, strict=True))
    with pytest.raises(W2VError, match="shuffle_window_shards must be positive"):
        BatchConfig(shuffle_window_shards=0)
