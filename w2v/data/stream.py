"""The endless sequence of micro-batches training reads, split between ranks by one global cursor.

Position p of the stream is one micro-batch, taken from a corpus chosen by weight (a hash of seed and p) at
that corpus' own cursor; a corpus that reaches the end of its epoch plan starts the next epoch. Rank r of W
takes positions p + r of every W consecutive ones, so all ranks get the same number of micro-batches by
construction. Each rank walks every position (index arithmetic only) and reads only its own, so the state
after a micro-step is the same on every rank: (seed, position, and each corpus' epoch and cursor). Resuming
from it, with any number of ranks, continues the same sequence without repeating or skipping a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2v.data.plan import BatchConfig, plan_batches, plan_shard_windows
from w2v.errors import W2VError

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class CorpusCursor:
    epoch: int = 0
    cursor: int = 0  # micro-batches of this epoch's plan already taken
    utterances: int | None = None  # the corpus' size the epoch was planned over (None: not recorded)


@dataclass(frozen=True)
class StreamState:
    """Everything a checkpoint stores to resume the stream exactly."""

    seed: int
    position: int = 0
    corpora: tuple[CorpusCursor, ...] = (CorpusCursor(),)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "position": self.position,
            "corpora": [{"epoch": c.epoch, "cursor": c.cursor, "utterances": c.utterances} for c in self.corpora],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StreamState:
        corpora = tuple(CorpusCursor(int(c["epoch"]), int(c["cursor"]), c.get("utterances")) for c in values["corpora"])
        return cls(seed=int(values["seed"]), position=int(values["position"]), corpora=corpora)


@dataclass(frozen=True)
class WorkItem:
    """One micro-batch for one rank: which utterances, where in the stream, and the state after its step."""

    position: int
    corpus: int
    epoch: int
    cursor: int
    indices: np.ndarray
    state_after: StreamState
    # After an out-of-memory step the planned micro-batch is read as `pieces` parts (same utterances).
    piece: int = 0
    pieces: int = 1

    def split(self, parts: int) -> list[WorkItem]:
        """This micro-batch as up to `parts` consecutive runs of its rows (fewer when it has fewer rows)."""
        chunks = [c for c in np.array_split(self.indices, parts) if len(c)] if parts > 1 else [self.indices]
        return [
            WorkItem(self.position, self.corpus, self.epoch, self.cursor, c, self.state_after, k, len(chunks))
            for k, c in enumerate(chunks)
        ]


class BatchStream:
    """Micro-batches from one or more corpora (their utterance lengths), mixed by `weights`."""

    def __init__(
        self,
        num_samples: Sequence[np.ndarray],
        config: BatchConfig,
        seed: int,
        weights: Sequence[float] | None = None,
        shards: Sequence[np.ndarray] | None = None,
    ) -> None:
        """`shards`: each corpus' shard number per utterance, for plans in windows of shards
        (`config.shuffle_window_shards`); without them every epoch is one full shuffle."""
        if not num_samples:
            raise W2VError("batch stream: no corpus given")
        weights = [1.0] * len(num_samples) if weights is None else list(weights)
        if len(weights) != len(num_samples) or any(not w > 0 for w in weights):
            raise W2VError(f"batch stream: need one positive weight per corpus, got {weights}")
        for k, lengths in enumerate(num_samples):
            if len(lengths) == 0:
                raise W2VError(f"batch stream: corpus {k} has no utterances")
        self.num_samples = [np.asarray(n, dtype=np.int64) for n in num_samples]
        self.shards = [np.asarray(s, dtype=np.int64) for s in shards] if shards is not None else None
        self.config = config
        self.seed = seed
        total = float(sum(weights))
        self.cumulative_weights = np.cumsum([w / total for w in weights])
        self._plans: dict[tuple[int, int], list[np.ndarray]] = {}

    def initial_state(self) -> StreamState:
        corpora = tuple(CorpusCursor(0, 0, len(n)) for n in self.num_samples)
        return StreamState(seed=self.seed, position=0, corpora=corpora)

    def adopt(self, state: StreamState) -> tuple[StreamState, list[str]]:
        """A saved state for the corpora as they are now. A corpus that grew (or shrank) since the state was
        saved starts a new epoch planned over all its utterances, so what was added joins at once and every
        utterance is again seen once per epoch; the rest of the interrupted epoch is not read. Returns the
        state and a line for each corpus that changed."""
        self._check(state)
        corpora, changes = [], []
        for k, (at, lengths) in enumerate(zip(state.corpora, self.num_samples, strict=True)):
            if at.utterances is not None and at.utterances != len(lengths):
                changes.append(
                    f"corpus {k}: {at.utterances} → {len(lengths)} utterances; epoch {at.epoch + 1} starts now "
                    f"over all of them (epoch {at.epoch} stopped after {at.cursor} micro-batches)"
                )
                at = CorpusCursor(at.epoch + 1, 0, len(lengths))
            corpora.append(CorpusCursor(at.epoch, at.cursor, len(lengths)))
        return StreamState(state.seed, state.position, tuple(corpora)), changes

    def plan(self, corpus: int, epoch: int) -> list[np.ndarray]:
        """The epoch's micro-batches of one corpus (the last two epochs asked for are kept)."""
        key = (corpus, epoch)
        if key not in self._plans:
            for old in [k for k in self._plans if k[0] == corpus and k[1] < epoch - 1]:
                del self._plans[old]
            lengths = self.num_samples[corpus]
            if self.shards is None:
                self._plans[key] = plan_batches(lengths, self.config, self.seed, epoch)
            else:
                self._plans[key] = plan_shard_windows(lengths, self.shards[corpus], self.config, self.seed, epoch)
        return self._plans[key]

    def corpus_at(self, position: int) -> int:
        """Which corpus stream position `position` draws from: a weighted choice by a hash of (seed, position)."""
        if len(self.num_samples) == 1:
            return 0
        uniform = _splitmix64((self.seed * 0x9E3779B97F4A7C15 + position) & _MASK64) / 2.0**64
        return min(int(np.searchsorted(self.cumulative_weights, uniform, side="right")), len(self.num_samples) - 1)

    def take(self, state: StreamState) -> tuple[WorkItem, StreamState]:
        """The micro-batch at `state`'s position, and the state after it."""
        self._check(state)
        corpus = self.corpus_at(state.position)
        at = state.corpora[corpus]
        epoch, cursor = at.epoch, at.cursor
        plan = self.plan(corpus, epoch)
        while cursor >= len(plan):  # an epoch ends: the next one starts at its first batch
            epoch, cursor = epoch + 1, cursor - len(plan)
            plan = self.plan(corpus, epoch)
        corpora = list(state.corpora)
        corpora[corpus] = CorpusCursor(epoch, cursor + 1, at.utterances)
        after = StreamState(state.seed, state.position + 1, tuple(corpora))
        return WorkItem(state.position, corpus, epoch, cursor, plan[cursor], after), after

    def for_rank(self, rank: int, world_size: int, state: StreamState | None = None) -> Iterator[WorkItem]:
        """This rank's micro-batches from `state` on, forever; each carries the state after its micro-step."""
        return (item for _, item in self.for_ranks([rank], world_size, state))

    def for_ranks(
        self, ranks: Sequence[int], world_size: int, state: StreamState | None = None
    ) -> Iterator[tuple[int, WorkItem]]:
        """(rank, micro-batch) of each of `ranks` in turn from `state` on, forever: what the ranks of a node read,
        in the order they read it; each carries the state after its micro-step."""
        if not ranks or len(set(ranks)) < len(ranks) or not all(0 <= rank < world_size for rank in ranks):
            raise W2VError(f"ranks {list(ranks)}: expected distinct ranks of a world of {world_size}")
        state = self.initial_state() if state is None else state
        while True:
            taken = []
            for offset in range(world_size):
                item, state = self.take(state)
                if offset in ranks:
                    taken.append((offset, item))
            for rank, item in taken:
                yield rank, WorkItem(item.position, item.corpus, item.epoch, item.cursor, item.indices, state)

    def _check(self, state: StreamState) -> None:
        if state.seed != self.seed:
            raise W2VError(f"loader state: seed {state.seed} differs from this run's seed {self.seed}")
        if len(state.corpora) != len(self.num_samples):
            raise W2VError(
                f"loader state: saved with {len(state.corpora)} corpora, this run has {len(self.num_samples)}; "
                "resume with the same --shards"
            )


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
