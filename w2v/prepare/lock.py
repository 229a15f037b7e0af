"""One writer per shard folder: a second run into the same --out stops at once instead of interleaving."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from w2v.errors import W2VError

LOCK_NAME = ".lock"


class FolderBusy(W2VError):
    """Another process holds the folder's writer lock."""


@contextmanager
def exclusive_writer(out: Path) -> Iterator[None]:
    """Hold the folder's writer lock; the kernel drops it if the process dies, so a crash never leaves it held."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(
                f"{out}: another w2v prepare (pid {holder}) is writing this folder; wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
