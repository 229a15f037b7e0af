"""Pretraining from a bucket through a bounded cache, against the same run on a local copy of the corpus.

A synthetic corpus (`--shards` shards of `--rows-per-shard` utterances of 1-2.5 s; speakers laid out in runs
of consecutive recordings, as a corpus prepared speaker by speaker is) is put on moto's S3 server on 127.0.0.1,
behind a proxy that adds `--latency-ms` to every request and shares `--mbps` of bandwidth between them, so
the figures resemble a real bucket's. The tiny preset trains for `--epochs` epochs of it, once from the
local folder (the anchor) and then streamed, for a cache of 5, 10, 25 and 100 % of the corpus, with
plan-aware (Belady) and LRU eviction. The shuffle window is the largest that leaves the cache two windows
(a full shuffle at 100 %): the knob a user would set for that cache. Rows with "shuffle": "full" train with
no window at `--full-shuffle-shares` (50 %: at 25 % the shards of the batches in flight, ~14, exceed the cache),
where a cache smaller than the corpus refetches shards all epoch long and the eviction rule decides how
often. For each:

  throughput_vs_local  audio seconds trained per second (median over log intervals) / the same for the same
                       run on the local folder, run just before it
  fetched_per_epoch    bytes downloaded / (corpus bytes × epochs)
  hit_rate             share of the shard reads batches made that found the shard cached
  data_wait_share      share of step time spent waiting for data (the loader's figure)
  mixing               distinct shards per 16 consecutive micro-batches / the same under a full shuffle
  speaker_mixing       the same for distinct speakers
  cache_bytes_max_vs_limit  the most shard bytes on the node's disk at a log record / the limit

With `--ranks N`, every run (the local anchor too) is N training processes of one node (accelerate launch,
DDP on the CPUs), sharing the node's cache folder and limit; bytes fetched are the node's, and eviction is the
plan's only (the command line's).

Usage: python benchmarks/streaming.py [--quick] [--shards 50] [--rows-per-shard 24] [--epochs 2]
                                      [--latency-ms 50] [--mbps 200] [--shares 0.05 0.1 0.25 1]
                                      [--full-shuffle-shares 0.5] [--ranks 1]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import s3fs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.data.shard_folders import write_shard_folder
from tests.servers import free_port, moto_s3_server
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig
from w2v.data.plan import BatchConfig, plan_shard_windows
from w2v.data.streaming import CacheLimit, StreamingOptions
from w2v.run.metrics import read_metrics
from w2v.storage import STORAGE_OPTIONS_ENV
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

CACHE_SHARES = (0.05, 0.1, 0.25, 1.0)
FULL_SHUFFLE_SHARES = (0.5,)
POLICIES = ("plan", "lru")
MIXING_BATCHES = 16
SPEAKER_RUN = 25  # consecutive recordings per speaker
CONFIG: dict[str, Any] = {
    "seed": 0,
    "log_every": 10,
    "checkpoint_every": 100_000,
    "eval_every": 100_000,
    "val_share": 0.0,
    "model": {"preset": "tiny"},
    "masking": {"num_negatives": 20},
    "batch": {"max_batch_seconds": 6.0, "max_sample_seconds": 2.0},
    "optim": {"lr": 2.0e-3, "warmup_steps": 10},
}


class _Slow:
    """A shared bandwidth budget: `take(n)` returns once n more bytes fit under `bytes_per_second`."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate, self.lock, self.free_at = bytes_per_second, threading.Lock(), time.monotonic()

    def take(self, count: int) -> None:
        with self.lock:
            start = max(self.free_at, time.monotonic())
            self.free_at = start + count / self.rate
            wait = self.free_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)


def _serve(upstream: str, latency_s: float, bytes_per_second: float, port: int) -> None:
    """The proxy's process: forward every request to `upstream`, each `latency_s` late, bodies throttled."""
    target = urlsplit(upstream)
    bandwidth = _Slow(bytes_per_second)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency_s)
            connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = target.netloc
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            self.send_response(response.status)
            dropped = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
            for name, value in response.getheaders():
                if name.lower() not in dropped:
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            for start in range(0, len(payload), 1 << 16):
                chunk = payload[start : start + (1 << 16)]
                bandwidth.take(len(chunk))
                self.wfile.write(chunk)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


