"""One writer per shard folder: a second run into the same --out stops at once instead of interleaving.

A local folder is locked with flock: the kernel drops the lock when its process dies, so a crash never
leaves it held. A folder at a URL has no such lock, so a run holds a lease there: a `.lock` object created
only if absent (a conditional put, decided by the store), renewed while the run lives, and taken over once
it has not been renewed for LEASE_SECONDS (its run died). Taking over and renewing are conditional puts too,
on the version (ETag) last seen: of two runs that find the same stale lease only one takes it, and a run
that paused past its lease never overwrites the lease another run took meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from w2v.errors import W2VError
from w2v.shards.location import Location

LOCK_NAME = ".lock"
logger = logging.getLogger("w2v.prepare")
LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0
# Stores whose fsspec implementation creates an object only if absent in one request (S3 If-None-Match).
ATOMIC_CREATE = {"s3", "s3a"}


class FolderBusy(W2VError):
    """Another process holds the folder's writer lock."""


@contextmanager
def exclusive_writer(out: Path | Location) -> Iterator[None]:
    """Hold the folder's writer lock (a local folder's flock, or a lease in an object store)."""
    place = Location.of(out)
    if place.is_local:
        with _flock(place.local):
            yield
    else:
        with _lease(place):
            yield


@contextmanager
def _flock(out: Path) -> Iterator[None]:
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


@contextmanager
def _lease(place: Location) -> Iterator[None]:
    token = uuid.uuid4().hex
    protocol = place.root.split("://", 1)[0]
    if protocol not in ATOMIC_CREATE:
        logger.warning(
            "%s: %s:// may not create objects atomically; the writer lease is best-effort", place.root, protocol
        )
    if not place.create_exclusive(LOCK_NAME, _lease_bytes(token)):
        _take_over_if_expired(place, token)
    stop, lost = threading.Event(), threading.Event()
    renewer = threading.Thread(target=_renew, args=(place, token, stop, lost), name="w2v-lease", daemon=True)
    renewer.start()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        renewer.join()
        if not lost.is_set():
            place.remove(LOCK_NAME)
        elif not failed:
            raise FolderBusy(
                f"{place.root}: this run's lease was taken over by another run while it ran (a pause over "
                f"{LEASE_SECONDS:.0f} s); check the folder with w2v shards verify before trusting it"
            )


def _take_over_if_expired(place: Location, token: str) -> None:
    """Replace a lease that ran out (its run died) with this run's, if no other run replaced it first.
    Raises FolderBusy when the lease is live, or when another run took it over first."""
    try:
        version = place.version(LOCK_NAME)  # before reading it: a lease renewed since then fails the put
        holder = _read_lease(place)
    except FileNotFoundError:
        version, holder = "", {}
    except OSError as error:
        raise FolderBusy(f"{place.root}: cannot read its writer lease ({error}); try again") from error
    age = time.time() - float(holder.get("renewed", 0.0)) if holder else LEASE_SECONDS  # released meanwhile
    if age < LEASE_SECONDS:
        raise FolderBusy(
            f"{place.root}: another w2v prepare (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"lease renewed {age:.0f} s ago) is writing this folder; wait for it or use another --out"
        )
    if holder:
        taken = place.replace_if_version(LOCK_NAME, _lease_bytes(token), version) is not None
    else:
        taken = place.create_exclusive(LOCK_NAME, _lease_bytes(token))
    if not taken:
        raise FolderBusy(f"{place.root}: another w2v prepare took over this folder's expired lease just now")


def _renew(place: Location, token: str, stop: threading.Event, lost: threading.Event) -> None:
    version: str | None = None
    while not stop.wait(RENEW_SECONDS):
        try:
            if version is None:
                try:
                    version = place.version(LOCK_NAME)
                except FileNotFoundError:  # removed by hand: put it back, unless another run made its own
                    if place.create_exclusive(LOCK_NAME, _lease_bytes(token)):
                        version = place.version(LOCK_NAME)
                    continue
                if _read_lease(place).get("token") != token:
                    lost.set()  # taken over after a pause longer than the lease: never overwrite another run's
                    return
            version = place.replace_if_version(LOCK_NAME, _lease_bytes(token), version)
            # None: the lease changed since this run last wrote it; read it again to tell a takeover from a
            # renewal whose reply was lost.
        except Exception as error:
            version = None
            logger.warning("%s: could not renew the writer lease (%s); trying again", place.root, error)


def _lease_bytes(token: str) -> bytes:
    holder = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}
    return json.dumps(holder).encode()


def _read_lease(place: Location) -> dict[str, Any]:
    """The lease's holder; {} when there is none. An unreadable lease is an error, not a missing one: a
    store's hiccup must never make a live lease look free."""
    try:
        data = json.loads(place.read_bytes(LOCK_NAME))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {"renewed": 0.0}  # not ours to read (torn, foreign): treated as expired
    return data if isinstance(data, dict) else {"renewed": 0.0}
