"""Benchmark what pretraining buys fine-tuning: the same labelled corpus, the same fine-tuning budget, two inits.

A small labelled corpus (digit strings spoken by three espeak-ng voices, tests/finetune/labelled_corpus.py) is
prepared into train and validation shards. The `tiny` preset (configs/tiny.yaml, warmup a tenth of the run) is
pretrained on the train shards' audio only; its held-out share picks RUN/best. Each task (ctc: the transcript;
classify: the first digit; speaker: the voice) is then fine-tuned for the same number of updates from two inits:
  pretrained    the pretraining run's best model;
  random init   the anchor: the same architecture, freshly initialised. For seed 0 these are the very weights
                pretraining started from, so the only difference is the pretraining updates.
Seed k fine-tunes both inits with seed k (the same head init, data order and SpecAugment draws) and draws the
anchor's weights with seed k; there is one pretraining run (seed 0) for all seeds, so its own variance is not
in the spread. Fine-tuning keeps the task's product defaults (freezing, tri-stage schedule, SpecAugment) except
the learning rate, multiplied by --lr-scale: the defaults are for BASE/LARGE, and at them neither init of this
0.1M-parameter model moves off chance in a few hundred updates (30 was chosen by trying 10 and 30). The speaker
task's default freezes all but the head; TASK_unfrozen rows (--also-unfrozen) let every transformer layer learn.
Scores are the validation metrics after the last update (not at the best evaluation: the validation set would
then also choose the model). Prints one JSON object: per task, the chance level, each init's mean and standard
deviation over seeds (and seed by seed), pretrained minus random init per seed, and the ratio of the means.

What it can and cannot show: a tiny model pretrained for a minute on two minutes of clean synthetic speech
learns little (the contrastive loss ends a little below chance, ln(K+1)), and the validation split has 24
utterances, so one utterance moves accuracy by 4 points and seed-to-seed spreads of 10-20 points are normal.
It checks the pretrain -> fine-tune path end to end and catches gross regressions (a checkpoint that fine-tunes
clearly worse than random weights, a head that never leaves chance); it is not evidence of what pretraining buys
at real scale, and differences smaller than the spread mean nothing. With the speaker task's default (only the
head learns) val_eer scores the frozen backbone's pooled embeddings: it is fixed by the init, whatever the head
does. The pretrained checkpoint's quality itself varies with the pretraining seed, which this does not sample.
Timings depend on what else the machine runs (8 to 9 minutes on 2 cores; --quick about 2).
Usage: python benchmarks/finetune.py [--quick] [--seeds 3] [--pretrain-steps 400] [--finetune-steps 400]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.finetune.labelled_corpus import VOICES, write_labelled_corpus
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig
from w2v.finetune.config import TASK_DEFAULTS, FinetuneConfig, FreezeConfig
from w2v.finetune.freeze import layers_to_freeze
from w2v.finetune.labels import read_column
from w2v.finetune.recipe import finetune
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.presets import PRESETS, build_model
from w2v.train.recipe import pretrain

# The score each task is judged by, whether lower is better, and what else is reported beside it.
SCORES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "ctc": ("val_wer", True, ("val_cer",)),
    "classify": ("val_accuracy", False, ("val_macro_f1",)),
    "speaker": ("val_accuracy", False, ("val_eer",)),
}
QUICK = {"utterances_per_voice": 16, "pretrain_steps": 120, "finetune_steps": 150, "seeds": 2}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pretrain_tiny(train_shards: Path, steps: int, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Pretrain configs/tiny.yaml for `steps` updates; returns the model folder and the logged figures.

    The warmup is a tenth of the run: tiny.yaml's is sized for its own 600 updates (and once, at 10 steps in a
    400-step run, left the contrastive loss stuck at chance or collapsing back to it)."""
    config = TrainConfig.from_yaml(
        Path("configs/tiny.yaml"),
        [
            f"max_steps={steps}",
            f"optim.warmup_steps={max(1, steps // 10)}",
            f"eval_every={max(1, steps // 4)}",
            f"checkpoint_every={steps}",
        ],
    )
    pretrain(config, [str(train_shards)], run_dir, loader=LoaderConfig(num_workers=0), resume="never")
    records = read_metrics(run_dir)
    trained = [r for r in records if "contrastive_loss" in r]
    validated = [r for r in records if "val_loss" in r]
    figures = {
        "steps": steps,
        "warmup_steps": config.optim.warmup_steps,
        "first_contrastive_loss": round(trained[0]["contrastive_loss"], 3),
        "last_contrastive_loss": round(trained[-1]["contrastive_loss"], 3),
        "chance_contrastive_loss": round(float(np.log(config.masking.num_negatives + 1)), 3),
    }
    if validated:
        best = min(validated, key=lambda r: r["val_loss"])
        figures.update(best_step=best["step"], best_val_contrastive_accuracy=round(best["val_accuracy"], 3))
    model = run_dir / "best" / "model"
    if not model.is_dir():
        model = complete_checkpoints(run_dir)[-1] / "model"
    return model, figures


