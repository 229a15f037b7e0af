"""A bounded local cache of remote shards, filled ahead of the reader in the order a known plan will read them.

The reader hands the cache its future: an iterator of items, each with the shards it reads. The cache walks
that iterator ahead of the reader (about `limit_bytes` of distinct shards ahead) and fetches the shards in
order of their next use, on a few threads. Room is made by evicting the cached shard whose next use lies
farthest ahead (`plan`: Belady's rule, w2v.data.eviction) or, to compare, the one read least recently
(`lru`); either way a shard is never evicted to fetch one needed later than it, and never while an item that
reads it is out (pinned from the moment the reader takes the item until it `release`s it). Bytes are reserved
before a transfer starts, so the files on disk never exceed the limit, except by one shard when the items
out pin more than the limit holds (a larger need is refused with one line saying what to change).

Each shard is downloaded to NAME.part, checked against the manifest's size and sha256 and renamed into place
(w2v.data.staging.fetch_shard): nothing half-written is ever read. Caches may share a folder (the ranks of a
node, w2v.data.shard_locks): a shard one cache fetched is found by the others instead of fetched again, and a
cache that evicts a shard another still holds leaves the file to it. Given the node's room (w2v.data.node_room),
they also share the limit: a shard new to the disk waits for room among the shards all of them hold. A
transfer that fails is retried with backoff for `retry_seconds`, then the reader's next wait raises a one-line
CacheError naming the shard.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from w2v.data.cache_stats import CacheStats
from w2v.data.eviction import POLICIES
from w2v.data.node_room import NodeRoom
from w2v.data.shard_fetch import CacheError, RemoteShard, fetch_with_retries
from w2v.data.shard_locks import adopt, allow_descriptors, claimed, hold, let_go, release
from w2v.data.staging import VERIFIED_SUFFIX, checked_at_rest
from w2v.errors import W2VError

__all__ = ["CacheError", "CacheStats", "RemoteShard", "ShardCache"]
T = TypeVar("T")
NEVER = float("inf")  # the next use of a shard the lookahead has not reached
MAX_LOOKAHEAD_ITEMS = 1 << 14
LOOKAHEAD_LIMITS = 4
ROOM_WAIT_SECONDS = 30.0  # the longest a prefetch waits for the node's other caches to make room
ROOM_RETRY_SECONDS = (0.02, 0.5)  # a refused prefetch asks again after this, doubling up to that
logger = logging.getLogger("w2v.data")


@dataclass
class _Slot:
    shard: RemoteShard
    state: str = "absent"  # absent | fetching | ready
    pins: int = 0
    last_read: int = -1  # the ordinal of the last item that read it (for lru)
    hold: int | None = None  # the descriptor of this cache's shared hold on the file, while ready
    refused_at: float | None = None  # when the node's room first had no room for it (since its last fetch)
    retry_at: float = 0.0  # when to ask the room again


@dataclass
class _Ahead(Generic[T]):
    ordinal: int
    item: T
    keys: tuple[int, ...]
    mine: bool = True  # False: another rank of the node reads it (it only tells when its shards are read)


@dataclass
class _Session(Generic[T]):
    """One reader's walk: the items taken ahead of it, and where each shard is next read among them."""

    items: Iterator[T]
    keys_of: Callable[[T], Sequence[int]]
    mine: Callable[[T], bool]
    ahead: deque[_Ahead[T]] = field(default_factory=deque)
    uses: dict[int, deque[int]] = field(default_factory=dict)  # shard -> ordinals of the items ahead reading it
    named_bytes: int = 0  # of the distinct shards the items ahead read
    out: dict[Hashable, tuple[int, ...]] = field(default_factory=dict)  # taken, not yet released
    exhausted: bool = False


def _everything(item: object) -> bool:
    return True


