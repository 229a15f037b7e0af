"""The bounded shard cache: every item's shards on disk when the reader gets it, the disk within the limit,
fetches in plan order with Belady eviction, and faults that end in one line naming the shard."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from w2v.data.eviction import simulate
from w2v.data.node_room import NodeRoom
from w2v.data.shard_cache import CacheError, RemoteShard, ShardCache
from w2v.shards.manifest import FileEntry

SIZE = 1000


class FlakyFileSystem(LocalFileSystem):
    """A local 'store' whose opens fail `failures` times first, and that counts opens per path."""

    def __init__(self, failures: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.opened: list[str] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self.opened.append(Path(path).name)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("the store hung up")
        return super()._open(path, mode, **kwargs)


def make_store(folder: Path, count: int, size: int = SIZE) -> list[FileEntry]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(count):
        data = np.random.default_rng(k).bytes(size)
        (folder / f"s{k:03d}.arrow").write_bytes(data)
        entries.append(FileEntry(f"s{k:03d}.arrow", 1, size, hashlib.sha256(data).hexdigest()))
    return entries


def make_cache(tmp_path: Path, entries: list[FileEntry], limit: int, fs: Any = None, **kwargs: Any) -> ShardCache:
    fs = fs or fsspec.filesystem("file")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    shards = [RemoteShard(fs, str(tmp_path / "store" / e.path), cache / e.path, e, "store") for e in entries]
    return ShardCache(shards, limit, **kwargs)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".arrow", ".part"))


class DiskWatcher:
    """Samples a folder's shard bytes every millisecond; `peak` is the most seen."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # a file went between listing and stat
                self.peak = max(self.peak, disk_bytes(self.folder))
            time.sleep(0.001)

    def __enter__(self) -> DiskWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def read_all(
    cache: ShardCache, accesses: list[tuple[int, ...]], held: int = 0, settle: bool = False
) -> list[tuple[int, ...]]:
    """Read items (shard tuples) through the cache, keeping `held` items out before releasing the oldest;
    checks each item's shards are whole on disk when it is handed over. With `settle`, each item is taken
    only once the prefetching set off by the last has finished (the same decisions whatever the timing)."""
    seen, out = [], []
    items = iter(list(enumerate(accesses)))
    for number, keys in cache.read(items, lambda item: item[1], lambda item: item[0]):
        for key in keys:
            path = cache._slots[key].shard.local
            assert path.stat().st_size == SIZE, f"shard {key} not whole when item {number} was handed over"
        seen.append(keys)
        out.append(number)
        if len(out) > held:
            cache.release(out.pop(0))
        if settle:
            assert cache.wait_idle()
    for number in out:
        cache.release(number)
    return seen


def cyclic(shards: int, rounds: int) -> list[tuple[int, ...]]:
    return [(k,) for _ in range(rounds) for k in range(shards)]


def test_every_item_is_read_in_order_with_its_shards_on_disk_and_the_disk_within_the_limit(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 20)
    rng = np.random.default_rng(0)
    accesses = [tuple(int(k) for k in rng.choice(20, size=3, replace=False)) for _ in range(200)]
    cache = make_cache(tmp_path, entries, limit=8 * SIZE)
    with DiskWatcher(tmp_path / "cache") as watcher:
        seen = read_all(cache, accesses, held=1)
    cache.close()
    assert seen == accesses
    assert 0 < watcher.peak <= 8 * SIZE
    assert cache.stats().peak_bytes <= 8 * SIZE
    assert cache.bytes_on_disk() == disk_bytes(tmp_path / "cache")


def test_plan_eviction_fetches_as_few_as_belady_and_fewer_than_lru(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 10)
    accesses = cyclic(10, 5)
    fetches = {}
    for policy in ("plan", "lru"):
        for path in (tmp_path / "cache").glob("*"):
            path.unlink()
        cache = make_cache(tmp_path, entries, limit=4 * SIZE, policy=policy, max_transfers=1)
        read_all(cache, accesses, settle=True)
        cache.close()
        fetches[policy] = cache.stats().fetches
    sizes = dict.fromkeys(range(10), SIZE)
    # The item being read is held while the next is fetched: online, one shard of room is taken by it.
    offline = simulate([a[0] for a in accesses], sizes, 3 * SIZE, "plan").fetches
    assert offline == 40
    # Prefetching evicts no earlier than Belady's victim is known (evicting at once fetched every read: 50).
    assert fetches["plan"] == offline
    assert fetches["lru"] == 50  # a cycle longer than the cache: LRU misses every read


