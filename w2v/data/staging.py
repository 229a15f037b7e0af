"""Shards at an fsspec URL (s3://…) brought into a local cache, and local shard folders, checked against
their manifest before training reads them.

A local folder is checked in place (w2v.data.integrity: size and sha256, once per file state). Each remote
shard is downloaded to `NAME.part` (appending, so an interrupted staging resumes where it stopped),
checked against the manifest's size and sha256, and renamed into place; a shard that fails the check is
fetched once more from scratch, then refused. The manifest is written last, so a cache folder with a
manifest is complete. Shards the new manifest no longer names are removed. One stager per cache folder.
Shards hashed on arrival are recorded as checked; those an earlier staging fetched are checked at rest like
a local folder's (free when on record), and one found damaged is fetched again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from w2v.atomic import write_text_atomic
from w2v.data.integrity import check_local_shards, check_shards, exclusive, remember_checked
from w2v.errors import ShardError
from w2v.shards.location import Location
from w2v.shards.manifest import MANIFEST_NAME, Manifest, StoredFile, manifest_from_json
from w2v.shards.table import sha256_file
from w2v.storage import is_url

logger = logging.getLogger("w2v.data")
BLOCK_BYTES = 8 << 20
VERIFIED_SUFFIX = ".sha256"
PART_SUFFIX = ".part"  # a transfer under way


def default_cache_dir() -> Path:
    """Where shards are staged when no run folder owns them: $W2V_CACHE_DIR, else $XDG_CACHE_HOME/w2v/shards
    (~/.cache/w2v/shards). Each URL gets its own locked subfolder, so runs may share it."""
    if os.environ.get("W2V_CACHE_DIR"):
        return Path(os.environ["W2V_CACHE_DIR"])
    return _user_cache() / "shards"


def default_records_dir() -> Path:
    """Where the records of checked shard folders are kept: $W2V_CACHE_DIR/verified, else
    $XDG_CACHE_HOME/w2v/verified (~/.cache/w2v/verified)."""
    if os.environ.get("W2V_CACHE_DIR"):
        return Path(os.environ["W2V_CACHE_DIR"]) / "verified"
    return _user_cache() / "verified"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "w2v"


@dataclass(frozen=True)
class Staged:
    folder: Path
    fetched_bytes: int  # downloaded by this call (0 when the cache was complete)
    shards: int  # staged from a URL (0 for a local folder)
    hashed_bytes: int = 0  # hashed at rest by this call to check shards not yet on record (not the downloads)


def stage_shards(
    location: str,
    cache_dir: Path,
    storage_options: dict[str, Any] | None = None,
    *,
    verify: bool = True,
    records_dir: Path | None = None,
) -> Staged:
    """A local folder with the shards of `location`: the folder itself, or a copy of a URL's shards, checked
    against the manifest unless `verify` is False (downloads are checked always). Raises ShardError naming
    the first shard that differs."""
    records = records_dir or default_records_dir()
    if not is_url(location):
        folder = Path(location)
        hashed = check_local_shards(folder, records).hashed_bytes if verify else 0
        return Staged(folder, 0, 0, hashed)
    fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
    root = root.rstrip("/")
    local = cache_folder(cache_dir, location)
    hashed = 0
    with exclusive(local / ".lock"):
        text, manifest = remote_manifest(fs, root, location, storage_options)
        if verify:  # shards fetched by an earlier staging: fetch again any damaged since
            on_disk = [entry for entry in manifest.training_files if _marked(local / entry.path, entry)]
            at_rest = check_shards(local, on_disk, records)
            hashed = at_rest.hashed_bytes
            for name, problem in zip(at_rest.damaged, at_rest.problems, strict=True):
                logger.warning("%s; fetching it again from %s", problem, location)
                (local / (name + VERIFIED_SUFFIX)).unlink(missing_ok=True)
        arriving = [entry for entry in manifest.training_files if not _marked(local / entry.path, entry)]
        fetched = 0
        for entry in manifest.training_files:
            fetched += fetch_shard(fs, f"{root}/{entry.path}", local / entry.path, entry, location)
        write_text_atomic(local / MANIFEST_NAME, text)
        remember_checked(local, arriving, records)
        keep = {entry.path for entry in manifest.training_files}
        for path in [*local.glob("*.arrow"), *local.glob("*.parquet")]:
            if path.name not in keep:
                path.unlink()
                path.with_name(path.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
        (local / "SOURCE").write_text(location + "\n")
    return Staged(local, fetched, len(manifest.shards), hashed)


def cache_folder(cache_dir: Path, location: str) -> Path:
    """The folder (made if absent) in `cache_dir` that holds what is fetched from URL `location`."""
    folder = Path(cache_dir) / hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remote_manifest(fs: Any, root: str, location: str, storage_options: dict[str, Any] | None) -> tuple[str, Manifest]:
    """The manifest at `location` (fsspec `fs`, path `root`): its text and parsed form, or a one-line ShardError."""
    try:
        text = fs.cat_file(f"{root}/{MANIFEST_NAME}").decode()
    except FileNotFoundError:
        raise ShardError(
            f"{location}: no {MANIFEST_NAME} there; point --shards at a folder w2v prepare wrote"
        ) from None
    return text, manifest_from_json(json.loads(text), location, Location.of(location, storage_options))


def fetch_shard(fs: Any, remote: str, target: Path, entry: StoredFile, location: str) -> int:
    """Make `target` a checked copy of `remote`; returns the bytes downloaded."""
    if _marked(target, entry):
        return 0
    fetched = 0
    for attempt in range(2):
        part = target.with_name(target.name + PART_SUFFIX)
        if attempt > 0 or (part.exists() and part.stat().st_size > entry.bytes):
            part.unlink(missing_ok=True)
        fetched += _download(fs, remote, part)
        digest = sha256_file(part)
        if part.stat().st_size == entry.bytes and digest == entry.sha256:
            os.replace(part, target)
            write_marker(target, entry.sha256)
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


def write_marker(target: Path, sha256: str) -> None:
    """Record beside `target` that it was checked: its sha256 and the file state it had then (size, st_mtime_ns,
    st_ctime_ns; any write or rename since changes the ctime, which nobody can set)."""
    stat = target.stat()
    marker = target.with_name(target.name + VERIFIED_SUFFIX)
    marker.write_text(f"{sha256} {stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns}\n")


def marker_state(target: Path, entry: StoredFile) -> str:
    """'unchanged' when `target`'s marker names the manifest's sha256 and the file is in the state it was
    checked in; 'changed' when the marker names that sha256 but the file was written since (or the marker
    predates file states): its bytes must be hashed again before they are trusted; 'absent' otherwise."""
    marker = target.with_name(target.name + VERIFIED_SUFFIX)
    try:
        fields = marker.read_text().split()
        stat = target.stat()
    except OSError:
        return "absent"
    if not fields or fields[0] != entry.sha256 or stat.st_size != entry.bytes:
        return "absent"
    state = [str(stat.st_size), str(stat.st_mtime_ns), str(stat.st_ctime_ns)]
    return "unchanged" if fields[1:] == state else "changed"


def checked_at_rest(local: Path, entry: StoredFile) -> bool:
    """Whether a cached shard can be read as it is: checked on arrival and unchanged since, or hashed again now
    and found to match the manifest (its marker then records the new state)."""
    state = marker_state(local, entry)
    if state != "changed":
        return state == "unchanged"
    if sha256_file(local) != entry.sha256:
        logger.warning("%s: changed on disk since it was fetched and no longer matches its sha256; fetching it "
                       "again", local)  # fmt: skip
        return False
    write_marker(local, entry.sha256)
    return True


def _marked(target: Path, entry: StoredFile) -> bool:
    """Whether an earlier staging fetched and checked `target` (its marker names the manifest's sha256; a
    staging with `verify` then checks the file at rest)."""
    return marker_state(target, entry) != "absent"
