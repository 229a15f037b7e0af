"""Fixed-seed runs whose final weights must not change when the code is only reorganised.

One tiny pretraining and a tiny fine-tune of each task on synthetic shards; each run's weights are reduced to
a fingerprint per tensor (`digest`). `tests/fixtures/reference_weights.json` holds the digests of the code as it
was when they were written; tests/test_reference_weights.py runs this module in a pinned environment (one
thread, one CPU instruction set) and compares. Regenerate the file only for an intended change in what
training computes, and say why in the commit:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        .venv/bin/python -m tests.reference_runs tests/fixtures/reference_weights.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tests.data.shard_folders import Labels, write_shard_folder
from w2v.data.loader import LoaderConfig
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.recipe import finetune
from w2v.run.checkpoint import complete_checkpoints
from w2v.train.config import MaskingConfig, ModelConfig, TrainConfig
from w2v.train.presets import build_model
from w2v.train.recipe import pretrain

PRETRAIN = {
    "seed": 5,
    "deterministic": True,
    "max_steps": 6,
    "gradient_accumulation": 2,
    "log_every": 2,
    "checkpoint_every": 3,
    "eval_every": 3,
    "val_share": 0.2,
    "model": {"preset": "tiny"},
    "batch": {"max_batch_seconds": 4.0, "max_sample_seconds": 1.5},
    "masking": {"num_negatives": 10},
    "optim": {"lr": 2.0e-3, "warmup_steps": 2},
}
FINETUNE: dict[str, dict[str, Any]] = {
    "ctc": {"max_steps": 4, "log_every": 2, "eval_every": 2, "batch": {"max_batch_seconds": 8.0}},
    "classify": {
        "max_steps": 4,
        "log_every": 2,
        "eval_every": 2,
        "gradient_accumulation": 2,
        "batch": {"max_batch_seconds": 6.0},
    },
    "speaker": {"max_steps": 4, "log_every": 2, "eval_every": 4, "batch": {"max_batch_seconds": 8.0}},
}
WORDS = ("zero", "one", "two", "three", "four")


def _labels(k: int) -> Labels:
    words = [WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(3)]
    return " ".join(words), f"speaker-{k % 3}", words[0]


def _lengths(seed: int, count: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(12_000, 30_000, count)]


def digest(weights: dict[str, torch.Tensor]) -> dict[str, list[Any]]:
    """Each tensor's SHA-256 (of its bytes), sum, L1 norm and a signed sketch (a sum under fixed random signs).

    Equal SHA-256s are equal weights, bit for bit: what the machine that wrote the reference gets. Another CPU
    may round a few kernels differently even pinned to one thread and AVX2; the three numbers then differ by
    rounding (about 1e-8 of the L1 norm after these few steps), while any change in what is computed moves
    them by far more. The sketch catches what a sum cannot, such as elements moved to other places.
    """
    fingerprints = {}
    for name, tensor in sorted(weights.items()):
        values = tensor.detach().double().flatten()
        signs = torch.randint(0, 2, values.shape, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
        fingerprints[name] = [
            hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest(),
            float(values.sum()),
            float(values.abs().sum()),
            float((values * signs).sum()),
        ]
    return fingerprints


def reference_digests(root: Path) -> dict[str, dict[str, list[Any]]]:
    """Run the pretraining and the three fine-tunes under `root`; their final weights' digests by run name."""
    loader = LoaderConfig(num_workers=0)
    shards = write_shard_folder(root / "unlabelled", _lengths(0, 30), rows_per_shard=12)
    run = root / "pretrain"
    pretrain(TrainConfig.from_dict(PRETRAIN), [str(shards)], run, loader=loader)
    results = {"pretrain": digest(load_file(str(complete_checkpoints(run)[-1] / "model" / "model.safetensors")))}

    train = write_shard_folder(root / "train", _lengths(1, 18), labels=_labels)
    valid = write_shard_folder(root / "valid", _lengths(2, 6), labels=_labels)
    torch.manual_seed(0)
    pretrained = root / "pretrained"
    build_model(ModelConfig(preset="tiny"), MaskingConfig()).save_pretrained(pretrained)
    for task, values in FINETUNE.items():
        config = FinetuneConfig.for_task(task, values)
        result = finetune(config, pretrained, [str(train)], [str(valid)], root / task, loader=loader)
        assert result.last_checkpoint is not None
        results[task] = digest(load_file(str(result.last_checkpoint / "model" / "model.safetensors")))
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        results = reference_digests(Path(folder))
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
