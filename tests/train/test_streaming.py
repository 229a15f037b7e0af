"""Pretraining from a bucket (moto's S3 on 127.0.0.1) through a bounded cache: the disk stays within the limit,
the weights are those of the same run on a local copy, and a preempted run resumes from the bucket alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import s3fs
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.data.shard_folders import write_shard_folder
from tests.data.test_shard_cache import DiskWatcher
from tests.kill import kill_when, mirrored_at_least
from tests.servers import S3Server, moto_s3_server
from w2v.cli import app
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig
from w2v.data.streaming import CacheLimit, CorpusCache, StreamingOptions, make_cache, open_streamed
from w2v.errors import W2VError
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.harness import StepReport
from w2v.run.metrics import read_metrics
from w2v.run.mirror import LATEST
from w2v.shards.manifest import read_manifest
from w2v.storage import STORAGE_OPTIONS_ENV
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

pytestmark = [pytest.mark.slow, pytest.mark.network]
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
seed: 4
deterministic: true
max_steps: 30
log_every: 5
checkpoint_every: 10
eval_every: 10
keep_last: 2
val_share: 0.1
max_val_batches: 2
model: {preset: tiny}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0, shuffle_window_shards: 2}
masking: {num_negatives: 20}
optim: {lr: 2.0e-3, warmup_steps: 5}
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 shards of 10 utterances (1–2.5 s), with the training index prepare writes."""
    lengths = [int(x) for x in np.random.default_rng(1).integers(16_000, 40_000, 120)]
    return write_shard_folder(tmp_path_factory.mktemp("stream-shards"), lengths, rows_per_shard=10, indexed=True)


