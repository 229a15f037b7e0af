"""Checkpoints mirrored to a bucket as they are written: a preempted machine's successor resumes from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s3fs
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.data.shard_folders import write_shard_folder
from tests.kill import kill_when, mirrored_at_least
from tests.servers import free_port, moto_s3_server
from w2v.cli import app
from w2v.data.loader import LoaderConfig
from w2v.run.checkpoint import complete_checkpoints, stale_checkpoints
from w2v.run.metrics import read_metrics
from w2v.run.mirror import (
    LATEST,
    MirrorConfig,
    MirrorError,
    bring_back_best,
    bring_back_newest,
    fetch_checkpoint,
    publish_checkpoint,
)
from w2v.storage import STORAGE_OPTIONS_ENV
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain
from w2v.upload import MARKER, RetryPolicy, file_sha256

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
seed: 4
deterministic: true
max_steps: 30
log_every: 5
checkpoint_every: 10
keep_last: 2
model: {preset: tiny}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0}
masking: {num_negatives: 20}
optim: {lr: 2.0e-3, warmup_steps: 5}
"""
FAST = RetryPolicy(attempts=3, first_wait_seconds=0.1, max_wait_seconds=0.5)
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lengths = [int(x) for x in np.random.default_rng(1).integers(16_000, 40_000, 40)]
    return write_shard_folder(tmp_path_factory.mktemp("mirror-shards"), lengths)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def mirrored(shards: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted run whose checkpoints were mirrored to a local folder standing in for a bucket."""
    run, bucket = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("bucket") / "nightly"
    mirror = MirrorConfig(str(bucket), keep_last=2, retry=FAST)
    config = TrainConfig.from_yaml(config_file)
    pretrain(config, [str(shards)], run, loader=LoaderConfig(num_workers=0), mirror=mirror)
    return run, bucket


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in folder.rglob("*") if p.is_file()}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(complete_checkpoints(run)[-1] / "model" / "model.safetensors"))


def test_every_checkpoint_reaches_the_bucket_checked_and_the_bucket_keeps_the_last_two(
    mirrored: tuple[Path, Path],
) -> None:
    run, bucket = mirrored
    remote = bucket / "checkpoints"
    assert (remote / LATEST).read_text().strip() == "step-00000030"
    assert sorted(p.name for p in remote.iterdir() if p.is_dir()) == ["step-00000020", "step-00000030"]
    for name in ("step-00000020", "step-00000030"):
        listed = json.loads((remote / name / MARKER).read_text())["files"]
        for relative, expected in listed.items():
            assert file_sha256(remote / name / relative) == expected["sha256"], relative
    local = complete_checkpoints(run)[-1]
    for path in local.rglob("*"):
        if path.is_file():
            assert (remote / local.name / path.relative_to(local)).read_bytes() == path.read_bytes()
    # The learning curve travels with each checkpoint, up to its step.
    steps = [json.loads(line)["step"] for line in (remote / "step-00000030" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert not (run / ".mirror").exists()  # the upload snapshots are gone


def test_a_newer_checkpoint_in_the_bucket_is_brought_back_and_an_older_one_is_not(
    mirrored: tuple[Path, Path], tmp_path: Path
) -> None:
    run, bucket = mirrored
    mirror = MirrorConfig(str(bucket), retry=FAST)
    assert bring_back_newest(mirror, run) is None  # the run folder holds step 30 already
    fresh = tmp_path / "fresh"
    fetched = bring_back_newest(mirror, fresh)
    assert fetched == fresh / "checkpoints" / "step-00000030"
    assert complete_checkpoints(fresh) == [fetched]
    assert [r["step"] for r in read_metrics(fresh)] == [5, 10, 15, 20, 25, 30]
    assert (fetched / "model" / "model.safetensors").read_bytes() == (
        complete_checkpoints(run)[-1] / "model" / "model.safetensors"
    ).read_bytes()


def test_a_damaged_file_in_the_bucket_is_refused_with_its_name(mirrored: tuple[Path, Path], tmp_path: Path) -> None:
    _, bucket = mirrored
    damaged = tmp_path / "bucket"
    shutil.copytree(bucket, damaged)
    trainer = damaged / "checkpoints" / "step-00000030" / "trainer.json"
    trainer.write_text(trainer.read_text().replace('"step": 30', '"step": 31'))
    with pytest.raises(MirrorError, match=r"step-00000030/trainer\.json: differs from its upload marker"):
        fetch_checkpoint(MirrorConfig(str(damaged), retry=FAST), "step-00000030", tmp_path / "run" / "checkpoints")
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # nothing half-fetched is left to resume from


def test_a_bucket_that_stops_answering_stops_the_run_at_a_checkpoint_and_says_so(
    shards: Path, config_file: Path, tmp_path: Path
) -> None:
    dead = {"endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "testing", "secret": "testing"}
    mirror = MirrorConfig("s3://runs/gone", dead, retry=RetryPolicy(attempts=2, first_wait_seconds=0.1))
    # The failure is noticed at the next checkpoint after it, or at the end (how long a dead endpoint takes to
    # fail depends on the machine: on a busy CI one it outlasted 300 steps).
    config = TrainConfig.from_yaml(config_file)
    with pytest.raises(MirrorError, match=r"not mirrored to s3://runs/gone: .*failed 2 times") as caught:
        pretrain(config, [str(shards)], tmp_path, loader=LoaderConfig(num_workers=0), mirror=mirror, resume="never")
    assert "\n" not in str(caught.value)
    saved = complete_checkpoints(tmp_path)  # what was saved before the stop is kept, and named
    assert saved and f"the run stopped at {saved[-1]}" in str(caught.value)
    assert "credentials" not in repr(mirror) and "testing" not in repr(mirror)


def test_a_run_that_starts_over_replaces_the_newer_checkpoints_of_the_history_it_replaced(
    mirrored: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bucket = mirrored
    copy = tmp_path / "bucket"
    shutil.copytree(bucket, copy)
    older = tmp_path / "snapshot" / "step-00000010"
    shutil.copytree(copy / "checkpoints" / "step-00000020", older)
    (older / MARKER).unlink()
    publish_checkpoint(older, MirrorConfig(str(copy), keep_last=2, retry=FAST))
    assert (copy / "checkpoints" / LATEST).read_text().strip() == "step-00000010"
    assert sorted(p.name for p in (copy / "checkpoints").iterdir() if p.is_dir()) == ["step-00000010"]
    # The same rule on the run's own disk: a checkpoint saved after starting over outlives the old ones.
    found = [tmp_path / f"step-{n:08d}" for n in (10, 20, 30)]
    assert stale_checkpoints(found, found[0], keep_last=2) == found[1:]
    assert stale_checkpoints(found, found[2], keep_last=2) == found[:1]


@pytest.mark.network
def test_a_preempted_run_resumes_from_the_bucket_on_an_empty_disk_and_ends_on_the_same_weights(
    mirrored: tuple[Path, Path], shards: Path, config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    with moto_s3_server() as server:
        options = {"endpoint_url": server.endpoint_url}  # credentials come through the environment
        secret = {"key": "testing", "secret": "testing"}
        environment = {STORAGE_OPTIONS_ENV: json.dumps(secret)}
        command = [sys.executable, "-m", "w2v", "pretrain", "--shards", str(shards), "--output", str(run),
                   "--config", str(config_file), "--workers", "1", "--upload-to", "s3://runs/nightly",
                   "--storage-options", json.dumps(options)]  # fmt: skip
        bucket = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)  # type: ignore[arg-type]

        kill_when(
            command,
            mirrored_at_least(bucket, "runs/nightly/checkpoints", 20),
            "second checkpoint in the bucket",
            env=environment,
        )
        # Killed between its second and third checkpoints (else there is nothing left to resume).
        assert bucket.cat_file(f"runs/nightly/checkpoints/{LATEST}").decode().strip() == "step-00000020"
        before = bucket.cat_file("runs/nightly/checkpoints/step-00000020/metrics.jsonl").decode().splitlines()
        shutil.rmtree(run)  # the machine is gone, and its disk with it
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **environment}
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert bucket.cat_file(f"runs/nightly/checkpoints/{LATEST}").decode().strip() == "step-00000030"
    uninterrupted, _ = mirrored
    resumed, reference = _weights(run), _weights(uninterrupted)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    assert [r["step"] for r in read_metrics(run)] == [5, 10, 15, 20, 25, 30]  # the curve survived the machine
    # Steps 1-20 were not trained again: their records (wall-clock throughput included) are the killed run's.
    assert (run / "metrics.jsonl").read_text().splitlines()[:4] == before


def test_the_best_model_is_mirrored_and_a_successor_that_lost_it_brings_it_back(shards: Path, tmp_path: Path) -> None:
    path = tmp_path / "validated.yaml"
    path.write_text(CONFIG.replace("max_steps: 30", "max_steps: 20") + "val_share: 0.3\neval_every: 10\n")
    config, run, bucket = TrainConfig.from_yaml(path), tmp_path / "run", tmp_path / "bucket" / "nightly"
    mirror = MirrorConfig(str(bucket), retry=FAST)
    pretrain(config, [str(shards)], run, loader=LoaderConfig(num_workers=0), mirror=mirror)
    local = _hashes(run / "best")
    listed = json.loads((bucket / "best" / MARKER).read_text())["files"]
    assert {name: entry["sha256"] for name, entry in listed.items()} == local
    shutil.rmtree(run)  # the machine is gone, RUN/best with it
    pretrain(config, [str(shards)], run, loader=LoaderConfig(num_workers=0), mirror=mirror)  # resumes at 20
    assert _hashes(run / "best") == local
    # A best newer than the checkpoint resumed belongs to a history the run replaced: left in the bucket.
    assert bring_back_best(mirror, tmp_path / "older", step=5) is None
    assert not (tmp_path / "older" / "best").exists()


def test_bad_storage_options_for_the_mirror_fail_in_one_line_without_repeating_a_secret(
    shards: Path, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = ["pretrain", "--shards", str(shards), "--output", str(tmp_path / "run"), "--config", str(config_file)]
    command += ["--upload-to", "s3://runs/nightly"]
    on_command_line = runner.invoke(app, [*command, "--storage-options", '{"secret": "s3cr3t-on-argv"}'])
    assert on_command_line.exit_code == 2
    assert "--storage-options: secret must not be given on the command line" in on_command_line.output
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, '{"secret": "s3cr3t-in-env"')  # the closing brace is missing
    broken = runner.invoke(app, command)
    assert broken.exit_code == 2 and "$W2V_STORAGE_OPTIONS: not JSON" in broken.output, broken.output
    assert "s3cr3t" not in broken.output
    assert not (tmp_path / "run" / "checkpoints").exists()