@contextlib.contextmanager
def slow_proxy(upstream: str, latency_s: float, bytes_per_second: float) -> Iterator[str]:
    """An HTTP proxy on 127.0.0.1, in its own process (it must not take the training process' time), in front
    of `upstream`: each request is delayed by `latency_s`, response bodies share `bytes_per_second`."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(upstream, latency_s, bytes_per_second, port), daemon=True
    )
    process.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("the latency proxy did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.join(10)


def make_corpus(folder: Path, shards: int, rows_per_shard: int) -> Path:
    lengths = [int(x) for x in np.random.default_rng(1).integers(16_000, 40_000, shards * rows_per_shard)]

    def labels(k: int) -> tuple[None, str, None]:
        return None, f"speaker-{k // SPEAKER_RUN:03d}", None

    return write_shard_folder(folder, lengths, rows_per_shard=rows_per_shard, labels=labels, indexed=True)


def window_for(share: float, shards: int) -> int | None:
    """The largest shuffle window that leaves a cache of `share` room for two windows, with a margin for shards
    larger than the mean (None: all shards)."""
    return None if share >= 1.0 else max(1, int(0.9 * share * shards) // 2)


def mixing(corpus: ShardCorpus, window: int | None, seed: int) -> tuple[float, float]:
    """Distinct shards and speakers per MIXING_BATCHES consecutive micro-batches of epoch 0."""
    config = BatchConfig(**{**CONFIG["batch"], "shuffle_window_shards": window})
    batches = plan_shard_windows(corpus.num_samples, corpus.shard, config, seed, 0)
    speakers = np.unique(np.asarray(corpus.column("speaker"), dtype=object), return_inverse=True)[1]
    shard_counts, speaker_counts = [], []
    for start in range(0, len(batches) - MIXING_BATCHES + 1, MIXING_BATCHES):
        rows = np.concatenate(batches[start : start + MIXING_BATCHES])
        shard_counts.append(np.unique(corpus.shard[rows]).size)
        speaker_counts.append(np.unique(speakers[rows]).size)
    return float(np.mean(shard_counts)), float(np.mean(speaker_counts))


def batches_per_epoch(corpus: ShardCorpus, window: int | None) -> int:
    config = BatchConfig(**{**CONFIG["batch"], "shuffle_window_shards": window})
    return len(plan_shard_windows(corpus.num_samples, corpus.shard, config, CONFIG["seed"], 0))


def train(
    shards: list[str], run: Path, steps: int, window: int | None, ranks: int = 1, **kwargs: Any
) -> dict[str, float]:
    """Train the tiny preset for `steps` updates, in this process or as `ranks` processes of one node; the run's
    throughput, data wait and cache figures."""
    values = {**CONFIG, "max_steps": steps, "batch": {**CONFIG["batch"], "shuffle_window_shards": window}}
    started = time.perf_counter()
    if ranks == 1:
        pretrain(TrainConfig.from_dict(values), shards, run, loader=LoaderConfig(num_workers=1), resume="never",
                 **kwargs)  # fmt: skip
    else:
        launch(values, shards, run, ranks, **kwargs)
    seconds = time.perf_counter() - started
    records = [r for r in read_metrics(run) if "audio_seconds_per_second" in r][1:]  # the first holds start-up
    figures = {
        "audio_seconds_per_second": float(np.median([r["audio_seconds_per_second"] for r in records])),
        "data_wait_share": float(np.mean([r["data_wait_share"] for r in records])),
        "seconds": seconds,
    }
    if records and "cache_fetched_bytes" in records[0]:
        every = [r for r in read_metrics(run) if "cache_fetched_bytes" in r]
        figures["fetched_bytes"] = float(sum(r["cache_fetched_bytes"] for r in every))
        reads = sum(r["cache_reads"] for r in every)
        figures["hit_rate"] = sum(r["cache_hit_rate"] * r["cache_reads"] for r in every) / reads if reads else 1.0
        figures["cache_bytes_max_vs_limit"] = max(r["cache_bytes"] / r["cache_limit_bytes"] for r in every)
    return figures


def launch(
    values: dict[str, Any],
    shards: list[str],
    run: Path,
    ranks: int,
    storage_options: dict[str, Any] | None = None,
    streaming: StreamingOptions | None = None,
    cache_dir: Path | None = None,
) -> None:
    """`w2v pretrain` as `ranks` DDP processes on this machine's CPUs (accelerate launch), as on a node."""
    config_file = run.with_name(run.name + ".yaml")
    config_file.write_text(json.dumps(values))  # JSON is YAML
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
               str(ranks), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "w2v", "pretrain", "--shards", *shards, "--output", str(run), "--config", str(config_file),
               "--workers", "1", "--resume", "never"]  # fmt: skip
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    if streaming is not None and storage_options is not None:
        assert streaming.limit.bytes is not None and streaming.policy == "plan"  # what the command line sets
        secret = {k: storage_options[k] for k in ("key", "secret")}
        public = {k: v for k, v in storage_options.items() if k not in secret}
        command += ["--cache-limit", str(streaming.limit.bytes), "--storage-options", json.dumps(public)]
        command += ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
        environment[STORAGE_OPTIONS_ENV] = json.dumps(secret)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} ranks failed: {done.stderr[-3000:]}")


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=50)
    parser.add_argument("--rows-per-shard", type=int, default=24)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--mbps", type=float, default=200.0, help="bandwidth, megabytes per second")
    parser.add_argument("--shares", type=float, nargs="*", default=list(CACHE_SHARES), help="cache sizes (windowed)")
    parser.add_argument("--full-shuffle-shares", type=float, nargs="*", default=list(FULL_SHUFFLE_SHARES))
    parser.add_argument("--ranks", type=int, default=1, help="training processes of one node (plan eviction only)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 shards, 0.5 epochs, 10 and 100 %%")
    args = parser.parse_args()
    settings: list[tuple[float, str]] = [(share, "full") for share in args.full_shuffle_shares if share < 1.0]
    settings += [(share, "window") for share in args.shares]
    if args.quick:
        args.shards, args.epochs, settings = 20, 0.5, [(0.1, "window"), (1.0, "window")]
    logging.disable(logging.WARNING)  # the tiny model's health warnings are not the subject here
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="w2v-streaming-bench-"))
    try:
        folder = make_corpus(work / "corpus", args.shards, args.rows_per_shard)
        corpus = ShardCorpus(folder)
        corpus_bytes = sum(p.stat().st_size for p in folder.glob("b00-*.arrow"))
        full_shards, full_speakers = mixing(corpus, None, CONFIG["seed"])
        results = []
        with moto_s3_server() as s3:
            bucket = s3fs.S3FileSystem(**s3.storage_options)
            bucket.mkdir("bench")
            for path in folder.iterdir():
                bucket.put(str(path), f"bench/corpus/{path.name}")
            with slow_proxy(s3.endpoint_url, args.latency_ms / 1000, args.mbps * 1e6) as endpoint:
                options = {**s3.storage_options, "endpoint_url": endpoint}
                for share, shuffle in settings:
                    window = window_for(share, args.shards) if shuffle == "window" else None
                    # val_share 0: every batch trains; each update reads one micro-batch per rank
                    steps = max(10, round(args.epochs * batches_per_epoch(corpus, window) / args.ranks))
                    shard_mix, speaker_mix = mixing(corpus, window, CONFIG["seed"])
                    for policy in POLICIES if args.ranks == 1 else ("plan",):
                        # The anchor runs just before, on the same input: on a shared machine the speed drifts
                        # over minutes, and an anchor taken once per window moved the ratio by ±15 %.
                        name = f"{share}-{shuffle}-{policy}"
                        local = train([str(folder)], work / f"local-{name}", steps, window, args.ranks)
                        run = work / f"stream-{name}"
                        streaming = StreamingOptions(limit=CacheLimit(bytes=int(share * corpus_bytes)), policy=policy)
                        got = train(["s3://bench/corpus"], run, steps, window, args.ranks, storage_options=options,
                                    streaming=streaming, cache_dir=work / f"cache-{name}")  # fmt: skip
                        print(json.dumps({"setting": name, **got}), file=sys.stderr, flush=True)
                        results.append({
                            "cache_share": share,
                            "policy": policy,
                            "shuffle": "full" if window is None else "window",
                            "shuffle_window_shards": window,
                            "steps": steps,
                            "throughput_vs_local": round(got["audio_seconds_per_second"]
                                                         / local["audio_seconds_per_second"], 3),
                            "fetched_per_epoch": round(got["fetched_bytes"] / corpus_bytes / args.epochs, 3),
                            "hit_rate": round(got["hit_rate"], 4),
                            "data_wait_share": round(got["data_wait_share"], 4),
                            "local_data_wait_share": round(local["data_wait_share"], 4),
                            "cache_bytes_max_vs_limit": round(got["cache_bytes_max_vs_limit"], 3),
                            "mixing": round(shard_mix / full_shards, 3),
                            "speaker_mixing": round(speaker_mix / full_speakers, 3),
                        })  # fmt: skip
                        shutil.rmtree(run)
                        shutil.rmtree(work / f"local-{name}")
                        shutil.rmtree(work / f"cache-{name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "streaming",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "corpus": {
            "shards": args.shards,
            "utterances": len(corpus),
            "bytes": corpus_bytes,
            "seconds": round(corpus.seconds, 1),
        },
        "store": {"latency_ms": args.latency_ms, "megabytes_per_second": args.mbps},
        "epochs": args.epochs,
        "ranks": args.ranks,
        "anchor": "throughput: the same run on the local folder; fetched: corpus bytes per epoch; mixing: a full "
        "shuffle's distinct shards (speakers) per 16 micro-batches",
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