@pytest.fixture(scope="module")
def s3(shards: Path) -> Iterator[S3Server]:
    with moto_s3_server() as server:
        fs = s3fs.S3FileSystem(**server.storage_options)  # type: ignore[arg-type]
        fs.mkdir("corpus")
        for path in shards.iterdir():
            fs.put(str(path), f"corpus/night/{path.name}")
        yield server


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def local_run(shards: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run on the local folder: what every streamed run must end on."""
    run = tmp_path_factory.mktemp("local-run")
    pretrain(TrainConfig.from_yaml(config_file), [str(shards)], run, loader=LoaderConfig(num_workers=0))
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(complete_checkpoints(run)[-1] / "model" / "model.safetensors"))


def _assert_same_weights(run: Path, reference: Path) -> None:
    got, expected = _weights(run), _weights(reference)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def _shard_bytes(shards: Path) -> list[int]:
    return [entry.bytes for entry in read_manifest(shards).shards]


def test_a_streamed_run_stays_within_its_disk_budget_and_ends_on_the_local_runs_weights(
    s3: S3Server, shards: Path, config_file: Path, local_run: Path, tmp_path: Path
) -> None:
    sizes = _shard_bytes(shards)
    limit = int(0.35 * sum(sizes))  # 4 of 12 shards: two windows of 2
    run, cache = tmp_path / "run", tmp_path / "cache"
    streamed = open_streamed("s3://corpus/night", cache, s3.storage_options)
    assert not list(streamed.shards_dir.glob("*.arrow"))  # opening fetches the metadata only
    with DiskWatcher(streamed.shards_dir) as watcher:
        pretrain(TrainConfig.from_yaml(config_file), ["s3://corpus/night"], run, cache_dir=cache,
                 storage_options=s3.storage_options, loader=LoaderConfig(num_workers=2),
                 streaming=StreamingOptions(limit=CacheLimit(bytes=limit)))  # fmt: skip
    assert 0 < watcher.peak <= limit + max(sizes)
    _assert_same_weights(run, local_run)
    records = [r for r in read_metrics(run) if "cache_hit_rate" in r]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    fetched = sum(r["cache_fetched_bytes"] for r in records)
    assert sum(sizes) * 0.5 <= fetched <= 2 * sum(sizes)  # 30 steps: about one pass, not one per batch
    assert all(r["cache_bytes"] <= limit + max(sizes) and r["cache_limit_bytes"] == limit for r in records)
    assert [r["step"] for r in read_metrics(run) if "val_loss" in r] == [10, 20, 30]  # held-out read from memory


def test_a_preempted_streaming_run_resumes_from_the_bucket_on_an_empty_disk(
    s3: S3Server, shards: Path, config_file: Path, local_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"  # its shard cache is RUN/shard-cache: the disk that goes with the machine
    options = {"endpoint_url": s3.endpoint_url}  # credentials come through the environment
    environment = {STORAGE_OPTIONS_ENV: json.dumps({"key": "testing", "secret": "testing"})}
    limit = int(0.35 * sum(_shard_bytes(shards)))
    command = [sys.executable, "-m", "w2v", "pretrain", "--shards", "s3://corpus/night", "--output", str(run),
               "--config", str(config_file), "--workers", "1", "--cache-limit", str(limit),
               "--upload-to", "s3://runs/streamed", "--storage-options", json.dumps(options)]  # fmt: skip
    bucket = s3fs.S3FileSystem(**s3.storage_options, skip_instance_cache=True)  # type: ignore[arg-type]

    kill_when(
        command,
        mirrored_at_least(bucket, "runs/streamed/checkpoints", 20),
        "second checkpoint in the bucket",
        env=environment,
    )
    assert bucket.cat_file(f"runs/streamed/checkpoints/{LATEST}").decode().strip() == "step-00000020"
    assert list((run / "shard-cache").rglob("*.arrow"))  # it was streaming
    shutil.rmtree(run)  # the machine is gone, and its disk (run folder and shard cache) with it
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **environment}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_weights(run, local_run)
    assert [r["step"] for r in read_metrics(run) if "contrastive_loss" in r] == [5, 10, 15, 20, 25, 30]


def test_a_bucket_gone_mid_run_stops_it_at_its_last_update_and_the_rerun_ends_on_the_local_weights(
    s3: S3Server, shards: Path, config_file: Path, local_run: Path, tmp_path: Path
) -> None:
    bucket = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    names = [path.name for path in shards.iterdir()]
    for name in names:
        bucket.put(str(shards / name), f"corpus/gone/{name}")
    limit = int(0.35 * sum(_shard_bytes(shards)))  # 4 of 12 shards: the rest of the epoch must be fetched
    config, run = TrainConfig.from_yaml(config_file), tmp_path / "run"

    def unplug(report: StepReport) -> None:  # the bucket's shards go away after update 12
        if report.step == 12:
            bucket.rm([f"corpus/gone/{name}" for name in names if name.startswith("b00-")])

    with pytest.raises(W2VError) as stopped:
        pretrain(config, ["s3://corpus/gone"], run, storage_options=s3.storage_options, on_step=unplug,
                 loader=LoaderConfig(num_workers=0),
                 streaming=StreamingOptions(limit=CacheLimit(bytes=limit), retry_seconds=1.0))  # fmt: skip
    message = str(stopped.value)
    saved = complete_checkpoints(run)[-1]
    assert "\n" not in message and "s3://corpus/gone/b00-" in message and "could not be fetched for 1 s" in message
    assert f"the run stopped at {saved}" in message
    assert int(saved.name.removeprefix("step-")) >= 12  # the last update, not the periodic checkpoint at 10
    for name in names:
        bucket.put(str(shards / name), f"corpus/gone/{name}")
    pretrain(config, ["s3://corpus/gone"], run, storage_options=s3.storage_options, loader=LoaderConfig(num_workers=0),
             streaming=StreamingOptions(limit=CacheLimit(bytes=limit)))  # fmt: skip
    _assert_same_weights(run, local_run)


def _streamed(s3: S3Server, shards: Path, tmp_path: Path) -> tuple[ShardCorpus, CorpusCache]:
    """The bucket's corpus, streamed through a cache of 35 % of it."""
    streamed = open_streamed("s3://corpus/night", tmp_path, s3.storage_options)
    corpus = ShardCorpus(streamed.folder, streamed.shards_dir)
    limit = CacheLimit(bytes=int(0.35 * sum(_shard_bytes(shards))))
    return corpus, make_cache([streamed], StreamingOptions(limit=limit))


def test_a_loader_dropped_midway_releases_the_shards_its_batches_held(
    s3: S3Server, shards: Path, tmp_path: Path
) -> None:
    corpus, cache = _streamed(s3, shards, tmp_path)
    config = BatchConfig(max_batch_seconds=6.0, shuffle_window_shards=2)
    try:
        batches = iter(make_loader([corpus], config, seed=0, loader=LoaderConfig(num_workers=1), cache=cache))
        for _ in range(3):
            next(batches)
        assert cache.cache.pinned_bytes() > 0  # the batches the worker is preparing hold their shards
        del batches  # what the out-of-memory guard does before reading the update again in pieces
        assert cache.cache.pinned_bytes() == 0
    finally:
        cache.close()


def test_a_rank_streaming_for_its_node_gets_its_own_batches_and_pins_none_of_the_others(
    s3: S3Server, shards: Path, tmp_path: Path
) -> None:
    corpus, cache = _streamed(s3, shards, tmp_path)
    config = BatchConfig(max_batch_seconds=6.0, shuffle_window_shards=2)
    local = make_loader([ShardCorpus(shards)], config, seed=0, rank=1, world_size=4, max_batches=12,
                        loader=LoaderConfig(num_workers=0))  # fmt: skip
    try:
        node = make_loader([corpus], config, seed=0, rank=1, world_size=4, max_batches=12, node_ranks=[0, 1],
                           loader=LoaderConfig(num_workers=0), cache=cache)  # fmt: skip
        ours = [(b.position, b.indices) for b in node]
        assert ours == [(b.position, b.indices) for b in local] and len(ours) == 12
        assert cache.cache.stats().accesses > 0 and cache.cache.pinned_bytes() == 0  # rank 0's were passed
        with pytest.raises(W2VError, match=r"rank 1 is not among the node's ranks \[2, 3\]"):
            make_loader([corpus], config, seed=0, rank=1, world_size=4, node_ranks=[2, 3], cache=cache)
    finally:
        cache.close()


def test_two_runs_cannot_share_a_cache_folder_and_the_refused_one_touches_nothing(s3: S3Server, tmp_path: Path) -> None:
    first = open_streamed("s3://corpus/night", tmp_path, s3.storage_options)
    stray = first.shards_dir / "b00-g00000-0000.arrow"  # a shard of a generation the manifest no longer lists
    stray.write_bytes(b"old")
    cache = make_cache([first], StreamingOptions(limit=CacheLimit(bytes=10**6)))
    assert not stray.exists()
    arriving = first.shards_dir / (first.remote[0].local.name + ".part")  # the first run's transfer under way
    arriving.write_bytes(b"half")
    try:
        again = open_streamed("s3://corpus/night", tmp_path, s3.storage_options)
        with pytest.raises(W2VError, match=r"another run is reading shards through this cache folder"):
            make_cache([again], StreamingOptions(limit=CacheLimit(bytes=10**6)))
        assert arriving.read_bytes() == b"half"
    finally:
        cache.close()
    make_cache([first], StreamingOptions(limit=CacheLimit(bytes=10**6))).close()  # free again once closed


def test_held_out_audio_is_read_once_into_memory_and_matches_the_shards(
    s3: S3Server, shards: Path, tmp_path: Path
) -> None:
    from w2v.data.corpus import split_held_out
    from w2v.data.streaming import load_held_out

    streamed = open_streamed("s3://corpus/night", tmp_path, s3.storage_options)
    corpus = ShardCorpus(streamed.folder, streamed.shards_dir)
    _, held = split_held_out(corpus, 0.2)
    assert held is not None
    cache = make_cache([streamed], StreamingOptions(limit=CacheLimit(bytes=max(_shard_bytes(shards)))))
    try:
        loaded = load_held_out(held, 0, cache, budget_seconds=3.0, seed=0)
        assert cache.cache.stats().fetches <= len(_shard_bytes(shards))
    finally:
        cache.close()
    assert 3.0 <= loaded.seconds < held.seconds  # the fewest shards holding 3 s, not all of it
    local = ShardCorpus(shards)
    places = zip(local.shard.tolist(), local.row.tolist(), strict=True)
    ids = {place: k for k, place in enumerate(places)}
    for k in range(len(loaded)):
        original = ids[(int(loaded.shard[k]), int(loaded.row[k]))]
        assert np.array_equal(loaded.audio(k), local.audio(original))


def test_a_probe_sample_pins_the_fewest_seeded_shards_that_fit_and_lets_them_go(
    s3: S3Server, shards: Path, tmp_path: Path
) -> None:
    from w2v.data.streaming import pinned_sample

    sizes = _shard_bytes(shards)
    streamed = open_streamed("s3://corpus/night", tmp_path, s3.storage_options)
    corpus = ShardCorpus(streamed.folder, streamed.shards_dir)
    limit = int(3.5 * max(sizes))
    cache = make_cache([streamed], StreamingOptions(limit=CacheLimit(bytes=limit)))
    local = ShardCorpus(shards)
    try:
        with pinned_sample(corpus, 0, cache, utterances=None, seed=3) as sample:
            chosen = np.unique(sample.shard)
            assert len(chosen) == 3 and cache.cache.pinned_bytes() == sum(sizes[s] for s in chosen) <= limit
            assert len(sample) == 30 and all((streamed.shards_dir / corpus.paths[s].name).is_file() for s in chosen)
            in_local = np.flatnonzero(np.isin(local.shard, chosen))
            assert sample.column("id") == [local.column("id")[k] for k in in_local]
        assert cache.cache.pinned_bytes() == 0
        with pinned_sample(corpus, 0, cache, utterances=15, seed=3) as fewer:
            assert len(np.unique(fewer.shard)) == 2  # 10 utterances a shard
            assert set(np.unique(fewer.shard)) < set(chosen)  # the same seeded order
    finally:
        cache.close()


def test_a_cache_limit_the_command_line_cannot_read_fails_in_one_line(config_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "--shards", "s3://corpus/night", "--output", str(tmp_path / "run"),
                                 "--config", str(config_file), "--cache-limit", "lots"])  # fmt: skip
    assert result.exit_code != 0
    assert "--cache-limit lots: expected bytes (500G, 2.5TB, 800000000), a share (10%) or auto" in result.output