class ShardCache:
    """Shards `shards` (numbered by position) brought to local disk within `limit_bytes`.

    Where a shard is next needed and which shard to evict are kept in heaps whose entries are checked when
    popped (a changed shard pushes a new entry), so each item taken costs O(shards it reads × log), not a
    walk over the cache."""

    def __init__(
        self,
        shards: Sequence[RemoteShard],
        limit_bytes: int,
        *,
        policy: str = "plan",
        max_transfers: int = 4,
        retry_seconds: float = 300.0,
        room: NodeRoom | None = None,
        room_wait_seconds: float = ROOM_WAIT_SECONDS,
    ) -> None:
        if policy not in POLICIES:
            raise W2VError(f"cache policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if limit_bytes <= 0:
            raise CacheError(f"cache limit {limit_bytes} bytes: must be positive")
        self.limit_bytes = limit_bytes
        self.policy = policy
        self.retry_seconds = retry_seconds
        self.room = room
        self.room_wait_seconds = room_wait_seconds
        self._over_room_said = False
        self._slots = [_Slot(s) for s in shards]
        self._largest = max((s.entry.bytes for s in shards), default=0)
        self._lock = threading.Condition()
        self._pool = ThreadPoolExecutor(max_transfers, thread_name_prefix="w2v-shard-fetch")
        self._max_transfers = max_transfers
        self._transfers = 0
        self._sessions: list[_Session[Any]] = []
        self._ordinals = itertools.count()
        self._wanted: list[tuple[float, int]] = []  # (next use, shard) of absent shards
        self._victims: list[tuple[float, float, int, float, int]] = []  # (priority..., shard, next use, last read)
        self._used = 0
        self._ready: set[int] = set()  # shards on disk
        self._error: CacheError | None = None
        self._counts = {"accesses": 0, "hits": 0, "fetches": 0, "fetched_bytes": 0, "peak_bytes": 0}
        self._wait_seconds = 0.0
        allow_descriptors(len(self._slots))  # one held open per cached shard
        self._adopt_local_files()
        for key in range(len(self._slots)):
            self._touch(key)

    # The reader's side.

    def read(
        self,
        items: Iterator[T],
        keys_of: Callable[[T], Sequence[int]],
        id_of: Callable[[T], Hashable],
        mine: Callable[[T], bool] | None = None,
    ) -> Generator[T, None, None]:
        """`items`, each yielded once every shard it reads (`keys_of`) is on disk; they stay there until
        `release(id_of(item))`. Closing the iterator releases what it took and not yet released.

        With `mine`, `items` are what all the ranks of the node read, in the order they read them, and only the
        reader's own (`mine`) are yielded; another rank's counts as read once the reader passes it. The caches of
        the node then see one future and keep the same shards: the room they share holds what each would."""
        session: _Session[T] = _Session(items, keys_of, mine or _everything)
        with self._lock:
            self._sessions.append(session)
        try:
            while True:
                taken = self._take(session)
                if taken is None:
                    return
                session.out[id_of(taken.item)] = taken.keys
                yield taken.item
        finally:
            with self._lock:
                for keys in session.out.values():
                    self._unpin(keys)
                session.out.clear()
                self._sessions.remove(session)
                for key in session.uses:
                    self._touch(key)
                self._schedule()

    def release(self, item_id: Hashable) -> None:
        """The reader is done with an item it took: its shards may be evicted again."""
        with self._lock:
            for session in self._sessions:
                keys = session.out.pop(item_id, None)
                if keys is not None:
                    self._unpin(keys)
                    self._schedule()
                    return

    @property
    def shards(self) -> list[RemoteShard]:
        return [slot.shard for slot in self._slots]

    def stats(self) -> CacheStats:
        with self._lock:
            c = self._counts
            return CacheStats(c["accesses"], c["hits"], c["fetches"], c["fetched_bytes"], self._wait_seconds,
                              c["peak_bytes"])  # fmt: skip

    def bytes_on_disk(self) -> int:
        """The bytes reserved for shards on disk or arriving (what the limit bounds)."""
        with self._lock:
            return self._used

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no transfer is under way (the prefetching the last event started has run its course);
        False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._transfers == 0 or self._error is not None, timeout)

    def pinned_bytes(self) -> int:
        """The bytes of the shards that items the reader has out read."""
        with self._lock:
            return sum(slot.shard.entry.bytes for slot in self._slots if slot.pins)

    def close(self) -> None:
        """Stop fetching (transfers under way finish); a reader still waiting gets a CacheError. The cached
        files stay for the next run."""
        with self._lock:
            self._error = self._error or CacheError("the shard cache was closed")
            self._lock.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for slot in self._slots:
                if slot.hold is not None:
                    release(slot.hold)
                    slot.hold = None

    def _take(self, session: _Session[T]) -> _Ahead[T] | None:
        """The session's next item, once its shards are on disk (pinned); None when the items end."""
        started = time.perf_counter()
        with self._lock:
            if self._error is not None:
                raise self._error
            while True:
                self._extend(session)
                if not session.ahead:
                    return None
                taken = session.ahead.popleft()
                if taken.mine:
                    break
                self._passed(session, taken)  # another rank's, which it reads about now
            self._pin(taken.keys)
            self._passed(session, taken)
            self._counts["accesses"] += len(taken.keys)
            self._counts["hits"] += sum(self._slots[k].state == "ready" for k in taken.keys)
            while True:
                if self._error is not None:
                    self._unpin(taken.keys)
                    raise self._error
                if all(self._slots[k].state == "ready" for k in taken.keys):
                    break
                self._demand(taken)
                self._schedule()
                self._lock.wait(timeout=1.0)
            self._schedule()
            self._wait_seconds += time.perf_counter() - started
            return taken

    # Scheduling (every method below runs under the lock).

    def _passed(self, session: _Session[Any], taken: _Ahead[Any]) -> None:
        """The reader is past `taken`: the shards it reads are next read further on."""
        for key in taken.keys:
            uses = session.uses[key]
            uses.popleft()
            if not uses:
                del session.uses[key]
                session.named_bytes -= self._slots[key].shard.entry.bytes
            self._slots[key].last_read = taken.ordinal
            self._touch(key)

    def _extend(self, session: _Session[Any]) -> None:
        """Walk the session's items ahead until they name LOOKAHEAD_LIMITS × the limit of distinct shards, every
        shard, or MAX_LOOKAHEAD_ITEMS items. Belady's rule needs to see past what fits: a cached shard whose
        next use lies beyond the lookahead looks like one never used again (ties go to the least recent)."""
        while (
            not session.exhausted
            and session.named_bytes < LOOKAHEAD_LIMITS * self.limit_bytes
            and len(session.uses) < len(self._slots)
            and len(session.ahead) < MAX_LOOKAHEAD_ITEMS
        ):
            item = next(session.items, None)
            if item is None:
                session.exhausted = True
                return
            ordinal = next(self._ordinals)
            keys = tuple(sorted({int(k) for k in session.keys_of(item)}))
            session.ahead.append(_Ahead(ordinal, item, keys, session.mine(item)))
            for key in keys:
                uses = session.uses.get(key)
                if uses is None:
                    session.uses[key] = deque([ordinal])
                    session.named_bytes += self._slots[key].shard.entry.bytes
                    self._touch(key)
                else:
                    uses.append(ordinal)

    def _next_use(self, key: int) -> float:
        return min((s.uses[key][0] for s in self._sessions if key in s.uses), default=NEVER)

    def _touch(self, key: int) -> None:
        """Push `key`'s current standing into the heaps (entries it had before go stale)."""
        slot = self._slots[key]
        use = self._next_use(key)
        if slot.state == "absent" and use < NEVER:
            heapq.heappush(self._wanted, (use, key))
        elif slot.state == "ready" and slot.pins == 0:
            priority = (-use, slot.last_read) if self.policy == "plan" else (slot.last_read, 0.0)
            heapq.heappush(self._victims, (*priority, key, use, slot.last_read))
        if len(self._wanted) + len(self._victims) > 8 * len(self._slots) + 1024:
            self._rebuild_heaps()

    def _rebuild_heaps(self) -> None:
        self._wanted, self._victims = [], []
        uses = {k: self._next_use(k) for k in range(len(self._slots))}
        for key, slot in enumerate(self._slots):
            if slot.state == "absent" and uses[key] < NEVER:
                self._wanted.append((uses[key], key))
            elif slot.state == "ready" and slot.pins == 0:
                priority = (-uses[key], slot.last_read) if self.policy == "plan" else (slot.last_read, 0.0)
                self._victims.append((*priority, key, uses[key], slot.last_read))
        heapq.heapify(self._wanted)
        heapq.heapify(self._victims)

    def _schedule(self) -> None:
        """Start transfers for the shards needed soonest that are not on disk, while room can be made."""
        if self._error is not None:
            return
        for session in self._sessions:
            self._extend(session)
        while self._transfers < self._max_transfers and self._wanted:
            use, key = self._wanted[0]
            if self._slots[key].state != "absent" or self._next_use(key) != use:
                heapq.heappop(self._wanted)  # stale
                continue
            if self._slots[key].retry_at > time.monotonic():
                return  # the node had no room for it a moment ago; what is needed later waits behind it
            if not self._early_eviction_is_safe(key, use) or not self._make_room(key, use):
                return
            heapq.heappop(self._wanted)
            self._start(key)

    def _early_eviction_is_safe(self, key: int, needed_at: float) -> bool:
        """Whether room for `key` may be made now rather than when it is needed: under `plan`, only when the
        shard Belady's rule would evict at `needed_at` is already known, i.e. no cached shard read before then
        will be needed again later than the farthest shard that is not (else it is the better victim, and
        evicting now would throw away a shard the next round needs: on a loop longer than the cache, evicting
        early fetched every read). Cao et al.'s "conservative" prefetching: Belady's evictions, as early as
        possible. Free room needs no check; `lru` evicts by recency anyway."""
        if self.policy != "plan" or self._used + self._slots[key].shard.entry.bytes <= self.limit_bytes:
            return True
        farthest = max((self._next_use(k) for k in self._ready if not self._slots[k].pins
                        and self._next_use(k) > needed_at), default=None)  # fmt: skip
        if farthest is None:
            return False
        for cached in self._ready:
            if self._next_use(cached) < needed_at and self._use_after(cached, needed_at) > farthest:
                return False
        return True

    def _use_after(self, key: int, moment: float) -> float:
        """The first read of `key` after `moment` among the items ahead (NEVER: none seen)."""
        later = [next((o for o in s.uses.get(key, ()) if o > moment), NEVER) for s in self._sessions]
        return min(later, default=NEVER)

    def _demand(self, taken: _Ahead[Any]) -> None:
        """The reader waits on `taken`: fetch its missing shards first. When none is on the way and no room
        can be made within the limit, take one shard over it, or refuse when even that cannot hold the items
        the reader has out."""
        missing = [k for k in taken.keys if self._slots[k].state == "absent"]
        started = 0
        for key in missing:
            if not self._make_room(key, taken.ordinal):
                break
            self._start(key)
            started += 1
        if started or not missing or self._transfers:
            return
        key = missing[0]
        if self._used + self._slots[key].shard.entry.bytes <= self.limit_bytes + self._largest:
            self._start(key)
            return
        pinned = sum(slot.shard.entry.bytes for slot in self._slots if slot.pins)
        self._error = CacheError(
            f"shard cache: the batches being read hold {pinned} bytes of shards, more than the limit of "
            f"{self.limit_bytes} bytes; raise --cache-limit, or lower batch.shuffle_window_shards or the "
            "loader's workers or prefetch_batches"
        )
        self._lock.notify_all()

    def _make_room(self, key: int, needed_at: float) -> bool:
        """Evict shards (not pinned, on disk, next needed after `needed_at`) until `key` fits."""
        size = self._slots[key].shard.entry.bytes
        set_aside: list[tuple[float, float, int, float, int]] = []
        try:
            while self._used + size > self.limit_bytes:
                victim = self._pop_victim(needed_at, set_aside)
                if victim is None:
                    return False
                self._evict(victim)
            return True
        finally:
            for entry in set_aside:
                heapq.heappush(self._victims, entry)

    def _pop_victim(self, needed_at: float, set_aside: list[tuple[float, float, int, float, int]]) -> int | None:
        """The shard to evict: used farthest ahead (plan) or least recently (lru), among those needed after
        `needed_at`; entries of shards needed sooner go to `set_aside` (lru) to be pushed back."""
        while self._victims:
            entry = self._victims[0]
            key, use, last_read = entry[2], entry[3], entry[4]
            slot = self._slots[key]
            if slot.state != "ready" or slot.pins or slot.last_read != last_read or self._next_use(key) != use:
                heapq.heappop(self._victims)  # stale
                continue
            if use <= needed_at:
                if self.policy == "plan":
                    return None  # the farthest is needed sooner: so is every other
                set_aside.append(heapq.heappop(self._victims))
                continue
            heapq.heappop(self._victims)
            return key
        return None

    def _evict(self, key: int) -> None:
        slot = self._slots[key]
        held, slot.hold = slot.hold, None
        let_go(slot.shard.local, held)  # the file stays while another cache of the folder holds it
        slot.state = "absent"
        self._ready.discard(key)
        self._used -= slot.shard.entry.bytes
        self._touch(key)

    def _start(self, key: int) -> None:
        slot = self._slots[key]
        slot.state = "fetching"
        self._transfers += 1
        self._used += slot.shard.entry.bytes
        self._counts["peak_bytes"] = max(self._counts["peak_bytes"], self._used)
        self._pool.submit(self._transfer, key)

    def _pin(self, keys: Sequence[int]) -> None:
        for key in keys:
            self._slots[key].pins += 1

    def _unpin(self, keys: Sequence[int]) -> None:
        for key in keys:
            self._slots[key].pins -= 1
            if self._slots[key].pins == 0:
                self._touch(key)

    # The transfer threads.

    def _transfer(self, key: int) -> None:
        shard = self._slots[key].shard
        try:
            with claimed(shard.local):  # another cache fetching it: wait, then find it here
                if checked_at_rest(shard.local, shard.entry):
                    fetched = 0
                elif self._room_for(key):
                    shard.local.with_name(shard.local.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
                    fetched = fetch_with_retries(shard, self.retry_seconds)
                else:
                    fetched = -1
                held = hold(shard.local) if fetched >= 0 else None
        except CacheError as error:
            return self._failed(key, error)
        except OSError as error:  # the lock file or the shard cannot be opened
            return self._failed(key, CacheError(f"{shard.local}: cannot be used ({error})"))
        if held is None:
            return self._no_room(key)
        with self._lock:
            self._transfers -= 1
            slot = self._slots[key]
            slot.state, slot.hold, slot.refused_at, slot.retry_at = "ready", held, None, 0.0
            self._ready.add(key)
            self._counts["fetches"] += int(fetched > 0)
            self._counts["fetched_bytes"] += fetched
            self._touch(key)
            self._schedule()
            self._lock.notify_all()

    def _room_for(self, key: int) -> bool:
        """Whether `key` may be fetched now (call holding its lock). Always without a node room; with one, when
        the shards on the node's disk leave room for it within the limit (or within this cache's own
        reservations, when they are over it), when the reader waits for it (the disk then holds it over the
        limit until the node's other caches let go of what this one let go), or when the room has refused it
        for `room_wait_seconds` (said once)."""
        if self.room is None:
            return True
        with self._lock:
            if self._error is not None:
                raise self._error
            slot = self._slots[key]
            if slot.pins:
                return True
            allowed, refused_at = max(self.limit_bytes, self._used), slot.refused_at
        if self.room.reserve(slot.shard.local, allowed):
            return True
        if refused_at is None or time.monotonic() - refused_at < self.room_wait_seconds:
            return False
        if not self._over_room_said:
            self._over_room_said = True
            logger.warning(
                "shard cache: the shards on this node's disk (%d bytes) left no room within the limit of %d bytes "
                "for %s for %g s; fetching it anyway (the node's ranks are reading different shards)",
                self.room.on_disk(), self.limit_bytes, slot.shard.local.name, self.room_wait_seconds,
            )  # fmt: skip
        return True

    def _no_room(self, key: int) -> None:
        """The node's room refused a prefetch of `key`: it is given back (its reservation, its transfer thread)
        and asked for again after a moment, as the node's other caches let go of what this one let go."""
        with self._lock:
            self._transfers -= 1
            slot = self._slots[key]
            slot.state = "absent"
            self._used -= slot.shard.entry.bytes
            now = time.monotonic()
            slot.refused_at = now if slot.refused_at is None else slot.refused_at
            first, most = ROOM_RETRY_SECONDS
            delay = min(most, max(first, 2 * (now - slot.refused_at)))
            slot.retry_at = now + delay
            self._touch(key)
            self._schedule()
            self._lock.notify_all()
        retry = threading.Timer(delay, self._reschedule)  # the reader may hold its batch for a while
        retry.daemon = True
        retry.start()

    def _reschedule(self) -> None:
        with self._lock:
            self._schedule()

    def _failed(self, key: int, error: CacheError) -> None:
        with self._lock:
            self._transfers -= 1
            slot = self._slots[key]
            slot.state = "absent"
            self._used -= slot.shard.entry.bytes
            self._error = self._error or error
            self._lock.notify_all()

    def _adopt_local_files(self) -> None:
        """Shards a run before this one left checked in the folder count as cached (up to the limit); one
        written since its check is hashed again, and fetched again if damaged. Parts of interrupted transfers
        are removed (their bytes were never reserved)."""
        for key, slot in enumerate(self._slots):
            fits = self._used + slot.shard.entry.bytes <= self.limit_bytes
            slot.hold = adopt(slot.shard.local, slot.shard.entry, fits)
            if slot.hold is not None:
                slot.state = "ready"
                self._ready.add(key)
                self._used += slot.shard.entry.bytes
