"""The utterances of a shard folder, read zero-copy from memory-mapped shards: lengths up front, audio on demand.

Opening reads only the small columns (lengths, mean, std). The audio of utterance i is an int16 numpy view
into the shard's memory map; nothing is decoded or resampled at train time. Shards are opened lazily in the
process that reads them, so a corpus can be handed to DataLoader workers, forked or spawned.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from w2v.errors import ManifestError, ShardError, W2VError
from w2v.shards.manifest import read_manifest
from w2v.shards.table import read_stream


@dataclass(frozen=True)
class _OpenShard:
    values: list[np.ndarray]  # per record batch: the int16 samples of all its rows
    offsets: list[np.ndarray]  # per record batch: row boundaries into `values`


class ShardCorpus:
    """One prepared shard folder. Utterance i is row `row[i]` of shard `shard[i]`, in manifest order."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.sample_rate = manifest.sample_rate
        self.paths = [self.folder / entry.path for entry in manifest.shards]
        if not self.paths:
            raise ManifestError(f"{self.folder}: the manifest lists no shards; run w2v prepare on some audio first")
        lengths, means, stds, shards, batches, sources = [], [], [], [], [], []
        rows: list[np.ndarray] = []
        for number, (path, entry) in enumerate(zip(self.paths, manifest.shards, strict=True)):
            table = _open(path)
            if table.num_rows != entry.rows:
                raise ShardError(
                    f"{path}: {table.num_rows} rows, the manifest says {entry.rows}; run w2v shards verify"
                )
            lengths.append(table.column("num_samples").to_numpy().astype(np.int64))
            means.append(table.column("mean").to_numpy().astype(np.float32))
            stds.append(table.column("std").to_numpy().astype(np.float32))
            sources.append(_source_positions(table.column("source").to_pylist()))
            shards.append(np.full(table.num_rows, number, dtype=np.int32))
            chunk_rows = [len(chunk) for chunk in table.column("audio").chunks]
            batches.append(np.repeat(np.arange(len(chunk_rows), dtype=np.int32), chunk_rows))
            rows.append(np.concatenate([np.arange(n, dtype=np.int32) for n in chunk_rows] or [np.zeros(0, np.int32)]))
        self.num_samples = np.concatenate(lengths)
        self.mean = np.concatenate(means)
        self.std = np.concatenate(stds)
        self.shard = np.concatenate(shards)
        self.batch = np.concatenate(batches)
        self.row = np.concatenate(rows).astype(np.int32)
        # Where each utterance's recording falls in [0, 1): a stable hash of its source (`split_key`), so that
        # a split by it keeps the pieces of one recording together and stays put as the corpus grows.
        self.source_position = np.concatenate(sources)
        self._open: dict[int, _OpenShard] = {}
        self._pid = os.getpid()

    def subset(self, indices: np.ndarray) -> ShardCorpus:
        """The same shards, holding only utterances `indices` (renumbered from 0)."""
        part = copy.copy(self)
        for name in ("num_samples", "mean", "std", "shard", "batch", "row", "source_position"):
            setattr(part, name, getattr(self, name)[indices])
        return part

    def __len__(self) -> int:
        return int(self.num_samples.size)

    @property
    def seconds(self) -> float:
        return float(self.num_samples.sum()) / self.sample_rate

    def audio(self, index: int) -> np.ndarray:
        """Utterance `index` as int16 samples: a view into the shard's memory map (do not write to it)."""
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


def split_key(source: str) -> str:
    """What the held-out split hashes of a source URI: its last two path parts ("episode12/seg_0001.wav").

    Not the whole URI: the same recordings prepared from another folder, disk or bucket split the same way.
    The parent folder keeps recordings of the same name in different folders apart."""
    path = source.split("://", 1)[-1].split("?", 1)[0].rstrip("/")
    return "/".join(path.split("/")[-2:])


def _source_positions(sources: list[str]) -> np.ndarray:
    positions = {
        s: int.from_bytes(hashlib.sha256(split_key(s).encode()).digest()[:8], "big") / 2.0**64 for s in set(sources)
    }
    return np.array([positions[s] for s in sources], dtype=np.float64)


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
