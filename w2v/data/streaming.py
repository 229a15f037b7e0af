"""Corpora read from an fsspec URL through a bounded local cache instead of a whole local copy.

Opening a URL fetches only what the planner needs (the manifest, its shard list files and the training
index: a few bytes per utterance), each checked against the manifest, into CACHE/<hash of the URL>/; the
shards themselves come later, as the batch plan asks for them, into that folder's `shards/`, which the ranks
of a node share (w2v.data.shard_locks, w2v.data.node_room): a shard one rank fetched is found there by the
others, none deletes a shard another still holds, and together they keep within the limit, each shard counted
once. The manifest is written last, so a folder with a manifest holds complete metadata.

`--cache-limit` is bytes (`500G`, `2.5TB`, `800000000`) or a share of the free disk (`10%`); the default,
`auto`, takes half the free disk, or all the corpus when that is less: a corpus that fits is fetched once
and read locally from then on, one that does not streams in the plan's order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from w2v.atomic import write_text_atomic
from w2v.data.collate import Batch
from w2v.data.corpus import ShardCorpus
from w2v.data.integrity import exclusive
from w2v.data.node_room import ROOM_LOCK, NodeRoom
from w2v.data.shard_cache import CacheStats, RemoteShard, ShardCache
from w2v.data.shard_locks import LOCK_SUFFIX
from w2v.data.staging import PART_SUFFIX, VERIFIED_SUFFIX, cache_folder, fetch_shard, remote_manifest
from w2v.errors import ShardError, W2VError
from w2v.shards.manifest import MANIFEST_NAME, StoredFile

DEFAULT_CACHE_LIMIT = "auto"
AUTO_SHARE_OF_FREE_DISK = 0.5
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


@dataclass(frozen=True)
class CacheLimit:
    """A cache size: `bytes`, or `share` of the free disk, or (neither) auto."""

    bytes: int | None = None
    share: float | None = None

    def resolve(self, free_bytes: int, corpus_bytes: int) -> int:
        """The limit in bytes, given the disk's free bytes and the corpus' shard bytes."""
        if self.bytes is not None:
            return self.bytes
        if self.share is not None:
            return int(self.share * free_bytes)
        return min(corpus_bytes, int(AUTO_SHARE_OF_FREE_DISK * free_bytes))


def parse_cache_limit(text: str) -> CacheLimit:
    """'auto', '10%', '500G', '2.5TB', '1GiB' or a number of bytes; anything else raises W2VError."""
    value = text.strip().upper()
    if value == "AUTO":
        return CacheLimit()
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", value):
        share = float(match.group(1)) / 100
        if not 0 < share <= 1:
            raise W2VError(f"--cache-limit {text}: a share of the free disk must be in (0%, 100%]")
        return CacheLimit(share=share)
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]I?B?|B)?", value):
        limit = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
        if limit <= 0:
            raise W2VError(f"--cache-limit {text}: must be more than 0 bytes")
        return CacheLimit(bytes=limit)
    raise W2VError(f"--cache-limit {text}: expected bytes (500G, 2.5TB, 800000000), a share (10%) or auto")


@dataclass(frozen=True)
class StreamedFolder:
    """A remote shard folder's metadata, local: `folder` opens as a ShardCorpus whose shards live in `shards`
    (present only while cached)."""

    location: str
    folder: Path
    shards_dir: Path
    remote: tuple[RemoteShard, ...]

    @property
    def shard_bytes(self) -> int:
        return sum(shard.entry.bytes for shard in self.remote)


def open_streamed(location: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> StreamedFolder:
    """Fetch (or find) the metadata of the shard folder at URL `location` into the cache; no shard is fetched.
    Raises ShardError when the URL holds no manifest or a metadata file differs from it."""
    fs, root = fsspec.core.url_to_fs(location, **bounded_requests(location, storage_options))
    root = root.rstrip("/")
    folder = cache_folder(cache_dir, location)
    with exclusive(folder / ".metadata.lock"):
        text, manifest = remote_manifest(fs, root, location, storage_options)
        metadata: list[StoredFile] = [*manifest.shard_tables, *manifest.index]
        for entry in metadata:
            fetch_shard(fs, f"{root}/{entry.path}", folder / entry.path, entry, location)
        if not manifest.index or sum(e.rows for e in manifest.index) != sum(e.rows for e in manifest.shards):
            raise ShardError(
                f"{location}: its shards are not all indexed (a folder written before the training index); "
                "run w2v prepare on it again to index it, or copy it to a local folder"
            )
        write_text_atomic(folder / MANIFEST_NAME, text)
        (folder / "SOURCE").write_text(location + "\n")
        for legacy in folder.glob("shards-r*"):  # one folder per rank, before the ranks of a node shared one
            shutil.rmtree(legacy, ignore_errors=True)
    shards_dir = folder / "shards"
    shards_dir.mkdir(exist_ok=True)
    remote = tuple(
        RemoteShard(fs, f"{root}/{entry.path}", shards_dir / entry.path, entry, location) for entry in manifest.shards
    )
    return StreamedFolder(location, folder, shards_dir, remote)


# botocore's defaults wait 60 s to connect and read, and retry within each call: a bucket that stops answering
# could hold one attempt for minutes, past the cache's retry time. Bounded calls leave the retrying to it.
S3_REQUEST_BOUNDS = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


def bounded_requests(location: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """`storage_options`, with S3 calls bounded in time (S3_REQUEST_BOUNDS) unless they set config_kwargs."""
    options = dict(storage_options or {})
    if location.startswith(("s3://", "s3a://")) and "config_kwargs" not in options:
        options["config_kwargs"] = S3_REQUEST_BOUNDS
    return options


class CorpusCache:
    """The cache every streamed corpus of a run shares: shard `s` of corpus `k` is key offsets[k] + s."""

    def __init__(self, folders: list[StreamedFolder | None], cache: ShardCache, locks: list[int]) -> None:
        """`locks`: the descriptors holding each streamed folder's shard lock (closed by `close`)."""
        self.cache = cache
        sizes = [len(f.remote) if f is not None else 0 for f in folders]
        self.offsets = np.concatenate(([0], np.cumsum(sizes)))[:-1].astype(np.int64)
        self.streamed = [f is not None for f in folders]
        self._locks = locks
        self._last = CacheStats()

    def keys(self, corpus: ShardCorpus, k: int, indices: np.ndarray) -> np.ndarray:
        """The cache keys of the shards utterances `indices` of corpus `k` read (none for a local corpus)."""
        if not self.streamed[k]:
            return np.zeros(0, dtype=np.int64)
        return np.unique(corpus.shard[indices]).astype(np.int64) + self.offsets[k]

    def interval_record(self) -> dict[str, float]:
        """The cache's figures since the last call, for a log record (and TensorBoard)."""
        now = self.cache.stats()
        since = now.minus(self._last)
        self._last = now
        return {
            "cache_hit_rate": since.hit_rate,
            "cache_reads": float(since.accesses),
            "cache_fetched_bytes": float(since.fetched_bytes),
            "cache_wait_seconds": since.wait_seconds,
            "cache_bytes": float(self.cache.room.on_disk() if self.cache.room else self.cache.bytes_on_disk()),
            "cache_limit_bytes": float(self.cache.limit_bytes),
        }

    def release(self, batch: Batch) -> None:
        self.cache.release((batch.position, batch.piece))

    def close(self) -> None:
        self.cache.close()
        for fd in self._locks:
            os.close(fd)
        self._locks = []


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _hold(lock: Path) -> int:
    """Hold an fcntl lock on `lock` for as long as the returned descriptor is open; another process holding
    it means another run reads this cache folder: refused (two runs would evict each other's shards)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise W2VError(
            f"{lock.parent}: another run is reading shards through this cache folder; give this run its own --cache-dir"
        ) from None
    return fd


@dataclass(frozen=True)
class StreamingOptions:
    """How remote shards are streamed: the cache's size, its eviction policy, transfers at once, and how long a
    failing store is retried before the run stops."""

    limit: CacheLimit = CacheLimit()
    policy: str = "plan"
    max_transfers: int = 4
    retry_seconds: float = 300.0


STREAM_REMOTE_SHARDS = StreamingOptions()  # the default: a URL streams through a cache of limit auto


def make_cache(folders: list[StreamedFolder | None], options: StreamingOptions, local_rank: int = 0) -> CorpusCache:
    """One cache over the shards of every streamed folder, within the limit (resolved against the free disk of
    the first folder's filesystem, counting the shards already cached there as free) that the node's ranks keep
    together. Raises W2VError when another run holds one of the folders."""
    streamed = [f for f in folders if f is not None]
    locks: list[int] = []
    try:
        for folder in streamed:
            if local_rank == 0:  # the run's: the node's other ranks share the folder with it
                locks.append(_hold(folder.shards_dir / ".lock"))  # before anything in the folder is touched
        cached = sum(_remove_strays(folder) for folder in streamed)
        remote = [shard for f in streamed for shard in f.remote]
        corpus_bytes = sum(f.shard_bytes for f in streamed)
        free = free_bytes(streamed[0].folder) + cached
        limit = options.limit.resolve(free, corpus_bytes)
        room = NodeRoom.over([(shard.local, shard.entry.bytes) for shard in remote], limit)
        cache = ShardCache(remote, limit, policy=options.policy, max_transfers=options.max_transfers,
                           retry_seconds=options.retry_seconds, room=room)  # fmt: skip
    except BaseException:
        for fd in locks:
            os.close(fd)
        raise
    return CorpusCache(folders, cache, locks)


def _remove_strays(folder: StreamedFolder) -> int:
    """Delete what the shard folder holds that the manifest no longer names (shards of an older generation,
    their markers and parts); returns the bytes of the shards it names, and of their parts, that are there
    (the same whether or not another rank of the node is fetching one just now)."""
    names = {shard.local.name for shard in folder.remote}
    kept = 0
    for path in folder.shards_dir.iterdir():
        base = path.name.removesuffix(PART_SUFFIX).removesuffix(VERIFIED_SUFFIX).removesuffix(LOCK_SUFFIX)
        if path.name in (".lock", ROOM_LOCK):
            continue
        if base not in names:
            path.unlink(missing_ok=True)
        elif path.name in (base, base + PART_SUFFIX):
            with contextlib.suppress(FileNotFoundError):  # another rank of the node evicted it just now
                kept += path.stat().st_size
    return kept


def window_advice(limit_bytes: int, shard_bytes: Sequence[int], window: int | None) -> str | None:
    """A line for a cache that cannot hold two shuffle windows of shards (the one being read and the next),
    saying what to set; None when it can, or when it holds the whole corpus."""
    total = sum(shard_bytes)
    if limit_bytes >= total or not shard_bytes:
        return None
    mean = total / len(shard_bytes)
    fits = int(limit_bytes / mean) // 2  # the largest window two of which fit
    held = f"shard cache: {limit_bytes} bytes hold {limit_bytes / total:.0%} of the corpus"
    if fits < 1:
        return f"{held}, less than two shards; raise --cache-limit to at least {int(2 * mean)} bytes"
    if window is None:
        return (
            f"{held} and batch.shuffle_window_shards is unset (a full shuffle reads every shard all epoch long): "
            f"the corpus will be fetched many times per epoch; set batch.shuffle_window_shards to at most {fits}"
        )
    if window > fits:
        return (
            f"{held}, not two windows of {window} shards: shards will be fetched more than once per epoch; set "
            f"batch.shuffle_window_shards to at most {fits} or raise --cache-limit"
        )
    return None


def load_held_out(
    held: ShardCorpus, k: int, cache: CorpusCache, budget_seconds: float | None, seed: int
) -> ShardCorpus:
    """The held-out utterances of corpus `k` that validation reads, copied into memory through the cache: those
    of the fewest shards (in a seeded order) that hold `budget_seconds` of them (None: of every shard)."""
    if not cache.streamed[k]:
        return held
    order = np.random.default_rng([seed, 0x4E1D]).permutation(np.unique(held.shard))
    samples = np.bincount(held.shard, weights=held.num_samples, minlength=int(held.shard.max()) + 1)
    if budget_seconds is not None:
        reach = np.cumsum(samples[order]) / held.sample_rate
        order = order[: int(np.searchsorted(reach, budget_seconds)) + 1]
    chosen = np.sort(order)
    indices = np.flatnonzero(np.isin(held.shard, chosen))
    indices = indices[np.argsort(held.shard[indices], kind="stable")]  # shard by shard
    ends = np.cumsum(held.num_samples[indices].astype(np.int64))
    memory = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int16)
    of_shard = held.shard[indices]
    reader = cache.cache.read(iter(chosen.tolist()), lambda shard: [shard + int(cache.offsets[k])], lambda s: s)
    try:
        for shard in reader:
            for n in np.flatnonzero(of_shard == shard).tolist():
                memory[ends[n] - held.num_samples[indices[n]] : ends[n]] = held.audio(int(indices[n]))
            held.close_shards()
            cache.cache.release(shard)
    finally:
        reader.close()
    return held.in_memory(indices, memory, ends)


@contextlib.contextmanager
def pinned_sample(
    corpus: ShardCorpus, k: int, cache: CorpusCache, utterances: int | None, seed: int
) -> Iterator[ShardCorpus]:
    """The utterances of a seeded sample of corpus `k`'s shards, whose shards stay on disk until the block ends:
    the fewest shards (in a seeded order) that hold `utterances` utterances (None: all), and no more than the
    cache holds at once (at least one). A local corpus is yielded whole."""
    if not cache.streamed[k]:
        yield corpus
        return
    present = np.unique(corpus.shard)
    order = np.random.default_rng([seed, 0x9B0E]).permutation(present)
    sizes = np.array([cache.cache.shards[int(s) + int(cache.offsets[k])].entry.bytes for s in order], dtype=np.int64)
    fit = max(int(np.searchsorted(np.cumsum(sizes), cache.cache.limit_bytes, side="right")), 1)
    if utterances is not None:
        counts = np.bincount(corpus.shard, minlength=int(present.max()) + 1)[order]
        fit = min(fit, int(np.searchsorted(np.cumsum(counts), utterances)) + 1)
    chosen = np.sort(order[:fit])
    reader = cache.cache.read(iter(chosen.tolist()), lambda shard: [shard + int(cache.offsets[k])], lambda s: s)
    sample = corpus.subset(np.flatnonzero(np.isin(corpus.shard, chosen)))
    try:
        for _ in chosen:  # each pinned as it arrives; not one past the last, which would end the read
            next(reader)
        yield sample
    finally:
        sample.close_shards()
        reader.close()
