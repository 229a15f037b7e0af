"""The training loader: this rank's planned micro-batches, read and collated by background workers.

The main process walks the stream (index arithmetic only) and hands each worker a WorkItem; workers read
the memory-mapped shards and collate; torch's DataLoader keeps `prefetch_batches` batches ready per worker
and pins them for an asynchronous copy to the GPU. Masks and negatives are not made here: they are drawn
on the training device (w2v.ssl.masking), where they cost least.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from w2v.data.collate import Batch, collate
from w2v.data.corpus import ShardCorpus
from w2v.data.plan import BatchConfig
from w2v.data.stream import BatchStream, StreamState, WorkItem
from w2v.data.streaming import CorpusCache
from w2v.errors import W2VError

logger = logging.getLogger("w2v.data")


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are fetched: worker processes, batches kept ready per worker, page-locked memory."""

    num_workers: int = 2
    prefetch_batches: int = 4
    pin_memory: bool | None = None  # None: when CUDA is available


class PlannedBatches(Dataset[Batch]):
    """A map-style dataset whose keys are WorkItems: reading one collates that micro-batch. With
    `close_shards`, the shards it mapped are let go after each (a streaming cache evicts them)."""

    def __init__(self, corpora: Sequence[ShardCorpus], config: BatchConfig, seed: int, close_shards: bool = False):
        self.corpora = list(corpora)
        self.config = config
        self.seed = seed
        self.close_shards = close_shards

    def __getitem__(self, item: WorkItem) -> Batch:
        # Crop windows depend on (seed, position) only: a resumed run reads the same audio.
        key = [self.seed, item.position] if item.pieces == 1 else [self.seed, item.position, item.piece]
        corpus = self.corpora[item.corpus]
        batch = collate(corpus, item.indices, self.config, np.random.default_rng(key))
        if self.close_shards:
            corpus.close_shards()
        return replace(
            batch,
            position=item.position,
            corpus=item.corpus,
            epoch=item.epoch,
            state_after=item.state_after.to_dict(),
            piece=item.piece,
            pieces=item.pieces,
        )

    def __len__(self) -> int:
        raise TypeError("a planned stream has no length")


class _Items:
    """This rank's WorkItems from a state on, at most `limit` planned micro-batches (None: forever), each read
    as up to `split` pieces; `node_items` are those of every rank in `node` (this one's among them)."""

    def __init__(self, stream: BatchStream, rank: int, world_size: int, state: StreamState, limit: int | None,
                 split: int, node: Sequence[int]) -> None:  # fmt: skip
        self.stream, self.rank, self.world_size, self.state = stream, rank, world_size, state
        self.limit, self.split, self.node = limit, split, node

    def __iter__(self) -> Iterator[WorkItem]:
        return (item for rank, item in self.node_items() if rank == self.rank)

    def node_items(self) -> Iterator[tuple[int, WorkItem]]:
        items = self.stream.for_ranks(self.node, self.world_size, self.state)
        for count, (rank, item) in enumerate(items):
            if self.limit is not None and count >= self.limit * len(self.node):
                return
            yield from ((rank, piece) for piece in item.split(self.split))


class _CachedItems:
    """WorkItems handed out once the shards they read are in the streaming cache (pinned until released)."""

    def __init__(self, items: _Items, corpora: Sequence[ShardCorpus], cache: CorpusCache) -> None:
        self.items, self.corpora, self.cache = items, corpora, cache
        self.readers: list[Generator[tuple[int, WorkItem], None, None]] = []

    def __iter__(self) -> Iterator[WorkItem]:
        """This rank's items; the cache sees the node's, so that the node's ranks keep the same shards."""

        def keys(ranked: tuple[int, WorkItem]) -> list[int]:
            item = ranked[1]
            return self.cache.keys(self.corpora[item.corpus], item.corpus, item.indices).tolist()

        def key(ranked: tuple[int, WorkItem]) -> tuple[int, int]:
            return ranked[1].position, ranked[1].piece

        def mine(ranked: tuple[int, WorkItem]) -> bool:
            return ranked[0] == self.items.rank

        reader = self.cache.cache.read(self.items.node_items(), keys, key, mine)
        self.readers.append(reader)
        return (item for _, item in reader)

    def close(self) -> None:
        """Release what the readers took (a loader dropped for a smaller split must not keep shards pinned)."""
        for reader in self.readers:
            reader.close()
        self.readers = []


class _Releasing:
    """The loader's batches; each one received lets the cache evict the shards it was read from."""

    def __init__(self, loader: DataLoader[Batch], items: _CachedItems) -> None:
        self.loader, self.items = loader, items

    def __iter__(self) -> Iterator[Batch]:
        try:
            for batch in self.loader:
                self.items.cache.release(batch)
                yield batch
        finally:
            self.items.close()


def check_sample_rates(corpora: Sequence[ShardCorpus], config: BatchConfig) -> None:
    for corpus in corpora:
        if corpus.sample_rate != config.sample_rate:
            raise W2VError(
                f"{corpus.folder}: shards are at {corpus.sample_rate} Hz, the batch config expects "
                f"{config.sample_rate} Hz; prepare the corpus at {config.sample_rate} Hz"
            )


def _adopt(stream: BatchStream, state: StreamState, rank: int) -> StreamState:
    adopted, changes = stream.adopt(state)
    for change in changes if rank == 0 else []:
        logger.info("%s", change)
    return adopted


def make_loader(
    corpora: Sequence[ShardCorpus],
    config: BatchConfig,
    seed: int,
    *,
    weights: Sequence[float] | None = None,
    rank: int = 0,
    world_size: int = 1,
    state: StreamState | None = None,
    max_batches: int | None = None,
    loader: LoaderConfig = LoaderConfig(),
    split: int = 1,
    cache: CorpusCache | None = None,
    node_ranks: Sequence[int] | None = None,
) -> Iterable[Batch]:
    """Batches for `rank` of `world_size`, from `state` (a checkpoint's) or the start, `max_batches` of them.
    With `cache`, the shards of streamed corpora are brought in as the plan reaches them: the plan of every
    rank in `node_ranks` (the ranks sharing the cache's folder, this one among them; None: this one only).

    `split` > 1 reads each planned micro-batch as that many pieces of consecutive rows (the out-of-memory
    guard's smaller micro-batches: the same utterances per update, in more, smaller forward passes)."""
    if split < 1:
        raise W2VError(f"loader: split must be at least 1, got {split}")
    check_sample_rates(corpora, config)
    stream = BatchStream([c.num_samples for c in corpora], config, seed, weights, [c.shard for c in corpora])
    start = stream.initial_state() if state is None else _adopt(stream, state, rank)
    pin = torch.cuda.is_available() if loader.pin_memory is None else loader.pin_memory
    workers = loader.num_workers
    node = [rank] if node_ranks is None or cache is None else sorted(set(node_ranks))
    if rank not in node:
        raise W2VError(f"loader: rank {rank} is not among the node's ranks {node}")
    items = _Items(stream, rank, world_size, start, max_batches, split, node)
    cached = _CachedItems(items, corpora, cache) if cache is not None else None
    batches: DataLoader[Batch] = DataLoader(
        PlannedBatches(corpora, config, seed, close_shards=cache is not None),
        batch_size=None,
        sampler=items if cached is None else cached,
        num_workers=workers,
        prefetch_factor=loader.prefetch_batches if workers > 0 else None,
        persistent_workers=False,
        pin_memory=pin,
    )
    return batches if cached is None else _Releasing(batches, cached)
