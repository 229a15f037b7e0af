"""Local shard folders checked against their manifest (size, then sha256) before anything reads them, and a
record of what was checked, so an unchanged folder is hashed once, not at every start.

Decisions:
- A shard counts as checked while its (size, st_mtime_ns, st_ctime_ns) and the sha256 the manifest expects
  equal the record's entry, written only after the shard hashed to that sha256. ctime is in the key because
  nobody sets it: a byte flipped and the mtime put back (`touch -d`, `cp -p`, `rsync -t`) still changes it.
  What no stat can see (as for make and rsync): a same-size change within one timestamp tick (a few ms) of
  the file's previous change; shards are written once and renamed into place, so that does not happen.
- The record is one JSON file per folder, named by a hash of the folder's real path, in the user's cache
  (`records_dir`: $W2V_CACHE_DIR/verified, else ~/.cache/w2v/verified), never in the folder: shard folders
  may be read-only mounts, and a record inside a copied folder would vouch for the copy. It is written
  atomically; one that cannot be read is treated as absent, one that cannot be written costs a warning.
- The ranks of a node start together: the first takes an fcntl lock beside the record and checks, the others
  wait on the lock and then find every shard in the record.
- Shards are hashed by a thread pool (hashlib releases the GIL on 8 MiB blocks): one thread per usable core,
  at most DEFAULT_MAX_WORKERS streams asked of one disk. On this 2-core VM, from the page cache, 2 threads
  hash 1.8× as fast as one and 3 or 4 no faster; from disk, the disk is the limit (benchmarks/verify.py).
- Shards staged from a URL are hashed as they arrive (w2v.data.staging); staging records them here, so the
  cache folder is not hashed again when training opens it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from w2v.atomic import write_text_atomic
from w2v.errors import ShardError
from w2v.shards.manifest import StoredFile, read_manifest
from w2v.shards.verify import file_problem

logger = logging.getLogger("w2v.data")
RECORD_FORMAT = "w2v-checked-shards"
RECORD_VERSION = 1
DEFAULT_MAX_WORKERS = 8

# (bytes, st_mtime_ns, st_ctime_ns, sha256 the manifest expects)
FileState = tuple[int, int, int, str]


@dataclass(frozen=True)
class Checked:
    shards: int  # asked about
    hashed: int  # hashed by this call; the others matched the record
    hashed_bytes: int
    seconds: float
    damaged: tuple[str, ...] = ()  # the paths (relative, in manifest order) of shards that differ
    problems: tuple[str, ...] = ()  # one line for each, naming the file and what differs


def check_local_shards(folder: Path, records_dir: Path, workers: int | None = None) -> Checked:
    """Check every shard of `folder` that the record does not vouch for; raises ShardError (one line naming
    the first bad shard and the remedy) when any is missing, of another size or of another sha256."""
    checked = check_shards(folder, read_manifest(folder).training_files, records_dir, workers)
    if checked.problems:
        more = f" (and {len(checked.problems) - 1} more shards)" if len(checked.problems) > 1 else ""
        raise ShardError(
            f"{checked.problems[0]}{more}; stopped before reading any shard: run w2v shards verify {folder}, "
            "then restore the shard or prepare the folder again"
        )
    return checked


def check_shards(folder: Path, entries: Sequence[StoredFile], records_dir: Path, workers: int | None = None) -> Checked:
    """Check the shards `entries` of `folder` that the record does not vouch for (in parallel), and record
    those that match; the others are in `Checked.problems`."""
    started = time.perf_counter()
    folder = Path(folder)
    with _locked_record(folder, records_dir) as record:
        known = record.read()
        unknown: list[tuple[StoredFile, FileState | None]] = []
        for entry in entries:
            state = file_state(folder / entry.path, entry.sha256)
            if state is None or known.get(entry.path) != state:
                unknown.append((entry, state))
        hashed_bytes = sum(e.bytes for e, s in unknown if s is not None and s[0] == e.bytes)
        problems: list[str | None] = []
        if unknown:
            logger.info(
                "%s: checking %d shards (%.2f GB) against the manifest", folder, len(unknown), hashed_bytes / 1e9
            )
            with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
                problems = list(pool.map(lambda item: _problem(folder, item[0]), unknown))
        passed = {e.path: s for (e, s), problem in zip(unknown, problems, strict=True) if problem is None and s}
        # Shards that passed are remembered even when another failed; those that failed are forgotten.
        checked_now, asked = {e.path for e, _ in unknown}, {e.path for e in entries}
        kept = {n: s for n, s in known.items() if n not in checked_now and (n in asked or (folder / n).exists())}
        if {**kept, **passed} != known:
            record.write({**kept, **passed})
    seconds = time.perf_counter() - started
    damaged = [(e.path, problem) for (e, _), problem in zip(unknown, problems, strict=True) if problem is not None]
    if unknown and not damaged:
        logger.info("%s: %d shards match (%.2f GB/s)", folder, len(unknown), hashed_bytes / 1e9 / max(seconds, 1e-9))
    return Checked(
        shards=len(entries),
        hashed=len(unknown),
        hashed_bytes=hashed_bytes,
        seconds=seconds,
        damaged=tuple(path for path, _ in damaged),
        problems=tuple(problem for _, problem in damaged),
    )


def remember_checked(folder: Path, entries: Iterable[StoredFile], records_dir: Path) -> None:
    """Record shards of `folder` that were just hashed to their manifest sha256 by someone else (staging)."""
    with _locked_record(folder, records_dir) as record:
        states = {e.path: file_state(Path(folder) / e.path, e.sha256) for e in entries}
        record.write({**record.read(), **{path: s for path, s in states.items() if s is not None}})


def _problem(folder: Path, entry: StoredFile) -> str | None:
    try:
        return file_problem(folder, entry.path, entry.bytes, entry.sha256)
    except OSError as error:  # unreadable (permissions, I/O error): a problem to name, not a traceback
        return f"{folder / entry.path}: cannot be read ({error.strerror or error})"


def file_state(path: Path, sha256: str) -> FileState | None:
    try:
        stat = path.stat()
    except OSError:  # missing, or not reachable: hashing it then says which
        return None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, sha256)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), DEFAULT_MAX_WORKERS))


def record_path(folder: Path, records_dir: Path) -> Path:
    real = os.path.realpath(folder)
    return Path(records_dir) / f"{hashlib.sha256(real.encode()).hexdigest()[:24]}.json"


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an fcntl lock on the file `lock` (made if absent); other processes wait for it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Record:
    path: Path
    folder: str  # real path
    writable: bool

    def read(self) -> dict[str, FileState]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != RECORD_FORMAT or data.get("version") != RECORD_VERSION:
                return {}
            if data.get("folder") != self.folder:
                return {}
            return {name: (int(s[0]), int(s[1]), int(s[2]), str(s[3])) for name, s in data["shards"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            logger.warning("%s: unreadable record of checked shards (%s); checking the shards again", self.path, error)
            return {}

    def write(self, shards: dict[str, FileState]) -> None:
        if not self.writable:
            return
        data = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "folder": self.folder, "shards": shards}
        try:
            write_text_atomic(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as error:
            logger.warning(
                "%s: cannot record the checked shards (%s); the next start checks them again", self.path, error
            )


@contextmanager
def _locked_record(folder: Path, records_dir: Path) -> Iterator[_Record]:
    path = record_path(folder, records_dir)
    with ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive(path.with_suffix(".lock")))
            writable = True
        except OSError as error:
            logger.warning("%s: cannot keep a record of checked shards (%s); checking every shard", path.parent, error)
            writable = False
        yield _Record(path, os.path.realpath(folder), writable)
