"""Bring shards at an fsspec URL (s3://…) into a local cache, checked against the manifest, before training.

Each shard is downloaded to `NAME.part` (appending, so an interrupted staging resumes where it stopped),
checked against the manifest's size and sha256, and renamed into place; a shard that fails the check is
fetched once more from scratch, then refused. The manifest is written last, so a cache folder with a
manifest is complete. Shards the new manifest no longer names are removed. One stager per cache folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from w2v.errors import ShardError
from w2v.shards.manifest import MANIFEST_NAME, ShardEntry, manifest_from_json, write_text_atomic
from w2v.shards.table import sha256_file
from w2v.storage import is_url

BLOCK_BYTES = 8 << 20
VERIFIED_SUFFIX = ".sha256"


def default_cache_dir() -> Path:
    """Where shards are staged when no run folder owns them: $W2V_CACHE_DIR, else $XDG_CACHE_HOME/w2v/shards
    (~/.cache/w2v/shards). Each URL gets its own locked subfolder, so runs may share it."""
    if os.environ.get("W2V_CACHE_DIR"):
        return Path(os.environ["W2V_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "w2v" / "shards"


@dataclass(frozen=True)
class Staged:
    folder: Path
    fetched_bytes: int  # downloaded by this call (0 when the cache was complete)
    shards: int


def stage_shards(location: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> Staged:
    """A local folder with the shards of `location`: the folder itself, or a checked copy of a URL's shards."""
    if not is_url(location):
        return Staged(Path(location), 0, 0)
    fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
    root = root.rstrip("/")
    local = Path(cache_dir) / hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    with _exclusive(local):
        try:
            text = fs.cat_file(f"{root}/{MANIFEST_NAME}").decode()
        except FileNotFoundError:
            raise ShardError(
                f"{location}: no {MANIFEST_NAME} there; point --shards at a folder w2v prepare wrote"
            ) from None
        manifest = manifest_from_json(json.loads(text), location)
        fetched = 0
        for entry in manifest.shards:
            fetched += fetch_shard(fs, f"{root}/{entry.path}", local / entry.path, entry, location)
        write_text_atomic(local / MANIFEST_NAME, text)
        keep = {entry.path for entry in manifest.shards}
        for path in local.glob("*.arrow"):
            if path.name not in keep:
                path.unlink()
                path.with_name(path.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
        (local / "SOURCE").write_text(location + "\n")
    return Staged(local, fetched, len(manifest.shards))


def fetch_shard(fs: Any, remote: str, target: Path, entry: ShardEntry, location: str) -> int:
    """Make `target` a checked copy of `remote`; returns the bytes downloaded."""
    marker = target.with_name(target.name + VERIFIED_SUFFIX)
    if marker.exists() and marker.read_text().strip() == entry.sha256 and _size(target) == entry.bytes:
        return 0
    fetched = 0
    for attempt in range(2):
        part = target.with_name(target.name + ".part")
        if attempt > 0 or (part.exists() and part.stat().st_size > entry.bytes):
            part.unlink(missing_ok=True)
        fetched += _download(fs, remote, part)
        digest = sha256_file(part)
        if part.stat().st_size == entry.bytes and digest == entry.sha256:
            os.replace(part, target)
            marker.write_text(entry.sha256 + "\n")
            return fetched
    part.unlink(missing_ok=True)
    raise ShardError(
        f"{location}/{entry.path}: sha256 {digest[:12]}… differs from the manifest's {entry.sha256[:12]}… "
        "after fetching it twice; the remote shard is damaged: run w2v shards verify there, or prepare again"
    )


def _download(fs: Any, remote: str, part: Path) -> int:
    """Append what `part` lacks of `remote` to it; returns the bytes appended."""
    have = part.stat().st_size if part.exists() else 0
    fetched = 0
    with fs.open(remote, "rb", block_size=BLOCK_BYTES) as source, open(part, "ab") as sink:
        source.seek(have)
        while block := source.read(BLOCK_BYTES):
            sink.write(block)
            fetched += len(block)
        sink.flush()
        os.fsync(sink.fileno())
    return fetched


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Wait for any other process staging into the same cache folder (ranks of one node stage once)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