def test_a_cache_that_holds_the_corpus_fetches_each_shard_once_over_many_epochs(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 10)
    cache = make_cache(tmp_path, entries, limit=10 * SIZE)
    read_all(cache, cyclic(10, 4))
    cache.close()
    stats = cache.stats()
    assert stats.fetches == 10 and stats.fetched_bytes == 10 * SIZE
    assert stats.hit_rate >= 0.75


def test_a_shard_held_out_is_never_evicted(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 6)
    cache = make_cache(tmp_path, entries, limit=3 * SIZE)
    reader = cache.read(iter([(0, (0,)), (1, (1,)), (2, (2,)), (3, (3,)), (4, (4,))]), lambda i: i[1], lambda i: i[0])
    first = next(reader)
    for _ in range(3):
        item = next(reader)
        cache.release(item[0])
    assert first == (0, (0,))
    assert (tmp_path / "cache" / "s000.arrow").exists()  # still held: the others came and went around it
    reader.close()
    cache.close()


def test_shards_left_by_an_earlier_run_are_used_without_fetching(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 4)
    cache = make_cache(tmp_path, entries, limit=4 * SIZE)
    read_all(cache, cyclic(4, 1))
    cache.close()
    (tmp_path / "cache" / "s003.arrow.part").write_bytes(b"half")
    again = make_cache(tmp_path, entries, limit=4 * SIZE)
    read_all(again, cyclic(4, 2))
    again.close()
    assert again.stats().fetches == 0
    assert not (tmp_path / "cache" / "s003.arrow.part").exists()


