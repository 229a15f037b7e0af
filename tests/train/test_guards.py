"""Guards: a diverging run rolls back with a lower learning rate, then stops with an error that says what to do."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.data.shard_folders import write_shard_folder
from w2v.data.loader import LoaderConfig
from w2v.errors import W2VError
from w2v.run.metrics import read_metrics
from w2v.train.config import GuardConfig, MaskingConfig, ModelConfig, TrainConfig
from w2v.train.health import expected_masked_share, health_warnings
from w2v.train.presets import model_config
from w2v.train.recipe import pretrain

pytestmark = pytest.mark.slow


def test_a_diverging_run_rolls_back_twice_then_stops_with_the_remedy(tmp_path: Path) -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(16_000, 40_000, 40)]
    shards = write_shard_folder(tmp_path / "shards", lengths)
    config = TrainConfig.from_dict(
        {
            "seed": 0,
            "max_steps": 40,
            "log_every": 1,
            "checkpoint_every": 2,
            "val_share": 0,
            "model": {"preset": "tiny"},
            "batch": {"max_batch_seconds": 6.0, "max_sample_seconds": 2.0},
            "masking": {"num_negatives": 20},
            # An absurd learning rate: the weights blow up after the first update or two.
            "optim": {"lr": 1e4, "warmup_steps": 1, "max_grad_norm": None},
            "guards": {"max_consecutive_skips": 2, "max_rollbacks": 2},
        }
    )
    with pytest.raises(W2VError, match=r"training diverged at step \d+ after 2 rollbacks: .* lower optim\.lr"):
        pretrain(config, [str(shards)], tmp_path / "run", loader=LoaderConfig(num_workers=0))
    records = read_metrics(tmp_path / "run")
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps))  # steps redone after a rollback are not logged twice
    assert records[-1]["rollbacks"] == 2 and records[-1]["skipped_steps"] >= 4


def test_health_warnings_name_the_problem_and_the_remedy() -> None:
    model = model_config(ModelConfig(preset="tiny"), MaskingConfig())
    healthy = {"perplexity": 40.0, "masked_share": expected_masked_share(0.65), "loss": 3.0, "contrastive_loss": 2.9}
    assert health_warnings(healthy, model, GuardConfig()) == []
    collapsed = health_warnings({**healthy, "perplexity": 2.0}, model, GuardConfig())
    assert len(collapsed) == 1 and "diversity_loss_weight" in collapsed[0]
    short = health_warnings({**healthy, "masked_share": 0.05}, model, GuardConfig())
    assert len(short) == 1 and "mask_time_length" in short[0]
    assert "lower optim.lr" in health_warnings({**healthy, "loss": float("nan")}, model, GuardConfig())[0]
    chance = {**healthy, "contrastive_loss": math.log(101)}
    assert health_warnings(chance, model, GuardConfig()) == []  # not left chance yet: early days
    assert health_warnings(chance, model, GuardConfig(), lowest_contrastive_loss=4.5) == []
    collapsed_back = health_warnings(chance, model, GuardConfig(), lowest_contrastive_loss=3.2)
    assert len(collapsed_back) == 1 and "back at chance" in collapsed_back[0] and "lower optim.lr" in collapsed_back[0]
