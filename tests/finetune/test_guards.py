"""Fine-tuning has pretraining's guards: a non-finite batch is skipped, an out-of-memory step is retried in
pieces, repeated failures roll back and then stop with the remedy, and a resumed run (a killed one too) ends
on the weights of an uninterrupted one. Each for every task; synthetic labelled shards and a tiny model:
seconds per run (the kill, through the command line, runs for CTC only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import w2v.finetune.recipe as recipe
from tests.data.shard_folders import Labels, write_shard_folder
from tests.kill import kill_after_first_checkpoint
from w2v.data.collate import Batch
from w2v.data.loader import LoaderConfig
from w2v.doctor.run import diagnose_run
from w2v.errors import W2VError
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.recipe import finetune
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.harness import StepReport
from w2v.run.memory import SIMULATE_ENV
from w2v.run.metrics import read_metrics
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model

pytestmark = pytest.mark.slow
TASKS = pytest.mark.parametrize("task", ["ctc", "classify", "speaker"])
ROOT = Path(__file__).resolve().parents[2]
WORDS = ("red", "green", "blue")
LOADER = LoaderConfig(num_workers=0)
# 1.5 s utterances, 4 to a 6 s micro-batch: 24 training utterances make 6 micro-batches an epoch.
RATE, SECONDS = 16_000, 1.5


def _labels(k: int) -> Labels:
    return f"{WORDS[k % 3]} {WORDS[(k + 1) % 3]}", f"speaker-{k % 2}", WORDS[k % 3]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(train shards, valid shards, a pretrained tiny model folder)."""
    root = tmp_path_factory.mktemp("guarded-finetune")
    length = int(SECONDS * RATE)
    train = write_shard_folder(root / "train", [length] * 24, labels=_labels)
    valid = write_shard_folder(root / "valid", [length] * 6, labels=_labels)
    torch.manual_seed(0)
    build_model(ModelConfig(preset="tiny"), MaskingConfig()).save_pretrained(root / "pretrained")
    return train, valid, root / "pretrained"


def _config(task: str, **values: Any) -> FinetuneConfig:
    base = {
        "max_steps": 8,
        "log_every": 1,
        "eval_every": 4,
        "checkpoint_every": 2,
        "keep_last": 10,
        "batch": {"max_batch_seconds": 6.0},
        "guards": {"max_consecutive_skips": 2, "max_rollbacks": 2},
    }
    return FinetuneConfig.for_task(task, {**base, **values})


def _poison(monkeypatch: pytest.MonkeyPatch, positions: Callable[[int], bool]) -> None:
    """The loss of micro-batches at these stream positions becomes NaN (as a corrupt batch or an overflow)."""
    original = recipe.task_loss

    def loss(model: Any, batch: Batch, labelled: Any, task: str) -> torch.Tensor:
        value = original(model, batch, labelled, task)
        return value * float("nan") if positions(batch.position) else value

    monkeypatch.setattr(recipe, "task_loss", loss)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model" / "model.safetensors"))


@TASKS
def test_a_non_finite_batch_is_skipped_and_the_run_goes_on(
    task: str, data: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, valid, pretrained = data
    _poison(monkeypatch, lambda position: position == 2)
    config = _config(task, checkpoint_every=1)
    result = finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / "run", loader=LOADER)
    assert result.steps == 8
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert not np.isfinite(records[2]["loss"]) and all(np.isfinite(r["loss"]) for r in records[3:])
    assert records[-1]["rollbacks"] == 0
    # The skipped update (step 3) changed nothing; the next one did, and every weight stayed finite.
    second, third, fourth = (_weights(c) for c in complete_checkpoints(tmp_path / "run")[1:4])
    assert all(torch.equal(second[name], third[name]) for name in second)
    assert any(not torch.equal(third[name], fourth[name]) for name in third)
    assert all(torch.isfinite(t).all() for t in _weights(complete_checkpoints(tmp_path / "run")[-1]).values())
    # w2v doctor reads the fine-tuning run and names fine-tuning's own config keys.
    findings = {f.check: f for f in diagnose_run(tmp_path / "run")}
    assert findings["non_finite"].severity == "error" and findings["non_finite"].numbers["skipped_steps"] == 1
    assert "lower lr" in findings["non_finite"].remedy and "optim." not in findings["non_finite"].remedy
    assert {"validation", "divergence", "data_wait", "out_of_memory"} <= set(findings)


