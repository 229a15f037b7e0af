"""Which cached shard to evict when the cache is full: the one used farthest ahead in a known plan (Belady's
rule), or, to compare, the one used least recently (LRU, what streaming loaders ship).

A training run's batch plan is a seeded, pure function of the corpus, so the order in which shards will be
read is known before step 1. With that future, evicting the shard whose next use lies farthest ahead
fetches the fewest shards of any policy when shards are of one size (Belady, 1966); LRU guesses the future
from the past, and a plan that walks the corpus once per epoch is its worst case (it evicts exactly the
shard needed soonest). `simulate` replays an access sequence under either policy: what the streaming
benchmark reports, and the rule the shard cache applies online.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

POLICIES = ("plan", "lru")


def next_uses(accesses: Sequence[int]) -> list[int]:
    """For each position i of `accesses` (shard ids), the next position reading the same shard, or
    len(accesses) when none does."""
    following = [len(accesses)] * len(accesses)
    seen: dict[int, int] = {}
    for position in range(len(accesses) - 1, -1, -1):
        shard = accesses[position]
        following[position] = seen.get(shard, len(accesses))
        seen[shard] = position
    return following


@dataclass(frozen=True)
class CacheReplay:
    """What a cache did over an access sequence."""

    policy: str
    limit_bytes: int
    accesses: int
    hits: int
    fetches: int
    fetched_bytes: int
    peak_bytes: int  # the most bytes on disk at once (at most the limit, or one shard larger than it)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 1.0


def simulate(accesses: Sequence[int], sizes: Mapping[int, int], limit_bytes: int, policy: str) -> CacheReplay:
    """Replay `accesses` (shard ids, in reading order) through a cache of `limit_bytes` under `policy`:
    `plan` evicts the shard whose next use is farthest ahead, `lru` the least recently used. A shard is
    fetched on a miss after evicting until it fits (or nothing is left to evict: a shard larger than the
    limit is still read, alone)."""
    if policy not in POLICIES:
        raise ValueError(f"eviction policy {policy!r}: expected one of {', '.join(POLICIES)}")
    following = next_uses(accesses) if policy == "plan" else []
    resident: dict[int, int] = {}  # shard -> its next use (plan) or 0 (lru)
    recency: OrderedDict[int, None] = OrderedDict()
    farthest: list[tuple[int, int]] = []  # (-next use, shard); stale entries are skipped when popped
    used = hits = fetches = fetched = peak = 0
    for position, shard in enumerate(accesses):
        if shard in resident:
            hits += 1
        else:
            while resident and used + sizes[shard] > limit_bytes:
                if policy == "lru":
                    victim, _ = recency.popitem(last=False)
                else:
                    victim = _pop_farthest(farthest, resident)
                used -= sizes[victim]
                del resident[victim]
            used += sizes[shard]
            fetches += 1
            fetched += sizes[shard]
            peak = max(peak, used)
        if policy == "lru":
            recency[shard] = None
            recency.move_to_end(shard)
            resident[shard] = 0
        else:
            resident[shard] = following[position]
            heapq.heappush(farthest, (-following[position], shard))
    return CacheReplay(policy, limit_bytes, len(accesses), hits, fetches, fetched, peak)


def _pop_farthest(farthest: list[tuple[int, int]], resident: dict[int, int]) -> int:
    """The resident shard used farthest ahead (entries left from earlier uses are stale and dropped)."""
    while True:
        negative_use, shard = heapq.heappop(farthest)
        if resident.get(shard) == -negative_use:
            return shard
