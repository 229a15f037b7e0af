"""One remote shard brought to local disk, checked, with the store's hiccups retried for a bounded time.

A transfer goes through w2v.data.staging.fetch_shard (NAME.part, size and sha256 against the manifest,
rename; a shard that differs is fetched once more, then refused). An error from the store is retried with
exponential backoff (0.5 s doubling to 30 s) until `retry_seconds` have passed; one about the local disk (full,
read-only) is not the store's fault and is not retried. Every failure ends in a one-line CacheError naming
the shard.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2v.data.staging import fetch_shard
from w2v.errors import ShardError, W2VError
from w2v.shards.manifest import StoredFile

logger = logging.getLogger("w2v.data")


class CacheError(W2VError):
    """The cache cannot go on: a shard that cannot be fetched, or a limit below what the reader holds."""


@dataclass(frozen=True)
class RemoteShard:
    """One shard the cache may hold: where it is (an fsspec filesystem and path) and where it goes."""

    fs: Any
    remote: str
    local: Path
    entry: StoredFile  # its size and sha256
    location: str  # the --shards location, for messages


def fetch_with_retries(shard: RemoteShard, retry_seconds: float) -> int:
    """Make `shard.local` a checked copy of the remote shard; returns the bytes downloaded. Raises CacheError."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.5
    name = f"{shard.location}/{shard.entry.path}"
    while True:
        try:
            return fetch_shard(shard.fs, shard.remote, shard.local, shard.entry, shard.location)
        except ShardError as error:  # damaged in the store: it was fetched twice already
            raise CacheError(str(error)) from error
        except OSError as error:
            if _local_problem(error, shard.local):
                raise CacheError(f"{shard.local}: cannot be written ({error})") from error
            if time.monotonic() + delay > deadline:
                message = f"{name}: could not be fetched for {retry_seconds:.0f} s ({type(error).__name__}: {error})"
                raise CacheError(message) from error
            logger.warning("%s: %s; trying again in %.1f s", name, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        except Exception as error:  # whatever else the store raised, the reader must hear of it
            raise CacheError(f"{name}: {type(error).__name__}: {error}") from error


def _local_problem(error: OSError, local: Path) -> bool:
    """Whether `error` is about the local disk (full, read-only, permissions) rather than the store."""
    return error.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) or (
        error.errno == errno.EACCES and not os.access(local.parent, os.W_OK)
    )
