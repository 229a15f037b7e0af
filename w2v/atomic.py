"""Files written whole or not at all on a local filesystem: a temporary name, fsync, rename, and the folder
fsynced when the name itself must survive a crash of the machine.

Every local write of a manifest, record, shard, index or checkpoint file goes through here. (Object stores
need none of this: an object appears whole once its upload completes; see w2v.shards.location.)
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WrittenFile:
    bytes: int
    sha256: str


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: temporary name, fsync, rename, fsync the folder."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Write a file whole or not at all: temporary name, fsync, rename, fsync the folder (without `sync`,
    whole or absent after a crash of the process, not of the machine)."""
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def write_buffer_atomic(data: Any, path: Path) -> WrittenFile:
    """Hash `data` (bytes or a buffer) and write it under a temporary name, fsync it and rename it to `path`
    (its folder is not fsynced: a caller that records the file fsyncs the folder once, before the record).

    Hashing, writing and fsync release the GIL, so a thread can run this while the caller works on.
    """
    view = memoryview(data)
    digest = hashlib.sha256(view).hexdigest()
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(view)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return WrittenFile(bytes=view.nbytes, sha256=digest)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    """A hidden name beside `path`, distinct per process and thread (a commit removes `.*.tmp-*` leftovers)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
