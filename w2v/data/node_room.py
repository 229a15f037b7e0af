"""The disk budget the caches of one node keep together: every rank counts the whole limit for the shards it
holds, and a shard new to the node's disk is fetched only when the shards there, counted once however many
ranks hold them, leave room for it.

The ranks of a node read the same shuffle windows at the same time (the plan deals each window's micro-batches
round-robin), so they hold nearly the same shards: sharing the room, the node caches `limit` bytes of distinct
shards where a share of limit / ranks each would have cached a rank's share. What is on disk is counted from the
folder itself (a shard, or its part being fetched, at the manifest's size: one listing per folder), under one
lock for the node, so a rank that dies leaves no stale count behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from w2v.data.shard_locks import open_locked, release
from w2v.data.staging import PART_SUFFIX

ROOM_LOCK = ".room.lock"


@dataclass(frozen=True)
class NodeRoom:
    """Shards `sizes` (local path -> bytes) that the node's caches keep within `limit_bytes` together; `lock`
    serializes the caches' reservations."""

    lock: Path
    sizes: dict[Path, int]
    limit_bytes: int
    _by_folder: dict[Path, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_folder: dict[Path, dict[str, int]] = {}
        for local, size in self.sizes.items():
            by_folder.setdefault(local.parent, {})[local.name] = size
        object.__setattr__(self, "_by_folder", by_folder)

    @classmethod
    def over(cls, shards: Sequence[tuple[Path, int]], limit_bytes: int) -> NodeRoom:
        """The room for shards (local path, bytes); its lock lives beside the first."""
        sizes = dict(shards)
        folder = next(iter(sizes)).parent if sizes else Path(".")
        return cls(folder / ROOM_LOCK, sizes, limit_bytes)

    def on_disk(self) -> int:
        """The bytes of the shards in the folders, each counted at its full size once its transfer has begun."""
        total = 0
        for folder, sizes in self._by_folder.items():
            try:
                with os.scandir(folder) as entries:
                    present = {entry.name.removesuffix(PART_SUFFIX) for entry in entries}
            except FileNotFoundError:
                continue
            total += sum(sizes[name] for name in present if name in sizes)
        return total

    def reserve(self, local: Path, allowed_bytes: int) -> bool:
        """Begin `local`'s transfer (an empty part file, which later counts it) when the shards on disk and it fit
        in `allowed_bytes`; False (nothing done) when they do not. Call while holding the shard's own lock."""
        fd = open_locked(self.lock, fcntl.LOCK_EX)  # closed in a forked loader worker, which must not keep it
        try:
            counted = _exists(_part(local)) or _exists(local)  # a transfer left unfinished, a damaged copy
            if not counted and self.on_disk() + self.sizes[local] > allowed_bytes:
                return False
            _part(local).touch()
            return True
        finally:
            release(fd)


def _part(local: Path) -> Path:
    return local.with_name(local.name + PART_SUFFIX)


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True
