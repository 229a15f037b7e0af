"""The utterances of a shard folder, read zero-copy from memory-mapped shards: lengths up front, audio on demand.

Opening maps the folder's training index (w2v.shards.index: lengths, mean, std, places, held-out positions)
and opens no shard; a folder without one has those small columns read from each shard. The audio of
utterance i is an int16 numpy view into the shard's memory map; nothing is decoded or resampled at train
time. Shards are opened lazily in the process that reads them, so a corpus can be handed to DataLoader
workers, forked or spawned.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from w2v.errors import ManifestError, ShardError, W2VError
from w2v.shards.index import split_key, utterance_index
from w2v.shards.manifest import read_manifest
from w2v.shards.table import read_stream

__all__ = ["ShardCorpus", "split_held_out", "split_key"]


@dataclass(frozen=True)
class _OpenShard:
    values: list[np.ndarray]  # per record batch: the int16 samples of all its rows
    offsets: list[np.ndarray]  # per record batch: row boundaries into `values`


class ShardCorpus:
    """One prepared shard folder. Utterance i is row `row[i]` of shard `shard[i]`, in manifest order."""

    def __init__(self, folder: Path, shards_dir: Path | None = None) -> None:
        """`shards_dir`: where the shards are, when not beside the manifest (a streaming cache's)."""
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.sample_rate = manifest.sample_rate
        self.paths = [(shards_dir or self.folder) / entry.path for entry in manifest.shards]
        if not self.paths:
            raise ManifestError(f"{self.folder}: the manifest lists no shards; run w2v prepare on some audio first")
        index = utterance_index(self.folder, [entry.path for entry in manifest.shards], manifest.index)
        counts = np.bincount(index.shard, minlength=len(self.paths))
        for entry, path, count in zip(manifest.shards, self.paths, counts.tolist(), strict=True):
            if count != entry.rows:
                raise ShardError(f"{path}: {count} rows indexed, the manifest says {entry.rows}; run w2v shards verify")
        self.num_samples = index.num_samples
        self.mean = index.mean
        self.std = index.std
        self.shard = index.shard
        self.batch = index.batch
        self.row = index.row
        # Where each utterance's recording falls in [0, 1): a stable hash of its source (`split_key`), so that
        # a split by it keeps the pieces of one recording together and stays put as the corpus grows.
        self.source_position = index.source_position
        self._open: dict[int, _OpenShard] = {}
        self._pid = os.getpid()
        # Audio copied into memory (`loaded`): all samples, and each utterance's start and end in them.
        self._memory: np.ndarray | None = None
        self._memory_start: np.ndarray | None = None
        self._memory_end: np.ndarray | None = None

    def subset(self, indices: np.ndarray) -> ShardCorpus:
        """The same shards, holding only utterances `indices` (renumbered from 0)."""
        part = copy.copy(self)
        for name in ("num_samples", "mean", "std", "shard", "batch", "row", "source_position"):
            setattr(part, name, getattr(self, name)[indices])
        if self._memory_start is not None and self._memory_end is not None:
            part._memory_start, part._memory_end = self._memory_start[indices], self._memory_end[indices]
        part._open = {}
        return part

    def in_memory(self, indices: np.ndarray, memory: np.ndarray, ends: np.ndarray) -> ShardCorpus:
        """A subset of utterances `indices` whose audio is `memory` (int16): utterance k of the subset is
        memory[ends[k-1]:ends[k]]. It reads no shard, so its shards may go (a streaming cache's)."""
        part = self.subset(indices)
        ends = np.asarray(ends, dtype=np.int64)
        if len(ends) != len(indices) or (len(ends) and int(ends[-1]) != memory.size):
            raise W2VError(f"{self.folder}: {len(indices)} utterances do not match {len(ends)} ends in memory")
        starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
        if not np.array_equal(ends - starts, part.num_samples):
            raise W2VError(f"{self.folder}: the audio in memory differs in length from the index")
        part._memory, part._memory_start, part._memory_end = memory, starts, ends
        return part

    def close_shards(self) -> None:
        """Drop this process' maps of the shards (the next read maps them again): a shard evicted from a cache
        frees its disk once nothing maps it."""
        self._open = {}

    def __len__(self) -> int:
        return int(self.num_samples.size)

    @property
    def seconds(self) -> float:
        return float(self.num_samples.sum()) / self.sample_rate

    def audio(self, index: int) -> np.ndarray:
        """Utterance `index` as int16 samples: a view into the shard's memory map (do not write to it)."""
        if self._memory is not None and self._memory_start is not None and self._memory_end is not None:
            return self._memory[self._memory_start[index] : self._memory_end[index]]
        shard = self._shard(int(self.shard[index]))
        batch, row = int(self.batch[index]), int(self.row[index])
        offsets = shard.offsets[batch]
        return shard.values[batch][offsets[row] : offsets[row + 1]]

    def column(self, name: str) -> list[str | None]:
        """Column `name` (`id`, `source`, or a metadata column: text, speaker, label) of every utterance, in
        corpus order; None where unset or where a shard has no such column. Reads that column, never audio."""
        by_shard: dict[int, list[list[str | None]] | None] = {}
        values: list[str | None] = []
        for shard, batch, row in zip(self.shard.tolist(), self.batch.tolist(), self.row.tolist(), strict=True):
            if shard not in by_shard:
                table = _open(self.paths[shard])
                present = name in table.column_names
                by_shard[shard] = [c.to_pylist() for c in table.column(name).chunks] if present else None
            chunks = by_shard[shard]
            values.append(None if chunks is None else chunks[batch][row])
        return values

    def _shard(self, number: int) -> _OpenShard:
        if self._pid != os.getpid():  # a forked worker maps the files itself
            self._open, self._pid = {}, os.getpid()
        opened = self._open.get(number)
        if opened is None:
            audio = _open(self.paths[number]).column("audio")
            values, offsets = [], []
            for chunk in audio.chunks:
                if chunk.offset != 0:
                    raise ShardError(
                        f"{self.paths[number]}: a sliced audio column; re-run w2v prepare into a new folder"
                    )
                # A list array's offsets index into its whole values buffer: both are views of the map.
                offsets.append(chunk.offsets.to_numpy())
                values.append(chunk.values.to_numpy(zero_copy_only=True))
            opened = self._open[number] = _OpenShard(values, offsets)
        return opened

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def _open(path: Path) -> pa.Table:
    try:
        return read_stream(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ShardError(f"{path}: cannot be read as a shard ({error}); run w2v shards verify") from error


def split_held_out(corpus: ShardCorpus, share: float) -> tuple[ShardCorpus, ShardCorpus | None]:
    """(training, held-out): whole recordings whose source hash falls below `share` are held out."""
    if share <= 0:
        return corpus, None
    held = corpus.source_position < share
    if held.all():
        raise W2VError(f"{corpus.folder}: a held-out share of {share} takes every recording; lower val_share")
    if not held.any():
        return corpus, None
    return corpus.subset(np.flatnonzero(~held)), corpus.subset(np.flatnonzero(held))