def test_a_cached_shard_changed_on_disk_is_hashed_again_and_fetched_again_when_damaged(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 3)
    cache = make_cache(tmp_path, entries, limit=3 * SIZE)
    read_all(cache, cyclic(3, 1))
    cache.close()
    damaged, rewritten = tmp_path / "cache" / "s000.arrow", tmp_path / "cache" / "s001.arrow"
    stat = damaged.stat()
    data = bytearray(damaged.read_bytes())
    data[SIZE // 2] ^= 0xFF  # one bit flipped, same size, mtime put back: only the ctime tells
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rewritten.write_bytes(rewritten.read_bytes())  # written again, same bytes: hashed, kept
    again = make_cache(tmp_path, entries, limit=3 * SIZE)
    read_all(again, cyclic(3, 1))
    again.close()
    assert again.stats().fetches == 1  # the damaged one only
    assert damaged.read_bytes() == (tmp_path / "store" / "s000.arrow").read_bytes()
    third = make_cache(tmp_path, entries, limit=3 * SIZE)  # both checked now: nothing hashed or fetched
    read_all(third, cyclic(3, 1))
    third.close()
    assert third.stats().fetches == 0


def test_caches_sharing_a_folder_fetch_each_shard_once_between_them(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 6)
    ranks = [make_cache(tmp_path, entries, limit=6 * SIZE) for _ in range(2)]  # two ranks of a node
    readers = [threading.Thread(target=read_all, args=(cache, cyclic(6, 2))) for cache in ranks]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    for cache in ranks:
        cache.close()
    assert sum(cache.stats().fetches for cache in ranks) == 6  # one waited for the other's download, then found it
    assert sum(cache.stats().fetched_bytes for cache in ranks) == 6 * SIZE


def test_a_cache_never_deletes_a_shard_another_cache_of_the_folder_holds(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 6)
    first, second = make_cache(tmp_path, entries, limit=2 * SIZE), make_cache(tmp_path, entries, limit=2 * SIZE)
    read_all(first, [(0,), (1,)])  # first holds shards 0 and 1
    read_all(second, cyclic(6, 1))  # second finds 0 and 1, then evicts them for 2..5
    assert first.stats().fetches == 2 and second.stats().fetches == 4
    assert (tmp_path / "cache" / "s000.arrow").is_file() and (tmp_path / "cache" / "s001.arrow").is_file()
    first.close()
    second.close()
    # 2 and 3, which only the second held, went when it evicted them; the next run finds the other four.
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.arrow")) == [f"s00{k}.arrow" for k in (0, 1, 4, 5)]
    third = make_cache(tmp_path, entries, limit=6 * SIZE)
    read_all(third, cyclic(6, 1))
    third.close()
    assert third.stats().fetches == 2


def test_a_store_that_fails_for_a_moment_is_retried(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 3)
    fs = FlakyFileSystem(failures=2, skip_instance_cache=True)
    cache = make_cache(tmp_path, entries, limit=3 * SIZE, fs=fs, retry_seconds=30)
    assert read_all(cache, cyclic(3, 1)) == cyclic(3, 1)
    cache.close()
    assert cache.stats().fetches == 3


def test_a_store_down_longer_than_the_retry_time_stops_the_reader_with_one_line(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 3)
    fs = FlakyFileSystem(failures=10**6, skip_instance_cache=True)
    cache = make_cache(tmp_path, entries, limit=3 * SIZE, fs=fs, retry_seconds=1.0)
    expected = r"store/s00\d\.arrow: could not be fetched for 1 s \(ConnectionError"
    with pytest.raises(CacheError, match=expected) as error:
        read_all(cache, cyclic(3, 1))
    assert "\n" not in str(error.value)
    cache.close()


def test_a_damaged_remote_shard_is_refused_by_name_after_two_fetches(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 3)
    (tmp_path / "store" / "s001.arrow").write_bytes(b"x" * SIZE)
    fs = FlakyFileSystem(skip_instance_cache=True)
    cache = make_cache(tmp_path, entries, limit=3 * SIZE, fs=fs)
    with pytest.raises(CacheError, match=r"store/s001\.arrow: sha256 .* after fetching it twice"):
        read_all(cache, cyclic(3, 1))
    cache.close()
    assert fs.opened.count("s001.arrow") == 2
    assert not (tmp_path / "cache" / "s001.arrow").exists()
    assert not (tmp_path / "cache" / "s001.arrow.part").exists()


def test_a_limit_below_what_the_reader_holds_is_refused_with_what_to_change(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 6)
    cache = make_cache(tmp_path, entries, limit=2 * SIZE)
    with pytest.raises(CacheError, match=r"hold \d+ bytes of shards, more than the limit .* raise --cache-limit"):
        read_all(cache, [(0, 1, 2, 3), (4, 5)])
    cache.close()


def test_one_shard_over_the_limit_is_allowed_when_the_items_out_need_it(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 4)
    cache = make_cache(tmp_path, entries, limit=2 * SIZE)
    with DiskWatcher(tmp_path / "cache") as watcher:
        read_all(cache, [(0, 1, 2), (3,)])
    cache.close()
    assert watcher.peak <= 3 * SIZE


class FullDisk(FlakyFileSystem):
    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self.opened.append(Path(path).name)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_local_disk_stops_the_reader_at_once_with_one_line(tmp_path: Path) -> None:
    entries = make_store(tmp_path / "store", 2)
    fs = FullDisk(skip_instance_cache=True)
    cache = make_cache(tmp_path, entries, limit=2 * SIZE, fs=fs, retry_seconds=600)
    with pytest.raises(CacheError, match=r"cache/s00\d\.arrow: cannot be written \(\[Errno 28\] No space left"):
        read_all(cache, cyclic(2, 1))
    cache.close()
    assert len(fs.opened) <= 2  # each shard tried once: not retried like a store that hung up
    assert not [p for p in (tmp_path / "cache").glob("*.arrow*") if p.suffix != ".lock"]  # no part, no marker


def shared_room(tmp_path: Path, entries: list[FileEntry], limit: int) -> NodeRoom:
    """The room of a node whose caches use tmp_path/cache (as make_cache lays it out)."""
    return NodeRoom.over([(tmp_path / "cache" / e.path, e.bytes) for e in entries], limit)


def node_windows(shards: int, window: int, epochs: int, ranks: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """What the ranks of a node read under a windowed shuffle, in the order they read it: (rank, number, shards).
    Each epoch visits the windows in a seeded order; within a window, each rank's items alternate between its
    shards, starting from a different shard on each rank (so that each rank's own future differs)."""
    items: list[tuple[int, int, tuple[int, ...]]] = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(shards)
        for start in range(0, shards, window):
            members = [int(k) for k in order[start : start + window]]
            for n in range(2 * window):
                items += [(rank, len(items) // ranks, (members[(n + rank) % window],)) for rank in range(ranks)]
    return items


@pytest.mark.parametrize(("window", "limit_shards"), [(2, 4), (3, 8)])
def test_the_ranks_of_a_node_share_the_limit_and_keep_their_shards_within_it_together(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, window: int, limit_shards: int
) -> None:
    entries = make_store(tmp_path / "store", 24)
    limit = limit_shards * SIZE  # two windows or more: the one being read and the next
    room = shared_room(tmp_path, entries, limit)
    ranks = [make_cache(tmp_path, entries, limit=limit, room=room, room_wait_seconds=60) for _ in range(2)]
    node = node_windows(24, window, 2, ranks=2)
    step = threading.Barrier(2)  # the ranks meet after every item, as at each gradient all-reduce

    def train(cache: ShardCache, rank: int) -> None:
        mine = [item for item in node if item[0] == rank]
        taken = cache.read(iter(node), lambda item: item[2], lambda item: item[:2], lambda item: item[0] == rank)
        for expected, item in zip(mine, taken, strict=True):
            assert item == expected
            cache.release(item[:2])
            step.wait(timeout=60)

    readers = [threading.Thread(target=train, args=(cache, rank)) for rank, cache in enumerate(ranks)]
    with DiskWatcher(tmp_path / "cache") as watcher:
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    for cache in ranks:
        cache.close()
    # Each rank counted the whole limit (half of it each cannot hold two windows), and together they kept the
    # node's disk within it, but for one shard per rank (one a rank's reader waited on while another rank had
    # yet to let go of what this one let go), and fetched the corpus about once per epoch.
    assert all(cache.limit_bytes == limit for cache in ranks)
    assert watcher.peak <= limit + 2 * SIZE
    assert sum(cache.stats().fetched_bytes for cache in ranks) <= 2 * 24 * SIZE
    assert "fetching it anyway" not in caplog.text


def test_a_prefetch_waits_for_room_until_the_last_rank_holding_a_shard_lets_it_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = make_store(tmp_path / "store", 3)
    room = shared_room(tmp_path, entries, 2 * SIZE)
    first, second = (make_cache(tmp_path, entries, 2 * SIZE, room=room, room_wait_seconds=60) for _ in range(2))
    read_all(first, [(1,), (0,)])
    read_all(second, [(0,), (1,)])  # found: both hold shards 0 and 1, which fill the node's room
    reader = second.read(iter([(0,), (2,)]), lambda item: item, lambda item: item)
    assert next(reader) == (0,)  # while 0 is read, 2 is prefetched: 1 is let go, but the first holds it
    time.sleep(0.5)
    assert not (tmp_path / "cache" / "s002.arrow").exists() and (tmp_path / "cache" / "s001.arrow").exists()
    read_all(first, [(2,)])  # lets 1 go too (read before 0): it leaves the disk, and 2 fits
    second.release((0,))
    assert next(reader) == (2,)
    reader.close()
    first.close()
    second.close()
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.arrow")) == ["s000.arrow", "s002.arrow"]
    assert first.stats().fetches + second.stats().fetches == 3  # 2 fetched once, by whichever got it first
    assert "fetching it anyway" not in caplog.text


def test_a_prefetch_that_finds_no_room_in_time_is_fetched_anyway_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = make_store(tmp_path / "store", 4)
    room = shared_room(tmp_path, entries, 2 * SIZE)
    first = make_cache(tmp_path, entries, 2 * SIZE, room=room)
    read_all(first, [(0,), (1,)])  # held, and never let go
    second = make_cache(tmp_path, entries, 2 * SIZE, room=room, room_wait_seconds=0.2, max_transfers=1)
    reader = second.read(iter([(2,), (3,)]), lambda item: item, lambda item: item)
    assert next(reader) == (2,)
    # 3, prefetched while 2 is read, is refused room, asked for again and again, and after 0.2 s fetched anyway.
    deadline = time.monotonic() + 30
    while not (tmp_path / "cache" / "s003.arrow").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "cache" / "s003.arrow").is_file()
    second.release((2,))
    assert next(reader) == (3,)
    reader.close()
    first.close()
    second.close()
    # The second found 0 and 1 and let them go for 2 and 3. The reader waited for 2: it came at once, one shard
    # over the limit; 3, prefetched, waited for room, then came anyway. The first held 0 and 1 throughout.
    on_disk = {p.name for p in (tmp_path / "cache").glob("*.arrow")}
    assert {"s000.arrow", "s001.arrow", "s003.arrow"} <= on_disk
    assert caplog.text.count("fetching it anyway") == 1
    assert "left no room within the limit of 2000 bytes for s003.arrow for 0.2 s" in caplog.text
