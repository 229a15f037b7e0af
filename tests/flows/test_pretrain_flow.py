"""The pretrain flow end to end on a real (temporary) Prefect server: train, evaluate, upload, report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import s3fs
from prefect.testing.utilities import prefect_test_harness
from transformers import Wav2Vec2ForPreTraining

from flows.pretrain import CURVES, EVALUATION, pretrain_flow
from tests.data.shard_folders import write_shard_folder
from tests.flows.artifacts import newest_artifact_markdown
from tests.servers import moto_s3_server
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.run.mirror import LATEST
from w2v.shards.manifest import read_manifest
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


@pytest.mark.network
def test_the_flow_streams_shards_from_a_bucket_within_its_cache_and_evaluates_as_training_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stage step copies the corpus: training and evaluation read the bucket through RUN/shard-cache, which
    stays within --cache-limit, and the evaluation of the best checkpoint is the run's own validation of it."""
    lengths = [int(x) for x in np.random.default_rng(5).integers(16_000, 40_000, 80)]
    speakers = ("ana", "bo", "cy", "dee")
    local = write_shard_folder(
        tmp_path / "shards", lengths, rows_per_shard=10, labels=lambda k: (None, speakers[k % 4], None), indexed=True
    )
    sizes = [entry.bytes for entry in read_manifest(local).shards]
    limit = int(0.5 * sum(sizes))  # 4 of 8 shards: two windows of 2
    config = tmp_path / "tiny.yaml"
    windows = CONFIG.replace("max_sample_seconds: 2.0}", "max_sample_seconds: 2.0, shuffle_window_shards: 2}")
    config.write_text(windows + "max_val_batches: 2\n")  # validation reads a few of the held-out shards
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_s3_server() as s3, prefect_test_harness(server_startup_timeout=120):
        fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
        fs.mkdir("corpus")
        for path in local.iterdir():
            fs.put(str(path), f"corpus/talks/{path.name}")
        result = pretrain_flow(
            shards=["s3://corpus/talks"],
            output=str(tmp_path / "run"),
            config=str(config),
            storage_options={"endpoint_url": s3.endpoint_url},
            cache_limit=str(limit),
            loader_workers=0,
        )
    records = read_metrics(tmp_path / "run")
    assert any("cache_hit_rate" in r for r in records), "training did not stream"
    cached = [p.stat().st_size for p in (tmp_path / "run" / "shard-cache").glob("*/shards/*.arrow")]
    assert 0 < sum(cached) <= limit + max(sizes)
    assert len(cached) < len(sizes)
    # The best checkpoint scored on the same held-out batches as training's validation at its step.
    best_loss = min(r["val_loss"] for r in records if "val_loss" in r)
    best = next(r for r in records if r.get("val_loss") == best_loss)
    assert result["checkpoint"].endswith("best")
    for name in ("val_loss", "val_accuracy", "val_masked_frames", "val_batches"):
        assert result["evaluation"][name] == pytest.approx(best[name], rel=1e-5), name
    probe = result["evaluation"]["val_probe"]["speaker"]
    assert probe["classes"] == 4 and 0 < probe["train"] + probe["test"] <= len(lengths)
