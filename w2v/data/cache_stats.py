"""What a shard cache counts: reads, hits, fetches and bytes, the reader's wait."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache started (subtract two to get an interval's)."""

    accesses: int = 0  # shards asked for by items the reader took
    hits: int = 0  # of those, already on disk when asked for
    fetches: int = 0
    fetched_bytes: int = 0
    wait_seconds: float = 0.0  # the reader's time waiting for shards
    peak_bytes: int = 0  # the most bytes reserved at once

    def minus(self, earlier: CacheStats) -> CacheStats:
        return CacheStats(
            self.accesses - earlier.accesses,
            self.hits - earlier.hits,
            self.fetches - earlier.fetches,
            self.fetched_bytes - earlier.fetched_bytes,
            self.wait_seconds - earlier.wait_seconds,
            self.peak_bytes,
        )

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 1.0
