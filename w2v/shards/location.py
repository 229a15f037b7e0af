"""Where a shard folder lives, a local folder or an fsspec URL (s3://, gs://, az://, ...), and the few file
operations a prepare worker needs there, so a worker on another machine needs only the folder's URL.

A local folder keeps what only a local filesystem gives: files written under a temporary name, fsynced and
renamed into place, and a folder fsync before a record names them. In an object store an object appears
whole once its upload completes, so one put is the atomic write, and there is no folder to fsync.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from w2v.atomic import WrittenFile, fsync_dir, write_buffer_atomic, write_bytes_atomic
from w2v.errors import W2VError
from w2v.storage import is_url, without_credentials


@dataclass(frozen=True)
class Location:
    """A folder: `root` is a local path or a URL; `storage_options` are fsspec's (credentials come from the
    environment, as for sources)."""

    root: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Dask worker, into a task result) without credentials or the open filesystem: the
        receiving side has its own credentials, from its environment or a Secret block."""
        return {"root": self.root, "storage_options": without_credentials(self.storage_options)}

    @classmethod
    def of(cls, folder: str | Path | Location, storage_options: Mapping[str, Any] | None = None) -> Location:
        if isinstance(folder, Location):  # given options replace the folder's (credentials join inside a task)
            return (
                folder
                if storage_options is None
                else cls(folder.root, dict(storage_options) if not folder.is_local else {})
            )
        root = str(folder).rstrip("/") if is_url(str(folder)) else str(Path(folder))
        return cls(root, dict(storage_options or {}) if is_url(root) else {})

    @property
    def is_local(self) -> bool:
        return not is_url(self.root)

    @property
    def local(self) -> Path:
        """The folder as a local path (a URL has none)."""
        if not self.is_local:
            raise W2VError(f"{self.root}: a URL, where a local or shared folder is needed")
        return Path(self.root)

    def child(self, name: str) -> Location:
        return Location(self.url(name), self.storage_options)

    def url(self, name: str) -> str:
        """The path or URL of `name` in this folder, as messages and records name it."""
        return str(Path(self.root) / name) if self.is_local else f"{self.root}/{name}"

    def make(self) -> None:
        if self.is_local:
            self.local.mkdir(parents=True, exist_ok=True)  # an object store has no folders to make

    def write_bytes(self, name: str, data: bytes, sync: bool = True) -> None:
        """Write a file whole or not at all (locally: without `sync`, whole or absent after a crash of the
        process, not of the machine)."""
        if self.is_local:
            write_bytes_atomic(self.local / name, data, sync)
        else:
            self._fs.pipe_file(self._path(name), data)

    def write_hashed(self, name: str, data: Any) -> WrittenFile:
        """Write `data` (bytes or a buffer) whole or not at all, fsynced locally; returns its size and sha256.
        Hashing and writing release the GIL, so a thread can run this while its caller works on."""
        if self.is_local:
            return write_buffer_atomic(data, self.local / name)
        view = memoryview(data)
        digest = hashlib.sha256(view).hexdigest()
        self._fs.pipe_file(self._path(name), bytes(view))
        return WrittenFile(bytes=view.nbytes, sha256=digest)

    def read_bytes(self, name: str) -> bytes:
        if self.is_local:
            return (self.local / name).read_bytes()
        data: bytes = self._fs.cat_file(self._path(name))
        return data

    def size(self, name: str) -> int:
        """The size of `name`; FileNotFoundError when it is not there."""
        if self.is_local:
            return (self.local / name).stat().st_size
        return int(self._fs.size(self._path(name)))

    def names(self, pattern: str = "*") -> list[str]:
        """The names of the files directly in this folder that match `pattern` (fnmatch), sorted."""
        if self.is_local:
            folder = self.local
            return sorted(p.name for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
        try:
            listed = self._fs.ls(self._path(""), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        names = (os.path.basename(info["name"].rstrip("/")) for info in listed if info.get("type") != "directory")
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def exists(self, name: str) -> bool:
        return (self.local / name).exists() if self.is_local else bool(self._fs.exists(self._path(name)))

    def remove(self, name: str) -> None:
        """Delete `name`; one already gone is no error (a crash may have taken it half-way)."""
        try:
            if self.is_local:
                (self.local / name).unlink()
            else:
                self._fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        """Delete this folder and everything in it (a staging area)."""
        if self.is_local:
            shutil.rmtree(self.local, ignore_errors=True)
        elif self._fs.exists(self._path("")):
            self._fs.rm(self._path(""), recursive=True)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create `name` holding `data` unless it exists; False when it does (a lock). In a store this is a
        conditional put (S3's If-None-Match), which the store decides, not a check then a write."""
        if self.is_local:
            try:
                with open(self.local / name, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
            return True
        try:
            self._fs.pipe_file(self._path(name), data, mode="create")
        except FileExistsError:
            return False
        return True

    def version(self, name: str) -> str:
        """The store's version tag (ETag) of object `name`, asked of the store now (no cached listing).
        Raises FileNotFoundError when it is absent; store only."""
        info = self._fs.info(self._path(name), refresh=True)
        return str(info.get("ETag") or info.get("etag") or "")

    def replace_if_version(self, name: str, data: bytes, version: str) -> str | None:
        """Replace object `name` with `data` only if it is still at `version` (S3's If-Match: the store decides,
        so of two writers holding the same version one wins); returns the new version, or None when the object
        has changed or gone. Store only."""
        try:
            reply = self._fs.pipe_file(self._path(name), data, IfMatch=version)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.EINVAL:  # s3fs's spelling of 412 Precondition Failed
                return None
            raise
        return str((reply or {}).get("ETag") or self.version(name))

    def read_stream(self, name: str) -> pa.Table:
        """An Arrow IPC stream file (a shard): mapped from a local disk, read whole from a store."""
        if self.is_local:
            return pa.ipc.open_stream(pa.memory_map(str(self.local / name), "r")).read_all()
        return pa.ipc.open_stream(pa.py_buffer(self.read_bytes(name))).read_all()

    def read_ipc_file(self, name: str) -> pa.Table:
        """An Arrow IPC file (an index file): mapped from a local disk, read whole from a store."""
        if self.is_local:
            return pa.ipc.open_file(pa.memory_map(str(self.local / name), "r")).read_all()
        return pa.ipc.open_file(pa.py_buffer(self.read_bytes(name))).read_all()

    def read_parquet(self, name: str, **options: Any) -> pa.Table:
        """A Parquet file (a source table); in a store, only the row groups and columns asked for are read."""
        if self.is_local:
            return pq.read_table(str(self.local / name), memory_map=True, **options)
        return pq.read_table(self._path(name), filesystem=self._fs, **options)

    def sync(self) -> None:
        """Make the names of the files written here durable (a local folder's fsync; nothing in a store)."""
        if self.is_local:
            fsync_dir(self.local)

    @functools.cached_property
    def _store(self) -> tuple[fsspec.AbstractFileSystem, str]:
        # No listings cache: workers in other processes write the files this one checks for.
        return fsspec.core.url_to_fs(self.root, **{"use_listings_cache": False, **self.storage_options})

    @property
    def _fs(self) -> fsspec.AbstractFileSystem:
        return self._store[0]

    def _path(self, name: str) -> str:
        root = self._store[1].rstrip("/")
        return f"{root}/{name}" if name else root