def random_init(seed: int, folder: Path) -> Path:
    """The tiny architecture as pretraining builds it (same config), with the weights seed `seed` draws."""
    config = TrainConfig.from_yaml(Path("configs/tiny.yaml"))
    set_seed(seed)  # what pretrain() calls before build_model: seed 0 gives its starting weights
    build_model(config.model, config.masking).save_pretrained(folder)
    return folder


def finetune_once(
    task: str,
    unfrozen: bool,
    init: Path,
    shards: tuple[Path, Path],
    seed: int,
    args: argparse.Namespace,
    run_dir: Path,
) -> dict[str, float]:
    defaults = TASK_DEFAULTS[task]
    values: dict[str, Any] = {
        "seed": seed,
        "lr": float(defaults["lr"]) * args.lr_scale,
        "max_steps": args.finetune_steps,
        "eval_every": args.finetune_steps,  # one evaluation, at the end
        "log_every": max(1, args.finetune_steps // 4),
        "batch": {"max_batch_seconds": args.max_batch_seconds},
    }
    if unfrozen:
        values["freeze"] = {"layers": 0, "head_only": False}  # the feature encoder stays frozen
    config = FinetuneConfig.for_task(task, values)
    train, valid = shards
    result = finetune(config, init, [str(train)], [str(valid)], run_dir, resume="never", loader=LoaderConfig(0))
    return result.evaluation


def variant_name(task: str, unfrozen: bool) -> str:
    return f"{task}_unfrozen" if unfrozen else task


def frozen_description(task: str, unfrozen: bool) -> str:
    """What does not learn, in the tiny model's terms (a share of its layers rounds down)."""
    if unfrozen:
        return "the feature encoder"
    freeze = FreezeConfig(**TASK_DEFAULTS[task]["freeze"])
    if freeze.head_only:
        return "everything but the head"
    total = int(PRESETS["tiny"]["num_hidden_layers"])
    return f"the feature encoder and {layers_to_freeze(freeze.layers, total)} of {total} transformer layers"


def summary(values: list[float], per_seed: bool = True) -> dict[str, Any]:
    """Mean, sample standard deviation over the seeds and, if `per_seed`, the values seed by seed."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    result: dict[str, Any] = {"mean": round(statistics.fmean(values), 4), "std": round(spread, 4)}
    if per_seed:
        result["seeds"] = [round(v, 4) for v in values]
    return result


def chance_levels(valid: Path) -> dict[str, float]:
    """What a model that ignores the audio scores: the majority class's share; WER 1 (an empty transcript)."""
    corpus = ShardCorpus(valid)
    levels: dict[str, float] = {"ctc": 1.0}
    for task, column in (("classify", "label"), ("speaker", "speaker")):
        values = [v for v in read_column(corpus, column) if v is not None]
        levels[task] = round(max(values.count(v) for v in set(values)) / len(values), 4)
    return levels


def compare(task: str, runs: dict[str, list[dict[str, float]]], chance: float) -> dict[str, Any]:
    score, lower_is_better, others = SCORES[task]
    pretrained = [r[score] for r in runs["pretrained"]]
    anchor = [r[score] for r in runs["random_init"]]
    differences = [p - a for p, a in zip(pretrained, anchor, strict=True)]
    mean_anchor = statistics.fmean(anchor)
    result: dict[str, Any] = {
        "score": score,
        "lower_is_better": lower_is_better,
        "chance": chance,
        "random_init": summary(anchor),
        "pretrained": summary(pretrained),
        "pretrained_minus_random_init": summary(differences),
        "pretrained_vs_random_init": round(statistics.fmean(pretrained) / mean_anchor, 3) if mean_anchor else None,
        "pretrained_better_in": f"{sum(d < 0 if lower_is_better else d > 0 for d in differences)}/{len(differences)}",
    }
    for other in others:
        result[other] = {init: summary([r[other] for r in runs[init]], per_seed=False) for init in runs}
    return result


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"about 2 minutes: {QUICK}")
    parser.add_argument("--utterances-per-voice", type=int, default=32, help="3/4 train, 1/4 validate")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=400, help="updates per fine-tuning run, both inits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(SCORES), choices=list(SCORES))
    parser.add_argument("--lr-scale", type=float, default=30.0, help="times each task's default lr")
    parser.add_argument("--max-batch-seconds", type=float, default=20.0, help="fine-tuning batch budget")
    parser.add_argument(
        "--also-unfrozen",
        nargs="*",
        default=["speaker"],
        choices=list(SCORES),
        help="also run these tasks with every transformer layer learning (reported as TASK_unfrozen)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    logging.getLogger("w2v").setLevel(logging.ERROR)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="w2v-bench-finetune-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        train, valid = write_labelled_corpus(work / "corpus", args.utterances_per_voice, seed=0)
        corpus_seconds = time.perf_counter() - started
        log(f"corpus written in {corpus_seconds:.0f} s")
        pretrained, pretraining = pretrain_tiny(train, args.pretrain_steps, work / "pretrain")
        pretrain_seconds = time.perf_counter() - started - corpus_seconds
        log(f"pretrained {args.pretrain_steps} steps in {pretrain_seconds:.0f} s: {pretraining}")

        variants = [(task, False) for task in args.tasks] + [(task, True) for task in args.also_unfrozen]
        runs: dict[str, dict[str, list[dict[str, float]]]] = {
            variant_name(*variant): {"random_init": [], "pretrained": []} for variant in variants
        }
        for seed in range(args.seeds):
            inits = {"random_init": random_init(seed, work / f"random-init-{seed}"), "pretrained": pretrained}
            for task, unfrozen in variants:
                name = variant_name(task, unfrozen)
                for init, folder in inits.items():
                    run_dir = work / f"finetune-{name}-{init}-{seed}"
                    evaluation = finetune_once(task, unfrozen, folder, (train, valid), seed, args, run_dir)
                    runs[name][init].append(evaluation)
                    shown = {k: round(v, 3) for k, v in evaluation.items() if k != "val_loss"}
                    log(f"seed {seed} {name} {init}: {shown} ({time.perf_counter() - started:.0f} s)")
        chance = chance_levels(valid)
        train_corpus, valid_corpus = ShardCorpus(train), ShardCorpus(valid)
        train_seconds = float(train_corpus.num_samples.sum()) / train_corpus.sample_rate

    return {
        "benchmark": "finetune",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "corpus": {
            "voices": len(VOICES),
            "train_utterances": len(train_corpus),
            "valid_utterances": len(valid_corpus),
            "train_audio_seconds": round(train_seconds, 1),
        },
        "pretraining": {"preset": "tiny", "config": "configs/tiny.yaml", **pretraining},
        "finetuning": {
            "updates": args.finetune_steps,
            "seeds": args.seeds,
            "lr_scale": args.lr_scale,
            "max_batch_seconds": args.max_batch_seconds,
        },
        "anchor": "random init: the same tiny architecture, fresh weights (seed 0's are pretraining's start)",
        "tasks": {
            variant_name(task, unfrozen): {
                "lr": float(TASK_DEFAULTS[task]["lr"]) * args.lr_scale,
                "frozen": frozen_description(task, unfrozen),
                **compare(task, runs[variant_name(task, unfrozen)], chance[task]),
            }
            for task, unfrozen in variants
        },
        "seconds": {
            "corpus": round(corpus_seconds),
            "pretraining": round(pretrain_seconds),
            "total": round(time.perf_counter() - started),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
