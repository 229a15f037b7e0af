"""Validation on held-out recordings: deterministic, the best model kept, early stopping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from transformers import Wav2Vec2ForPreTraining

from tests.data.shard_folders import write_shard_folder
from w2v.data.corpus import ShardCorpus, split_held_out, split_key
from w2v.data.loader import LoaderConfig
from w2v.errors import W2VError
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.evaluate import evaluate
from w2v.train.recipe import pretrain

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [int(x) for x in np.random.default_rng(5).integers(16_000, 40_000, 60)]
BASE = {
    "seed": 2,
    "val_share": 0.3,
    "eval_every": 10,
    "log_every": 10,
    "checkpoint_every": 10,
    "model": {"preset": "tiny"},
    "batch": {"max_batch_seconds": 6.0, "max_sample_seconds": 2.0},
    "masking": {"num_negatives": 20},
    "optim": {"lr": 2e-3, "warmup_steps": 5},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shard_folder(tmp_path_factory.mktemp("validation"), LENGTHS)


def test_held_out_recordings_never_reach_training_and_stay_held_out(shards: Path) -> None:
    corpus = ShardCorpus(shards)
    train, held = split_held_out(corpus, 0.3)
    assert held is not None and 0.15 < len(held) / len(corpus) < 0.45
    assert len(train) + len(held) == len(corpus)
    assert set(train.source_position.tolist()).isdisjoint(held.source_position.tolist())
    again = split_held_out(ShardCorpus(shards), 0.3)[1]
    assert again is not None and np.array_equal(again.num_samples, held.num_samples)
    assert split_held_out(corpus, 0.0) == (corpus, None)
    with pytest.raises(W2VError, match="takes every recording"):
        split_held_out(corpus.subset(np.flatnonzero(corpus.source_position < 0.3)), 0.3)


def test_the_split_follows_the_recording_not_where_the_corpus_lies() -> None:
    assert split_key("/data/corpus/ep12/seg_0001.wav") == split_key("s3://bucket/corpus/ep12/seg_0001.wav")
    assert split_key("/mnt/other/ep12/seg_0001.wav") == "ep12/seg_0001.wav"
    assert split_key("gs://b/x/ep13/seg_0001.wav?generation=3") == "ep13/seg_0001.wav"
    assert split_key("seg_0001.wav") == "seg_0001.wav"


def test_validation_is_logged_the_best_model_is_kept_and_evaluation_repeats_exactly(
    shards: Path, tmp_path: Path
) -> None:
    result = pretrain(
        TrainConfig.from_dict({**BASE, "max_steps": 30}), [str(shards)], tmp_path, loader=LoaderConfig(num_workers=0)
    )
    assert result.steps == 30
    evaluations = [r for r in read_metrics(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [10, 20, 30]
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_masked_frames"] > 0 for r in evaluations)
    best = json.loads((tmp_path / "best" / "trainer.json").read_text())
    assert best["metrics"]["val_loss"] == min(r["val_loss"] for r in evaluations)
    model = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "best" / "model")

    _, held = split_held_out(ShardCorpus(shards), 0.3)
    assert held is not None
    config = TrainConfig.from_dict(BASE)
    first = evaluate(Accelerator(cpu=True), model, [held], config.batch, config.seed)
    second = evaluate(Accelerator(cpu=True), model, [held], config.batch, config.seed)
    assert first == second
    assert first.loss == pytest.approx(best["metrics"]["val_loss"], rel=1e-5)
    command = [sys.executable, "-m", "w2v", "evaluate", str(tmp_path / "best"), "--shards", str(shards)]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True, cwd=ROOT).stdout
    assert json.loads(printed)["loss"] == pytest.approx(first.loss, rel=1e-5)


def test_training_stops_when_validation_stops_improving(shards: Path, tmp_path: Path) -> None:
    frozen = {**BASE, "max_steps": 100, "early_stopping_patience": 2, "optim": {**BASE["optim"], "lr": 0.0}}
    result = pretrain(TrainConfig.from_dict(frozen), [str(shards)], tmp_path, loader=LoaderConfig(num_workers=0))
    assert result.stopped_by == "early_stopping"
    assert result.steps == 30  # best at 10, no better at 20 and 30
    assert (tmp_path / "checkpoints" / "step-00000030" / "trainer.json").is_file()
    tracking = json.loads((tmp_path / "checkpoints" / "step-00000030" / "trainer.json").read_text())["tracking"]
    assert tracking["evals_since_best"] == 2 and tracking["best_step"] == 10