DISTRIBUTED = """\
seed: 5
deterministic: true
max_steps: 12
log_every: 4
checkpoint_every: 6
model: {preset: tiny, overrides: {layerdrop: 0.0}}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0, shuffle_window_shards: 2}
masking: {num_negatives: 20}
optim: {lr: 1.0e-3, warmup_steps: 3}
"""


def test_two_ranks_streaming_with_a_cache_each_match_one_local_process_accumulating_two(
    s3: S3Server, shards: Path, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(DISTRIBUTED)
    limit = int(0.35 * sum(_shard_bytes(shards)))  # the node's, which its two ranks share
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "w2v", "pretrain"]
    command += ["--shards", "s3://corpus/night", "--output", str(tmp_path / "two"), "--config", str(config_file)]
    command += ["--workers", "0", "--cache-limit", str(limit)]
    command += ["--storage-options", json.dumps({"endpoint_url": s3.endpoint_url})]
    secret = json.dumps({"key": "testing", "secret": "testing"})
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1", STORAGE_OPTIONS_ENV: secret}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    caches = [p.name for p in (tmp_path / "two" / "shard-cache").glob("*/shards*")]
    assert caches == ["shards"]  # one folder for the node's ranks
    records = read_metrics(tmp_path / "two")
    # Each rank counts the whole limit for what it holds, and the node's disk (each shard once, however many
    # ranks hold it) stays within it, but for a shard per rank that a rank's reader waited on.
    assert all(record["cache_limit_bytes"] == limit for record in records)
    assert all(record["cache_bytes"] <= limit + 2 * max(_shard_bytes(shards)) for record in records)
    # Both ranks read the same windows: a shard one fetched, the other found there. The node fetched 67 % of the
    # corpus (summed over the ranks in the records); a folder per rank made each fetch that much (134 %).
    fetched = sum(record["cache_fetched_bytes"] for record in records)
    assert fetched < sum(_shard_bytes(shards))

    one = TrainConfig.from_yaml(config_file, ["gradient_accumulation=2"])
    pretrain(one, [str(shards)], tmp_path / "one", loader=LoaderConfig(num_workers=0))
    two_metrics, one_metrics = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert [r["step"] for r in two_metrics] == [4, 8, 12]
    for a, b in zip(two_metrics, one_metrics, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    two = _weights(tmp_path / "two")
    for name, tensor in _weights(tmp_path / "one").items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-3, atol=1e-5, msg=name)

    # Elastic: the two ranks' checkpoint at step 6, resumed by one streaming process accumulating two.
    halfway = tmp_path / "two" / "checkpoints" / "step-00000006"
    elastic = tmp_path / "elastic"
    shutil.copytree(halfway, elastic / "checkpoints" / halfway.name)
    streaming = StreamingOptions(limit=CacheLimit(bytes=limit))
    pretrain(one, ["s3://corpus/night"], elastic, storage_options=s3.storage_options,
             loader=LoaderConfig(num_workers=0), streaming=streaming)  # fmt: skip
    assert [r["step"] for r in read_metrics(elastic)] == [8, 12]
    resumed = _weights(elastic)
    for name, tensor in _weights(tmp_path / "one").items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
