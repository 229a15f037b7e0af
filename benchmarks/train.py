"""Benchmark our training step against the seed's way, on the same model, the same audio and the same audio per step.

Seed: the pretraining example's loop — a `datasets.Dataset` of normalized float lists, DataLoader(shuffle=True,
batch_size=B) with its collator (pad to the longest, masks and negatives in numpy), forward, backward,
gradients divided by the masked count, AdamW step, Gumbel temperature update. Ours: the planned loader
(crop mode, duration budget), masks and negatives in torch, `w2v.train.step.train_step`. B is chosen so a
seed batch holds, on average, the audio of our budget. Prints one JSON object: audio-seconds (of real audio,
padding and cropped-away audio excluded) per second of training, for both, and the ratio.
Usage: python benchmarks/train.py [--minutes 5] [--steps 30] [--repeat 2] [--preset tiny]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loader import RATE, seed_loader, utterance_lengths
from tests.data.shard_folders import write_shard_folder
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig
from w2v.ssl.objective import gumbel_temperature
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model
from w2v.train.step import train_step


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh_model(preset: str) -> Any:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset=preset), MaskingConfig(num_negatives=100))


def run_seed(make_loader_fn: Any, model: Any, steps: int) -> tuple[float, int]:
    """The example's inner loop, as it runs there (no gradient accumulation, one process)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    audio = 0
    started = time.perf_counter()
    batches = itertools.islice(itertools.chain.from_iterable(make_loader_fn() for _ in range(1000)), steps)
    for completed, batch in enumerate(batches):
        num_losses = batch["mask_time_indices"].sum()
        batch.pop("sub_attention_mask", None)
        audio += int(batch["attention_mask"].sum())
        outputs = model(**batch)
        outputs.loss.backward()
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(1 / num_losses)
        optimizer.step()
        optimizer.zero_grad()
        model.set_gumbel_temperature(gumbel_temperature(completed + 1, 2.0, 0.5, 0.999995))
    return time.perf_counter() - started, audio


def run_ours(corpus: ShardCorpus, config: BatchConfig, model: Any, steps: int, workers: int) -> tuple[float, int]:
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = iter(make_loader([corpus], config, seed=0, loader=LoaderConfig(num_workers=workers)))
    audio = 0
    started = time.perf_counter()
    for step in range(steps):
        accelerator.unwrap_model(model).set_gumbel_temperature(gumbel_temperature(step, 2.0, 0.5, 0.999995))
        result = train_step(
            accelerator, model, optimizer, scheduler, batches, accumulation=1, max_grad_norm=None, seed=0
        )
        audio += result.audio_samples
    return time.perf_counter() - started, audio


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max-batch-seconds", type=float, default=30.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="w2v-bench-train-") as tmp:
        scratch = Path(tmp)
        lengths = utterance_lengths(args.minutes)
        corpus = ShardCorpus(write_shard_folder(scratch / "shards", lengths, rows_per_shard=256))
        batch_size = max(1, round(args.max_batch_seconds * RATE / float(np.mean(lengths))))
        seed_model = fresh_model(args.preset)
        make_seed = seed_loader(corpus, scratch, batch_size, seed_model)
        config = BatchConfig(max_batch_seconds=args.max_batch_seconds)
        runs = {
            "seed": lambda: run_seed(make_seed, fresh_model(args.preset), args.steps),
            "ours_inline": lambda: run_ours(corpus, config, fresh_model(args.preset), args.steps, 0),
            "ours_1_worker": lambda: run_ours(corpus, config, fresh_model(args.preset), args.steps, 1),
        }
        best: dict[str, float] = dict.fromkeys(runs, 0.0)
        for round_number in range(args.repeat):
            for name, run in runs.items():
                seconds, audio = run()
                rate = audio / RATE / seconds
                best[name] = max(best[name], rate)
                log(f"round {round_number + 1}: {name} {seconds:.2f} s, {rate:.1f} audio-s/s")

    return {
        "benchmark": "train",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "preset": args.preset,
        "steps": args.steps,
        "audio_seconds_per_step_budget": args.max_batch_seconds,
        "seed_batch_size": batch_size,
        "audio_seconds_per_second": {name: round(value, 1) for name, value in best.items()},
        "anchor": "seed: the example's loop with its collator over a datasets.Dataset of the same audio",
        "ours_vs_seed": {name: round(best[name] / best["seed"], 2) for name in runs if name != "seed"},
        "target": {"ours_vs_seed": ">= 1.5 on CPU"},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
