"""One epoch of micro-batches for one corpus: a pure, seeded function of the utterances' lengths.

Utterances are split into length buckets and shuffled; each bucket is cut into pools of about
`pool_batches` batches, each pool is sorted by length (to within `length_tolerance`) and packed greedily
under the budget, and the batches of all pools and buckets are shuffled together. Sorting inside a pool
keeps padding and cropping small; the shuffles, the tolerance and a random size for each pool's first
batch (which moves every batch boundary) keep batches different from one epoch to the next.
Remainder rule: nothing is dropped. The first batch of each pool (that random phase) and its last (what
is left) may be short, so an epoch has at most two short batches per pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from w2v.errors import W2VError

MODES = ("crop", "pad")


@dataclass(frozen=True)
class BatchConfig:
    """How micro-batches are made. Lengths and budgets are in samples at `sample_rate` unless named seconds.

    The budget bounds `count × cost(longest)` of every micro-batch, where a row's length is capped at
    `max_sample_seconds` (longer utterances are randomly cropped) and, in `pad` mode, rounded up to
    `pad_to_multiple_of`. cost(d) = d, or d + d²/q with `quadratic_seconds` = q for attention's share.
    """

    sample_rate: int = 16_000
    # fairseq's wav2vec 2.0 BASE: max_tokens 1.4M samples (87.5 s) per GPU.
    max_batch_seconds: float | None = 87.5
    max_batch_samples: int | None = None
    quadratic_seconds: float | None = None
    # crop: every row cut to the batch's shortest (fairseq's pretraining default); pad: padded to its longest.
    mode: str = "crop"
    # fairseq's max_sample_size: 250,000 samples.
    max_sample_seconds: float = 15.625
    pad_to_multiple_of: int = 8
    # crop: the batch's width rounded down to a multiple of this (unless the shortest row is shorter). With 1,
    # nearly every batch has a width never seen before; on a GPU, bf16 steps paid ~0.17 s per new shape on an
    # H100 (0.52x fp32 throughput), and 1.3x fp32 once shapes repeated: configs/base.yaml uses 1600 (0.1 s).
    crop_to_multiple_of: int = 1
    num_buckets: int = 8
    pool_batches: int = 100
    # Utterances whose lengths differ by less than this share sort as equals (in random order), so batches
    # are not made of the same neighbours every epoch; it bounds the padding or cropping it adds.
    length_tolerance: float = 0.01
    # Streaming from a bucket through a small cache: plan each epoch in windows of this many shards (in a
    # shuffled shard order), so a shard is needed only during its window and a cache of about two windows
    # downloads the corpus about once per epoch. Batches mix utterances of the window's shards only: larger
    # windows mix more and need a larger cache. None: one window of every shard (a full shuffle).
    shuffle_window_shards: int | None = None

    def __post_init__(self) -> None:
        if (self.max_batch_seconds is None) == (self.max_batch_samples is None):
            raise W2VError("batch budget: give exactly one of max_batch_seconds and max_batch_samples")
        if self.mode not in MODES:
            raise W2VError(f"batch mode {self.mode!r}: expected one of {', '.join(MODES)}")
        positive = {
            "sample_rate": self.sample_rate,
            "max_batch_seconds": self.max_batch_seconds,
            "max_batch_samples": self.max_batch_samples,
            "quadratic_seconds": self.quadratic_seconds,
            "max_sample_seconds": self.max_sample_seconds,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "crop_to_multiple_of": self.crop_to_multiple_of,
            "num_buckets": self.num_buckets,
            "pool_batches": self.pool_batches,
            "length_tolerance": self.length_tolerance,
            "shuffle_window_shards": self.shuffle_window_shards,
        }
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise W2VError(f"batch config: {name} must be positive, got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BatchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise W2VError(f"batch config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def budget_samples(self) -> float:
        if self.max_batch_samples is not None:
            return float(self.max_batch_samples)
        assert self.max_batch_seconds is not None
        return self.max_batch_seconds * self.sample_rate

    @property
    def max_sample_size(self) -> int:
        return int(self.max_sample_seconds * self.sample_rate)

    def row_lengths(self, num_samples: np.ndarray) -> np.ndarray:
        """The length each utterance takes in a batch row, before a crop batch cuts rows to its shortest."""
        lengths = np.minimum(np.asarray(num_samples, dtype=np.int64), self.max_sample_size)
        if self.mode == "pad":
            multiple = self.pad_to_multiple_of
            lengths = -(-lengths // multiple) * multiple
        return lengths

    def cost(self, row_lengths: np.ndarray) -> np.ndarray:
        """What a row of these lengths costs against the budget, in samples."""
        lengths = np.asarray(row_lengths, dtype=np.float64)
        if self.quadratic_seconds is None:
            return lengths
        return lengths + lengths * lengths / (self.quadratic_seconds * self.sample_rate)


def plan_batches(num_samples: np.ndarray, config: BatchConfig, seed: int, epoch: int) -> list[np.ndarray]:
    """Micro-batches (arrays of utterance indices) covering every utterance exactly once, in training order."""
    num_samples = np.asarray(num_samples, dtype=np.int64)
    if num_samples.size == 0:
        return []
    if (num_samples <= 0).any():
        raise W2VError(f"batch plan: {int((num_samples <= 0).sum())} utterances have no samples")
    lengths = config.row_lengths(num_samples)
    costs = config.cost(lengths)
    budget = config.budget_samples
    if costs.max() > budget:
        worst = int(np.argmax(costs))
        rate = config.sample_rate
        costing = "" if config.quadratic_seconds is None else f" (costing {costs[worst] / rate:g} s with its square)"
        raise W2VError(
            f"batch budget of {budget / rate:g} s is smaller than one utterance of {lengths[worst] / rate:g} s"
            f"{costing}: raise max_batch_seconds or lower max_sample_seconds"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_samples.size)
    buckets = length_buckets(lengths, config.num_buckets)
    # Lengths within `length_tolerance` of each other sort as equal, so they keep their shuffled order.
    sort_keys = np.floor(np.log(lengths) / math.log1p(config.length_tolerance)).astype(np.int64)
    batches: list[np.ndarray] = []
    for bucket in range(config.num_buckets):
        members = order[buckets[order] == bucket]
        if members.size == 0:
            continue
        per_batch = max(1, int(budget // costs[members].max()))
        pool_size = per_batch * config.pool_batches
        for start in range(0, members.size, pool_size):
            pool = members[start : start + pool_size]
            pool = pool[np.argsort(sort_keys[pool], kind="stable")]
            batches += _pack(pool, costs[pool], budget, first_rows=int(rng.integers(1, per_batch + 1)))
    return [batches[i] for i in rng.permutation(len(batches))]


def plan_shard_windows(
    num_samples: np.ndarray, shard_of: np.ndarray, config: BatchConfig, seed: int, epoch: int
) -> list[np.ndarray]:
    """`plan_batches`, in windows of `config.shuffle_window_shards` shards: the epoch's shard order is a
    seeded permutation, cut into windows; each window's utterances are planned (bucketed, pooled, packed,
    shuffled) on their own and the windows follow one another. Every utterance is in exactly one batch; a
    batch holds utterances of one window's shards only. Without a window size, `plan_batches` itself."""
    window = config.shuffle_window_shards
    shard_of = np.asarray(shard_of, dtype=np.int64)
    if window is None or shard_of.size == 0:
        return plan_batches(num_samples, config, seed, epoch)
    num_samples = np.asarray(num_samples, dtype=np.int64)
    shards = np.unique(shard_of)
    order = np.random.default_rng([seed, epoch, 1]).permutation(shards)
    place = np.empty(int(shards.max()) + 1, dtype=np.int64)
    place[order] = np.arange(order.size)
    window_of = place[shard_of] // window
    rows = np.argsort(window_of, kind="stable")
    ends = np.searchsorted(window_of[rows], np.arange(1, -(-order.size // window) + 1))
    batches: list[np.ndarray] = []
    for number, members in enumerate(np.split(rows, ends[:-1])):
        planned = plan_batches(num_samples[members], config, seed, epoch * 1_000_003 + number)
        batches += [members[batch] for batch in planned]
    return batches


def length_buckets(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket number of each length: quantile edges, so buckets hold about equally many utterances."""
    ordered = np.sort(lengths)
    edges = ordered[[(k * ordered.size) // num_buckets for k in range(1, num_buckets)]]
    return np.searchsorted(edges, lengths, side="right")


def _pack(indices: np.ndarray, costs: np.ndarray, budget: float, first_rows: int) -> list[np.ndarray]:
    """Greedy: from each start, the most rows (in ascending cost) whose count × last cost fits the budget.

    The first batch takes at most `first_rows`: a random phase, so that batch boundaries move from one epoch
    to the next even where a pool holds a whole bucket and sorts it the same way. The loop is compiled
    (w2v.data.packing); `_pack_reference` is the same in Python, which tests hold it to.
    """
    from w2v.data.packing import batch_ends

    ends = batch_ends(np.ascontiguousarray(costs, dtype=np.float64), float(budget), int(first_rows)).tolist()
    return [indices[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _pack_reference(indices: np.ndarray, costs: np.ndarray, budget: float, first_rows: int) -> list[np.ndarray]:
    batches = []
    start, total = 0, indices.size
    while start < total:
        # Costs ascend, so a batch holds at most budget // cost[start] rows: no need to look further.
        window = min(total - start, max(1, math.floor(budget / costs[start])))
        if start == 0:
            window = min(window, first_rows)
        batch_costs = np.arange(1, window + 1) * costs[start : start + window]
        count = max(1, int(np.searchsorted(batch_costs, budget, side="right")))
        batches.append(indices[start : start + count])
        start += count
    return batches
