"""Each failure `w2v doctor` names for a pretraining run, made to happen in a real (tiny, short) run, then
diagnosed from the run folder: a codebook collapsed onto one codevector per group, a model left at chance
because there is nothing to learn, and features that stopped being finite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.data.shard_folders import write_shard_folder
from w2v.data.loader import LoaderConfig
from w2v.doctor.findings import Finding
from w2v.doctor.run import diagnose_run
from w2v.errors import W2VError
from w2v.train.config import MaskingConfig, ModelConfig, TrainConfig
from w2v.train.presets import build_model
from w2v.train.recipe import pretrain

pytestmark = pytest.mark.slow
LENGTHS = [int(x) for x in np.random.default_rng(0).integers(24_000, 48_000, 40)]
BASE: dict[str, Any] = {
    "seed": 0,
    "max_steps": 60,
    "log_every": 5,
    "checkpoint_every": 30,
    "val_share": 0,
    "model": {"preset": "tiny"},
    "batch": {"max_batch_seconds": 9.0, "max_sample_seconds": 3.0},
    "masking": {"num_negatives": 20},
    "gumbel": {"decay": 0.99},
    "optim": {"lr": 5e-3, "warmup_steps": 10},
}


def _white_noise(k: int, length: int) -> np.ndarray:
    return np.random.default_rng([7, k]).normal(0, 3000, length).clip(-32768, 32767).astype(np.int16)


def _run(tmp_path: Path, shards: Path, **changes: Any) -> dict[str, Finding]:
    """Pretrain with these changes to BASE, then diagnose the run folder (also after the guards stopped it)."""
    config = TrainConfig.from_dict({**BASE, **changes})
    pretrain(config, [str(shards)], tmp_path / "run", loader=LoaderConfig(num_workers=0))
    return {f.check: f for f in diagnose_run(tmp_path / "run")}


def _problems(findings: dict[str, Finding]) -> set[str]:
    return {check for check, finding in findings.items() if finding.problem}


def test_a_codebook_collapsed_onto_one_codevector_per_group_is_named(tmp_path: Path) -> None:
    """A start whose quantizer picks codevector 0 of each group for every frame, with no diversity loss to
    pull it apart: codevector perplexity stays at 2 (one codevector in each of two groups)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), MaskingConfig(num_negatives=20))
    groups, per_group = model.config.num_codevector_groups, model.config.num_codevectors_per_group
    with torch.no_grad():
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[::per_group] = 1e4
    model.config.diversity_loss_weight = 0.0
    model.save_pretrained(tmp_path / "collapsed")
    shards = write_shard_folder(tmp_path / "shards", LENGTHS)
    findings = _run(tmp_path, shards, model={"preset": "tiny", "init_from": str(tmp_path / "collapsed")})
    assert "perplexity" in _problems(findings)
    perplexity = findings["perplexity"]
    assert perplexity.numbers["perplexity"] == pytest.approx(groups, abs=0.1)
    assert "diversity_loss_weight" in perplexity.remedy


def test_a_model_with_nothing_to_learn_is_named_as_left_at_chance(tmp_path: Path) -> None:
    """White noise: no frame says anything about another, so the contrastive loss cannot leave ln(K + 1)."""
    shards = write_shard_folder(tmp_path / "shards", LENGTHS, audio_of=_white_noise)
    findings = _run(tmp_path, shards)
    assert "chance" in _problems(findings) <= {"chance", "plateau"}  # a loss that does not move is also flat
    chance = findings["chance"]
    assert chance.numbers["recent_contrastive_loss"] >= 0.99 * np.log(21)
    assert "check the corpus" in chance.remedy


def test_features_that_stop_being_finite_are_named_with_the_remedy(tmp_path: Path) -> None:
    """An absurd learning rate: after an update or two the weights, then the features, are not finite; the
    guards skip, roll back twice and stop the run."""
    shards = write_shard_folder(tmp_path / "shards", LENGTHS)
    with pytest.raises(W2VError, match="training diverged"):
        _run(tmp_path, shards, log_every=1, checkpoint_every=2,
             optim={"lr": 1e4, "warmup_steps": 1, "max_grad_norm": None},
             guards={"max_consecutive_skips": 2, "max_rollbacks": 2})  # fmt: skip
    findings = {f.check: f for f in diagnose_run(tmp_path / "run")}
    assert "non_finite" in _problems(findings)
    non_finite = findings["non_finite"]
    assert non_finite.numbers["rollbacks"] == 2 and non_finite.numbers["skipped_steps"] >= 4
    assert "lower optim.lr" in non_finite.remedy
