"""What a bounded shard cache would download per epoch, by shuffle window, cache size and eviction policy.

A synthetic corpus (utterance lengths 2-15 s, consecutive utterances in one shard as prepare writes them) is
planned for two epochs as training plans it (w2v.data.plan, BatchConfig's defaults: 87.5 s micro-batches),
with `batch.shuffle_window_shards` = none (a full shuffle: the anchor) and a few window sizes. The shards
each micro-batch reads, in order, are replayed through a cache of 5, 10, 25 and 100 % of the corpus under
Belady's eviction ("plan": the batch plan is known in advance) and LRU (w2v.data.eviction.simulate). For each:

  fetched_first_epoch  bytes downloaded in the first epoch (an empty cache) / corpus bytes
  fetched_per_epoch    the same in the second epoch (the cache as the first left it): the steady state
  hit_rate             share of shard reads served from the cache, both epochs
  mixing               distinct shards per 64 consecutive micro-batches / the same under a full shuffle

No audio, no network: the figures are the plan's and the policy's, the download count a streaming run would
see with that cache, fetching whole shards. A window needs a cache that holds it with room to spare (a
cache of exactly W shards thrashes inside the window).
Usage: python benchmarks/cache_replay.py [--quick] [--utterances N] [--shards S] [--windows 4,16,64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from w2v.data.eviction import simulate
from w2v.data.plan import BatchConfig, plan_shard_windows

SAMPLE_RATE = 16_000
CACHE_SHARES = (0.05, 0.1, 0.25, 1.0)
MIXING_BATCHES = 64


def synthetic_corpus(utterances: int, shards: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Utterance lengths (samples) and the shard of each: consecutive utterances share a shard."""
    lengths = np.random.default_rng(seed).integers(2 * SAMPLE_RATE, 15 * SAMPLE_RATE, utterances)
    return lengths, np.arange(utterances) * shards // utterances


def shard_reads(batches: list[np.ndarray], shard_of: np.ndarray) -> list[int]:
    """The shards each micro-batch reads, in training order (a shard once per batch)."""
    return [int(s) for batch in batches for s in np.unique(shard_of[batch])]


def distinct_per_window(batches: list[np.ndarray], shard_of: np.ndarray, window: int) -> float:
    """Mean number of distinct shards over consecutive runs of `window` micro-batches."""
    counts = [
        np.unique(shard_of[np.concatenate(batches[start : start + window])]).size
        for start in range(0, len(batches) - window + 1, window)
    ]
    return float(np.mean(counts)) if counts else 0.0


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=400)
    parser.add_argument("--windows", default="4,16,64", help="shuffle_window_shards values to compare")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 utterances, 40 shards")
    args = parser.parse_args()
    if args.quick:
        args.utterances, args.shards, args.windows = 20_000, 40, "4"
    started = time.perf_counter()
    lengths, shard_of = synthetic_corpus(args.utterances, args.shards)
    sizes = {int(s): int(b) for s, b in enumerate(np.bincount(shard_of, weights=lengths * 2).astype(np.int64))}
    corpus_bytes = sum(sizes.values())
    windows: list[int | None] = [None, *(int(w) for w in args.windows.split(","))]
    full_mixing = None
    results = []
    for window in windows:
        config = BatchConfig(shuffle_window_shards=window)
        epochs = [plan_shard_windows(lengths, shard_of, config, seed=0, epoch=e) for e in (0, 1)]
        first = shard_reads(epochs[0], shard_of)
        reads = first + shard_reads(epochs[1], shard_of)
        distinct = distinct_per_window(epochs[0], shard_of, MIXING_BATCHES)
        full_mixing = full_mixing or distinct  # the first window is the full shuffle
        for share in CACHE_SHARES:
            for policy in ("plan", "lru"):
                limit = int(share * corpus_bytes)
                cold, both = simulate(first, sizes, limit, policy), simulate(reads, sizes, limit, policy)
                results.append(
                    {
                        "shuffle_window_shards": window,
                        "cache_share": share,
                        "policy": policy,
                        "fetched_first_epoch": round(cold.fetched_bytes / corpus_bytes, 3),
                        "fetched_per_epoch": round((both.fetched_bytes - cold.fetched_bytes) / corpus_bytes, 3),
                        "hit_rate": round(both.hit_rate, 4),
                        "mixing": round(distinct / full_mixing, 3),
                    }
                )
    return {
        "benchmark": "cache_replay",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "corpus": {"utterances": args.utterances, "shards": args.shards, "bytes": corpus_bytes},
        "anchor": "fetched_per_epoch: corpus bytes; mixing: distinct shards per 64 batches under a full shuffle",
        "micro_batches_per_epoch": len(epochs[0]),
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
