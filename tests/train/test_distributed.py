"""Two CPU processes under `accelerate launch` train on the same global batch plan as one process accumulating two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.data.shard_folders import write_shard_folder
from w2v.data.loader import LoaderConfig
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
seed: 5
deterministic: true
max_steps: 12
log_every: 4
checkpoint_every: 6
# Layer drop off: a layer no rank used has no gradient in one process (AdamW leaves it alone) but a zero
# one under DDP with find_unused_parameters (AdamW still moves it): the runs would differ by design.
model: {preset: tiny, overrides: {layerdrop: 0.0}}
batch: {max_batch_seconds: 6.0, max_sample_seconds: 2.0}
masking: {num_negatives: 20}
optim: {lr: 1.0e-3, warmup_steps: 3}
"""


def test_two_processes_match_one_process_accumulating_two_micro_batches(tmp_path: Path) -> None:
    lengths = [int(x) for x in np.random.default_rng(2).integers(16_000, 40_000, 50)]
    shards = write_shard_folder(tmp_path / "shards", lengths)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG)
    accelerate = Path(sys.executable).parent / "accelerate"
    # On a machine without GPUs, --multi_gpu starts torchrun and Accelerate trains with gloo on the CPU;
    # `--cpu --num_processes 2` would start a single process (accelerate 1.15 needs mpirun for that).
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "w2v", "pretrain"]
    command += ["--shards", str(shards), "--output", str(tmp_path / "two"), "--config", str(config_file)]
    command += ["--workers", "0"]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]

    one = TrainConfig.from_dict({**_yaml(CONFIG), "gradient_accumulation": 2})
    pretrain(one, [str(shards)], tmp_path / "one", loader=LoaderConfig(num_workers=0))

    two_metrics, one_metrics = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert [r["step"] for r in two_metrics] == [4, 8, 12]
    for a, b in zip(two_metrics, one_metrics, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["masked_share"] == pytest.approx(b["masked_share"], rel=1e-6)
    two = load_file(str(complete_checkpoints(tmp_path / "two")[-1] / "model" / "model.safetensors"))
    one_weights = load_file(str(complete_checkpoints(tmp_path / "one")[-1] / "model" / "model.safetensors"))
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def _yaml(text: str) -> dict:
    import yaml

    loaded: dict = yaml.safe_load(text)
    return loaded
