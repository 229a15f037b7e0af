"""Benchmark the shard check that runs before training against single-thread hashlib on the same files, in one run.

First check: a folder of --gb of synthetic shards (--shard-mb each) with no record, by `check_local_shards`
(a thread pool; also swept over 1–4 threads), against hashlib.sha256 over the same files one after the other
in one thread (what `sha256sum` does; coreutils' own figure is reported too when it is installed). Each in the
page cache (warm) and with the files evicted from it first (cold, posix_fadvise DONTNEED: read from disk).
Second start: a folder of --small-shards tiny shards checked once, then checked again with its record.
Prints one JSON object; each figure is the best of --repeat rounds.
Usage: python benchmarks/verify.py [--gb 1.5] [--shard-mb 256] [--small-shards 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2v.data.integrity import check_local_shards, default_workers
from w2v.shards.manifest import Manifest, ShardEntry, write_manifest
from w2v.shards.table import sha256_file


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_fake_folder(folder: Path, sizes: list[int], seed: int = 0) -> list[Path]:
    """Shards of random bytes and a manifest with their sizes and sha256 (the check reads nothing else)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    entries, paths = [], []
    for number, size in enumerate(sizes):
        path = folder / f"b00-g00001-{number:04d}.arrow"
        with open(path, "wb") as f:
            for start in range(0, size, 64 << 20):
                f.write(rng.bytes(min(64 << 20, size - start)))
            f.flush()
            os.fsync(f.fileno())
        entries.append(ShardEntry(path.name, 0, 1, 1.0, size, sha256_file(path)))
        paths.append(path)
    write_manifest(folder, Manifest(sample_rate=16_000, generation=1, shards=tuple(entries), sources={}))
    return paths


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def best_seconds(run: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None) -> float:
    best = float("inf")
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def interleaved_best(
    runs: dict[str, Callable[[], object]], repeat: int, before: Callable[[], object] = lambda: None
) -> dict[str, float]:
    """Best wall time of each run over `repeat` rounds, the runs taking turns so drift hits them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for round_number in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], best_seconds(run, 1, before))
            log(f"round {round_number + 1}: {name} {best[name]:.2f} s")
    return best


def first_check(folder: Path, scratch: Path, workers: int) -> Callable[[], None]:
    def run() -> None:
        records = Path(tempfile.mkdtemp(dir=scratch, prefix="records-"))  # no record: every shard is hashed
        checked = check_local_shards(folder, records, workers)
        assert checked.hashed == checked.shards

    return run


def hashlib_one_thread(paths: list[Path]) -> None:
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        h.hexdigest()


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--shard-mb", type=float, default=256)
    parser.add_argument("--small-shards", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shard_bytes = int(args.shard_mb * 1e6)
    total = int(args.gb * 1e9)
    sizes = [shard_bytes] * (total // shard_bytes) + ([total % shard_bytes] if total % shard_bytes else [])

    with tempfile.TemporaryDirectory(prefix="w2v-bench-verify-") as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        paths = write_fake_folder(scratch / "big", sizes)
        log(f"{len(paths)} shards, {total / 1e9:.2f} GB written in {time.perf_counter() - started:.1f} s")
        folder = scratch / "big"
        workers = default_workers()
        warm: dict[str, Callable[[], object]] = {
            "ours_warm": first_check(folder, scratch, workers),
            "hashlib_1_thread_warm": lambda: hashlib_one_thread(paths),
            **{f"ours_{n}_threads_warm": first_check(folder, scratch, n) for n in (1, 2, 3, 4)},
        }
        cold: dict[str, Callable[[], object]] = {
            "ours_cold": first_check(folder, scratch, workers),
            "hashlib_1_thread_cold": lambda: hashlib_one_thread(paths),
        }
        seconds = interleaved_best(warm, args.repeat)
        seconds.update(interleaved_best(cold, args.repeat, before=lambda: evict(paths)))
        gbps = {name: total / 1e9 / value for name, value in seconds.items()}
        sweep = {str(n): round(gbps.pop(f"ours_{n}_threads_warm"), 3) for n in (1, 2, 3, 4)}
        if shutil.which("sha256sum"):
            command = ["sha256sum", *map(str, paths)]
            run_sha256sum = lambda: subprocess.run(command, check=True, capture_output=True)  # noqa: E731
            gbps["sha256sum_warm"] = total / 1e9 / best_seconds(run_sha256sum, args.repeat)

        small = scratch / "small"
        write_fake_folder(small, [4096] * args.small_shards, seed=1)
        records = scratch / "small-records"
        first_small = best_seconds(lambda: check_local_shards(small, records), 1)
        again = []
        for _ in range(max(5, args.repeat)):
            started = time.perf_counter()
            checked = check_local_shards(small, records)
            again.append(time.perf_counter() - started)
            assert checked.hashed == 0
        log(f"{args.small_shards} shards: first check {first_small:.3f} s, again {statistics.median(again):.4f} s")

    return {
        "benchmark": "verify",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "shards": len(sizes),
        "gigabytes": round(total / 1e9, 3),
        "threads": workers,
        "first_check_gb_per_s": {name: round(value, 3) for name, value in gbps.items()},
        "first_check_gb_per_s_by_threads_warm": sweep,
        "anchor": "hashlib.sha256 over the same files, one after the other, one thread, 8 MiB reads (sha256sum's way)",
        "ours_vs_anchor_warm": round(gbps["ours_warm"] / gbps["hashlib_1_thread_warm"], 3),
        "ours_vs_anchor_cold": round(gbps["ours_cold"] / gbps["hashlib_1_thread_cold"], 3),
        "small_shards": args.small_shards,
        "first_check_small_shards_seconds": round(first_small, 4),
        "second_start_small_shards_seconds": round(statistics.median(again), 4),
        "targets": {"second_start_small_shards_seconds": "< 1 for 1,000 shards", "ours_vs_anchor_warm": ">= 1"},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1), flush=True)
