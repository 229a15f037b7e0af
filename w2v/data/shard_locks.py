"""Shard files that several caches share (the ranks of a node): one fetches, the others find it, none deletes
a file another holds.

Two fcntl locks per shard NAME, both released by the kernel when a process dies:
- NAME.lock, exclusive, is held while a cache looks at, fetches, adopts or deletes NAME: a cache that needs
  a shard another is downloading waits for that download, then finds the file there.
- NAME itself, shared, is held by every cache that counts NAME as cached. A cache that lets NAME go drops its
  own hold and deletes the file only if it can then take NAME exclusively (no other cache holds it).

A flock belongs to the open file, which a forked child (a DataLoader worker) shares: the child would keep the
lock after the parent let it go. Every descriptor holding one of these locks is closed in forked children.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from w2v.data.staging import PART_SUFFIX, VERIFIED_SUFFIX, checked_at_rest
from w2v.shards.manifest import StoredFile

LOCK_SUFFIX = ".lock"
LET_GO_ATTEMPTS = 5
logger = logging.getLogger("w2v.data")
_HELD: set[int] = set()  # descriptors holding a lock: closed in a forked child
_OPENING = threading.Lock()  # a fork waits for a descriptor being opened to be on record


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's descriptor keeps the lock
    _HELD.clear()
    _OPENING.release()


os.register_at_fork(before=_OPENING.acquire, after_in_parent=_OPENING.release, after_in_child=_close_in_child)


def open_locked(path: Path, operation: int, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """`path` opened and flocked with `operation` (LOCK_SH, LOCK_EX, | LOCK_NB); the descriptor is closed in
    forked children. Raises BlockingIOError (LOCK_NB, held elsewhere) with nothing left open."""
    with _OPENING:
        fd = os.open(path, flags, 0o644)
        _HELD.add(fd)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        release(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Close a descriptor from open_locked (its lock goes with it)."""
    with _OPENING:
        _HELD.discard(fd)
        os.close(fd)


def lock_path(local: Path) -> Path:
    return local.with_name(local.name + LOCK_SUFFIX)


@contextlib.contextmanager
def claimed(local: Path, wait: bool = True) -> Iterator[bool]:
    """Hold NAME.lock for the block (waiting for it, or not: then the block gets False when another holds it)."""
    try:
        fd = open_locked(lock_path(local), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        release(fd)


def hold(local: Path) -> int:
    """A shared hold on the shard file (call while NAME.lock is claimed); the descriptor keeps it."""
    return open_locked(local, fcntl.LOCK_SH, os.O_RDONLY)


def adopt(local: Path, entry: StoredFile, fits: bool) -> int | None:
    """A hold on a shard an earlier run left in the folder, checked (see checked_at_rest), when it `fits` in
    the cache; None when it is absent, damaged, being fetched by another cache, or does not fit (then it is
    deleted unless another cache holds it). A part of an interrupted transfer is removed."""
    with claimed(local, wait=False) as mine:
        if not mine:
            return None  # another cache of the folder is fetching it
        local.with_name(local.name + PART_SUFFIX).unlink(missing_ok=True)
        if not local.exists():
            local.with_name(local.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
            return None
        if fits and checked_at_rest(local, entry):
            return hold(local)
    let_go(local, None)
    return None


def let_go(local: Path, fd: int | None) -> bool:
    """Drop this cache's hold on the shard (`fd`, None: none held) and delete it, with its marker, when no other
    cache holds it and none is looking at it; True when it was deleted. Never blocks for long, never raises.

    Two caches letting the same shard go at once both see the other's hold; the one that looks last deletes:
    NAME.lock is tried again for a moment (each look holds it for a few system calls), not given up at once."""
    if fd is not None:
        release(fd)
    try:
        for attempt in range(LET_GO_ATTEMPTS):
            with claimed(local, wait=False) as mine:
                if mine:
                    return _delete_unheld(local)
            time.sleep(0.002 * (attempt + 1))
    except OSError as error:  # the lock file cannot be made (no descriptors, a full disk): the file stays
        logger.warning("%s: not deleted from the cache (%s)", local, error)
    return False  # another cache is adopting or fetching it: it is theirs now


def _delete_unheld(local: Path) -> bool:
    try:
        release(open_locked(local, fcntl.LOCK_EX | fcntl.LOCK_NB, os.O_RDONLY))
    except (FileNotFoundError, BlockingIOError):
        return False  # gone, or held by another cache
    local.unlink(missing_ok=True)
    local.with_name(local.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
    return True


def allow_descriptors(count: int) -> None:
    """Raise this process' limit on open files (the soft one, up to the hard one) so that `count` more fit: a
    cache keeps one open per shard it holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 1024  # what the rest of the process (CUDA, NCCL, loader workers' pipes) may use
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
