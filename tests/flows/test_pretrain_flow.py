"""The pretrain flow end to end on a real (temporary) Prefect server: train, evaluate, upload, report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness
from transformers import Wav2Vec2ForPreTraining

from flows.pretrain import CURVES, EVALUATION, pretrain_flow
from tests.data.shard_folders import write_shard_folder
from tests.flows.artifacts import newest_artifact_markdown
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.mirror import LATEST
from w2v.upload import MARKER

pytestmark = pytest.mark.slow
CONFIG = """\
seed: 1
max_steps: 20
log_every: 5
checkpoint_every: 10
eval_every: 10
val_share: 0.3
model: {preset: tiny}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0}
masking: {num_negatives: 20}
optim: {lr: 2.0e-3, warmup_steps: 5}
"""


def test_the_flow_trains_mirrors_checkpoints_evaluates_uploads_the_best_model_and_reports(tmp_path: Path) -> None:
    lengths = [int(x) for x in np.random.default_rng(3).integers(16_000, 40_000, 60)]
    shards = write_shard_folder(tmp_path / "shards", lengths)
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    bucket = tmp_path / "bucket" / "nightly"
    with prefect_test_harness(server_startup_timeout=120):
        result = pretrain_flow(
            shards=[str(shards)],
            output=str(tmp_path / "run"),
            config=str(config),
            upload_to=str(bucket),
            loader_workers=0,
        )
        markdown = asyncio.run(newest_artifact_markdown("pretraining-report"))
    assert result["checkpoint"].endswith("best")
    assert 0 <= result["evaluation"]["val_accuracy"] <= 1
    marker = json.loads((bucket / "best" / MARKER).read_text())
    assert "model/model.safetensors" in marker["files"]
    Wav2Vec2ForPreTraining.from_pretrained(bucket / "best" / "model")
    # Each checkpoint went to the bucket as it was written; the newest is named by the pointer.
    newest = complete_checkpoints(tmp_path / "run")[-1].name
    assert (bucket / "checkpoints" / LATEST).read_text().strip() == newest
    assert (bucket / "checkpoints" / newest / MARKER).is_file()
    assert "# Pretraining report" in markdown and "val loss" in markdown
    assert "![training curves](data:image/png;base64," in markdown
    assert (tmp_path / "run" / CURVES).read_bytes().startswith(b"\x89PNG")
    assert result["evaluation"]["val_contrastive_chance"] == pytest.approx(1 / 21)
    saved = json.loads((tmp_path / "run" / EVALUATION).read_text())
    assert saved["checkpoint"] == str(tmp_path / "run" / "best" / "model")
    assert {f"val_{k}": v for k, v in saved.items() if k != "checkpoint"} == result["evaluation"]
