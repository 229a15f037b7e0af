"""Pretraining end to end on the tiny preset: killed and resumed equals uninterrupted, checkpoints load, loss falls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

from tests.conftest import Prepared
from tests.data.shard_folders import write_shard_folder
from tests.kill import kill_after_first_checkpoint
from w2v.data.loader import LoaderConfig
from w2v.errors import W2VError
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
seed: 3
deterministic: true
max_steps: 40
log_every: 5
checkpoint_every: 10
keep_last: 2
model: {preset: tiny}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0}
masking: {num_negatives: 20}
optim: {lr: 2.0e-3, warmup_steps: 5}
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lengths = [int(x) for x in np.random.default_rng(0).integers(16_000, 40_000, 50)]
    return write_shard_folder(tmp_path_factory.mktemp("pretrain-shards"), lengths)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def uninterrupted(shards: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted")
    pretrain(TrainConfig.from_yaml(config_file), [str(shards)], run, loader=LoaderConfig(num_workers=0))
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(complete_checkpoints(run)[-1] / "model" / "model.safetensors"))


def test_killed_and_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(
    shards: Path, config_file: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "w2v", "pretrain", "--shards", str(shards), "--output", str(run)]
    command += ["--config", str(config_file), "--workers", "2"]
    killed_at = kill_after_first_checkpoint(command, run)
    assert killed_at != "step-00000040", "the run finished before it could be killed"

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed, reference = _weights(run), _weights(uninterrupted)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    steps = [record["step"] for record in read_metrics(run)]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]  # nothing logged twice across the restart


def test_checkpoints_load_for_pretraining_and_for_ctc_and_only_the_last_are_kept(uninterrupted: Path) -> None:
    kept = complete_checkpoints(uninterrupted)
    assert [p.name for p in kept] == ["step-00000030", "step-00000040"]
    model_folder = kept[-1] / "model"
    pretrained = Wav2Vec2ForPreTraining.from_pretrained(model_folder)
    assert pretrained.config.num_hidden_layers == 2
    ctc = Wav2Vec2ForCTC.from_pretrained(model_folder, vocab_size=32)
    with torch.no_grad():
        logits = ctc(torch.zeros(1, 16_000)).logits
    assert logits.shape[-1] == 32
    assert (model_folder / "preprocessor_config.json").is_file()
    assert not list((uninterrupted / "checkpoints").glob(".tmp-*"))
    # The weights are on disk once: Accelerate's copy is a hard link to the model folder's.
    assert (model_folder / "model.safetensors").stat().st_ino == (
        kept[-1] / "accelerate" / "model.safetensors"
    ).stat().st_ino


def test_loss_falls_and_codevectors_stay_in_use_on_speech(prepared: Prepared, tmp_path: Path) -> None:
    config = TrainConfig.from_dict(
        {
            "seed": 0,
            "val_share": 0.0,  # other tests add recordings to the shared corpus: keep the training set fixed
            # The loss leaves chance after 200-250 steps: at 400 it has fallen 0.063-0.072 for seeds 0-3 on
            # this corpus; at 300 one batch order in three was still within 0.04 of the start.
            "max_steps": 400,
            "log_every": 40,
            "checkpoint_every": 400,
            "model": {"preset": "tiny"},
            "batch": {"max_batch_seconds": 12.0, "max_sample_seconds": 3.0},
            "masking": {"num_negatives": 20},
            "optim": {"lr": 5e-3, "warmup_steps": 10},
        }
    )
    pretrain(config, [str(prepared.out)], tmp_path, loader=LoaderConfig(num_workers=0))
    records = read_metrics(tmp_path)
    assert len(records) == 10
    # The contrastive loss starts near chance (ln 21 with 20 negatives) and a tiny model moves off it slowly.
    early = sum(r["loss"] for r in records[:3]) / 3
    late = sum(r["loss"] for r in records[-3:]) / 3
    assert late < early - 0.04, [round(r["loss"], 3) for r in records]
    # Two groups of 40 codevectors: a healthy quantizer spreads over many of them (collapse is ~2).
    assert records[-1]["perplexity"] > 30, [round(r["perplexity"], 1) for r in records]
    assert all(0.3 < r["masked_share"] < 0.8 for r in records)
    assert all(r["skipped_steps"] == 0 for r in records)


def test_a_config_with_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {learning_rate: 1.0e-3}\n")
    with pytest.raises(W2VError, match=r"training config.optim: unknown keys \['learning_rate'\]"):
        TrainConfig.from_yaml(path)
    overridden = TrainConfig.from_yaml(_write(tmp_path, CONFIG), ["optim.lr=1e-4", "max_steps=7"])
    assert overridden.optim.lr == 1e-4 and overridden.max_steps == 7 and overridden.model.preset == "tiny"


def _write(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny.yaml", "base.yaml"])
def test_the_shipped_configs_load(name: str) -> None:
    config = TrainConfig.from_yaml(ROOT / "configs" / name)
    assert config.model.preset in ("tiny", "base")
    assert isinstance(config.optim.lr, float)


def test_metrics_also_go_to_tensorboard(uninterrupted: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/perplexity", "train/lr", "train/gumbel_temperature"} <= set(tags)
    logged = {record["step"]: record["loss"] for record in read_metrics(uninterrupted) if "loss" in record}
    scalars = {event.step: event.value for event in events.Scalars("train/loss")}
    assert scalars.keys() == logged.keys()
    assert all(abs(scalars[s] - logged[s]) < 1e-4 * abs(logged[s]) for s in logged)