@TASKS
def test_an_out_of_memory_step_is_retried_in_pieces_over_the_same_stream(
    task: str, data: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, valid, pretrained = data
    reports: list[StepReport] = []
    plain = finetune(_config(task), pretrained, [str(train)], [str(valid)], tmp_path / "plain", loader=LOADER,
                     on_step=reports.append)  # fmt: skip
    assert [(r.step, r.max_steps) for r in reports] == [(k, 8) for k in range(1, 9)]  # the progress bar's
    assert all(np.isfinite(r.loss) and r.audio_seconds_per_second > 0 for r in reports)
    monkeypatch.setenv(SIMULATE_ENV, str(3 * int(SECONDS * RATE)))  # 4 rows do not fit; 2 do
    guarded = finetune(_config(task), pretrained, [str(train)], [str(valid)], tmp_path / "guarded", loader=LOADER)
    assert guarded.steps == plain.steps == 8
    records = [r for r in read_metrics(tmp_path / "guarded") if "loss" in r]
    assert records[0]["oom_events"] == 1 and records[-1]["oom_events"] == 1
    assert {r["micro_batch_split"] for r in records} == {2} and records[-1]["skipped_steps"] == 0
    for a, b in zip(complete_checkpoints(tmp_path / "plain"), complete_checkpoints(tmp_path / "guarded"), strict=True):
        saved_a, saved_b = (json.loads((c / "trainer.json").read_text()) for c in (a, b))
        assert saved_a["loader_state"] == saved_b["loader_state"]  # the same utterances, update by update
        assert saved_b["tracking"]["micro_batch_split"] == 2


@TASKS
def test_a_transient_run_of_non_finite_updates_rolls_back_and_the_run_recovers(
    task: str, data: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, valid, pretrained = data
    _poison(monkeypatch, lambda position: position in (4, 5))  # steps 5 and 6, after the step-4 checkpoint
    result = finetune(_config(task), pretrained, [str(train)], [str(valid)], tmp_path / "run", loader=LOADER)
    assert result.steps == 8
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))  # the rolled-back steps are logged once
    assert records[-1]["rollbacks"] == 1 and records[-1]["skipped_steps"] == 2
    # After the rollback the learning rate peaks at half the configured one.
    lrs = [r["lr"] for r in records]
    assert max(lrs[4:]) <= 0.5 * _config(task).lr + 1e-12


@TASKS
def test_updates_that_keep_failing_roll_back_until_the_limit_then_stop_with_the_remedy(
    task: str, data: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, valid, pretrained = data
    _poison(monkeypatch, lambda position: position >= 2)
    with pytest.raises(W2VError, match=r"training diverged at step \d+ after 2 rollbacks: .* lower lr"):
        finetune(_config(task), pretrained, [str(train)], [str(valid)], tmp_path / "run", loader=LOADER)
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and records[-1]["rollbacks"] == 2


@TASKS
def test_a_run_resumed_from_its_checkpoint_ends_on_the_weights_of_an_uninterrupted_run(
    task: str, data: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train, valid, pretrained = data
    config = _config(task, max_steps=10, keep_last=20)
    finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / "whole", loader=LOADER)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-00000004", resumed / "checkpoints" / "step-00000004")
    if (tmp_path / "whole" / "tokenizer").is_dir():  # CTC's vocabulary, as the run left it
        shutil.copytree(tmp_path / "whole" / "tokenizer", resumed / "tokenizer")
    finetune(config, pretrained, [str(train)], [str(valid)], resumed, loader=LOADER)
    for step in (6, 8, 10):
        name = f"step-{step:08d}"
        whole, again = _weights(tmp_path / "whole" / "checkpoints" / name), _weights(resumed / "checkpoints" / name)
        assert all(torch.equal(whole[k], again[k]) for k in whole), f"{task}: {name} differs"


def test_a_killed_fine_tune_resumes_to_the_weights_of_an_uninterrupted_run(
    data: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    task, (train, valid, pretrained) = "ctc", data
    overrides = ["max_steps=12", "eval_every=4", "checkpoint_every=2", "log_every=1", "batch.max_batch_seconds=6"]
    config = FinetuneConfig.for_task(task, {}, overrides)
    reference = finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / "uninterrupted", loader=LOADER)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "w2v", "finetune", "--task", task, "--pretrained", str(pretrained),
               "--train", str(train), "--valid", str(valid), "--output", str(run), "--workers", "0"]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    killed_at = kill_after_first_checkpoint(command, run)
    assert killed_at != "step-00000012", "the run finished before it could be killed"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed, expected = _weights(complete_checkpoints(run)[-1]), _weights(reference.last_checkpoint or Path())
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 13))  # nothing logged twice across the restart
