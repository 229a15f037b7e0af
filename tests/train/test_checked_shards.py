"""A shard that differs from its manifest stops `w2v pretrain`, `finetune` and `evaluate` before step 1, in one
line naming the shard; --no-verify-shards lets a run through unchecked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.data.shard_folders import write_shard_folder
from w2v.cli import app
from w2v.run.checkpoint import complete_checkpoints
from w2v.shards.manifest import read_manifest
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model

LENGTHS = [16_000 + 331 * k for k in range(30)]
PRETRAIN = ["--preset", "tiny", "--max-steps", "2", "--workers", "0", "--set", "batch.max_batch_seconds=4"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_model(ModelConfig(preset="tiny"), MaskingConfig(num_negatives=20)).save_pretrained(folder)
    return folder


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, Path]:
    """(a shard folder, its shard with one byte flipped in the middle: same size)."""
    folder = write_shard_folder(tmp_path / "shards", LENGTHS, rows_per_shard=10)
    shard = folder / read_manifest(folder).shards[1].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    return folder, shard


def _refused(output: str, folder: Path, shard: Path) -> bool:
    """One error line, the last, naming the shard and `w2v shards verify FOLDER`."""
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    return (
        errors == lines[-1:]
        and errors[0].startswith(f"error: {shard}: sha256 ")
        and f"run w2v shards verify {folder}" in errors[0]
    )


def test_pretrain_stops_before_step_one_and_no_verify_shards_lets_it_through(
    damaged: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, shard = damaged
    run = tmp_path / "run"
    done = runner.invoke(app, ["pretrain", "--shards", f"{folder}:1", "--output", str(run), *PRETRAIN])
    assert done.exit_code == 2 and _refused(done.output, folder, shard), done.output
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()

    unsafe = runner.invoke(
        app, ["pretrain", "--shards", str(folder), "--output", str(run), *PRETRAIN, "--no-verify-shards"]
    )
    assert unsafe.exit_code == 0, unsafe.output
    assert complete_checkpoints(run)


def test_finetune_stops_before_step_one(damaged: tuple[Path, Path], model_dir: Path, tmp_path: Path) -> None:
    folder, shard = damaged
    run = tmp_path / "run"
    arguments = ["finetune", "--task", "ctc", "--pretrained", str(model_dir), "--output", str(run)]
    done = runner.invoke(app, [*arguments, "--train", str(folder), "--valid", str(folder), "--max-steps", "1"])
    assert done.exit_code == 2 and _refused(done.output, folder, shard), done.output
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_evaluate_stops_before_reading_a_batch(damaged: tuple[Path, Path], model_dir: Path) -> None:
    folder, shard = damaged
    done = runner.invoke(app, ["evaluate", str(model_dir), "--shards", str(folder), "--val-share", "0.5"])
    assert done.exit_code == 2 and _refused(done.output, folder, shard), done.output
    assert done.stdout.strip() == ""  # no evaluation printed


def test_the_flows_pass_no_verify_shards_on_only_when_asked() -> None:
    from flows.finetune import finetune_command
    from flows.pretrain import training_command

    for verify in (True, False):
        pretrain = training_command(["a:1.0"], Path("run"), None, [], 1, None, 2, verify_shards=verify)
        finetune = finetune_command("ctc", "m", ["a"], ["b"], Path("run"), None, [], verify_shards=verify)
        assert ("--no-verify-shards" in pretrain) == ("--no-verify-shards" in finetune) == (not verify)
    for command in ("pretrain", "pipeline", "finetune", "evaluate"):
        assert "--no-verify-shards" in runner.invoke(app, [command, "--help"], terminal_width=200).output
