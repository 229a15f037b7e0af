"""Benchmark that pretraining teaches every fine-tuning task something: pretrained vs random init, over seeds.

The guard that a change to masking, negatives, the loss or the loader did not silently break learning. The
corpus is the demo's kind (tests/speech_corpus.py: espeak-ng sentences by 24 speakers, three in each of 8
accents, a tenth noisy and a tenth reverberant), one corpus split by utterance: six in seven train, the
seventh is the test set, so its speakers are the training speakers. Seed k:
  1. pretrains configs/tiny.yaml with seed k on the training audio (its held-out share picks RUN/best);
  2. fine-tunes each task from that model and from random initialization (the same architecture with the
     weights seed k draws: pretraining's own starting weights, so the only difference is pretraining), the
     same budget, data order and head for both, and scores the test set after the last update:
       ctc       the transcript, configs/tiny-ctc.yaml            character error rate (lower is better)
       classify  the accent (8 classes), configs/tiny-classify.yaml   accuracy
       speaker   the speaker (24), configs/tiny-speaker.yaml       accuracy (the top layer and the head learn)
Prints one JSON object: per task, chance, each init's mean ± sd and seed by seed, pretrained minus random
init per seed, and on how many seeds pretrained was ahead. Pretraining's own variance is in the spread
(one run per seed). About 20 minutes on 2 cores; --quick (a few minutes) checks only that it runs.
Usage: python benchmarks/learning.py [--quick] [--seeds 3] [--utterances 1050]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.speech_corpus import build, plan
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.evidence import collapsed_codebook
from w2v.finetune.labels import read_column
from w2v.finetune.recipe import finetune
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Per task: the score it is judged by, whether lower is better, the label column, what else is reported.
TASKS: dict[str, tuple[str, bool, str, tuple[str, ...]]] = {
    "ctc": ("val_cer", True, "text", ("val_wer",)),
    "classify": ("val_accuracy", False, "label", ("val_macro_f1",)),
    "speaker": ("val_accuracy", False, "speaker", ("val_eer",)),
}
TEST_EVERY = 7  # every seventh utterance is in the test set
QUICK = {"utterances": 210, "seeds": 1, "pretrain_steps": 30, "finetune_steps": 20}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_corpus(root: Path, utterances: int, seed: int = 0) -> tuple[Path, Path]:
    """(train shards, test shards) of one speech corpus, with the speaker's accent as the `label` column."""
    speakers = 24
    voices, _ = plan(utterances, speakers, seed)
    accent = {voice.name: voice.voice.split("+")[0] for voice in voices}
    built = build(root / "all", utterances, speakers, seed)
    folders = []
    for split in ("train", "test"):
        raw = root / split
        raw.mkdir(parents=True)
        rows = []
        for k, utterance in enumerate(built):
            if (k % TEST_EVERY == TEST_EVERY - 1) == (split == "test"):
                shutil.move(root / "all" / utterance.path, raw / utterance.path)
                rows.append({"path": utterance.path, "text": utterance.text, "speaker": utterance.speaker,
                             "label": accent[utterance.speaker]})  # fmt: skip
        (raw / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        out = root / f"{split}-shards"
        command = [sys.executable, "-m", "w2v", "prepare", str(raw), "--out", str(out), "--metadata",
                   str(raw / "metadata.jsonl"), "--workers", "2"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        folders.append(out)
    return folders[0], folders[1]


def pretrain_seed(train: Path, seed: int, steps: int | None, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """configs/tiny.yaml pretrained with `seed`; returns RUN/best/model and what the run logged."""
    overrides = [f"seed={seed}"]
    if steps is not None:  # --quick: a shorter run, the same shape
        overrides += [f"max_steps={steps}", f"eval_every={steps}", f"checkpoint_every={steps}",
                      f"optim.warmup_steps={max(1, steps // 10)}"]  # fmt: skip
    config = TrainConfig.from_yaml(CONFIGS / "tiny.yaml", overrides)
    pretrain(config, [str(train)], run_dir, loader=LoaderConfig(num_workers=1), resume="never")
    validated = [r for r in read_metrics(run_dir) if "val_accuracy" in r]
    last = validated[-1]
    figures = {
        "seed": seed,
        "steps": config.max_steps,
        "val_accuracy": round(last["val_accuracy"], 4),
        "val_accuracy_vs_chance": round(last["val_accuracy"] / last["val_contrastive_chance"], 2),
        "val_perplexity": round(last["val_perplexity"], 1),
        # A collapsed codebook's accuracy means nothing (w2v.finetune.evidence.collapsed_codebook).
        "collapsed": collapsed_codebook({k.removeprefix("val_"): v for k, v in last.items()}) or None,
    }
    return run_dir / "best" / "model", figures


def finetune_config(task: str, seed: int, random_init: bool, steps: int | None) -> FinetuneConfig:
    overrides = [f"seed={seed}", f"random_init={random_init}"]
    if steps is not None:
        overrides += [f"max_steps={steps}", f"eval_every={steps}", f"log_every={steps}"]
    config: FinetuneConfig = FinetuneConfig.from_yaml(task, CONFIGS / f"tiny-{task}.yaml", overrides)
    return config


def summary(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation over the seeds, and the values seed by seed."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(spread, 4), "seeds": [round(v, 4) for v in values]}


def chance_levels(test: Path) -> dict[str, float]:
    """What ignoring the audio scores: the majority class's share; CER 1 (an empty transcript)."""
    corpus = ShardCorpus(test)
    levels: dict[str, float] = {"ctc": 1.0}
    for task in ("classify", "speaker"):
        values = [v for v in read_column(corpus, TASKS[task][2]) if v is not None]
        levels[task] = round(max(values.count(v) for v in set(values)) / len(values), 4)
    return levels


def compare(task: str, runs: dict[str, list[dict[str, float]]], chance: float) -> dict[str, Any]:
    score, lower_is_better, _, others = TASKS[task]
    pretrained = [r[score] for r in runs["pretrained"]]
    anchor = [r[score] for r in runs["random_init"]]
    differences = [p - a for p, a in zip(pretrained, anchor, strict=True)]
    ahead = sum(d < 0 if lower_is_better else d > 0 for d in differences)
    result: dict[str, Any] = {
        "score": score,
        "lower_is_better": lower_is_better,
        "chance": chance,
        "pretrained": summary(pretrained),
        "random_init": summary(anchor),
        "pretrained_minus_random_init": summary(differences),
        "pretrained_ahead_in": f"{ahead}/{len(differences)}",
    }
    for other in others:
        result[other] = {init: summary([r[other] for r in scores]) for init, scores in runs.items()}
    return result


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    parser.add_argument("--utterances", type=int, default=1050, help="in all; a seventh are the test set")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    args.pretrain_steps = args.finetune_steps = None  # the configs' own budgets
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    logging.getLogger("w2v").setLevel(logging.ERROR)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="w2v-bench-learning-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        train, test = write_corpus(work / "corpus", args.utterances)
        corpus_seconds = time.perf_counter() - started
        log(f"corpus written and prepared in {corpus_seconds:.0f} s")
        pretraining = []
        runs: dict[str, dict[str, list[dict[str, float]]]] = {t: {"pretrained": [], "random_init": []}
                                                              for t in args.tasks}  # fmt: skip
        for seed in range(args.seeds):
            set_seed(seed)
            model, figures = pretrain_seed(train, seed, args.pretrain_steps, work / f"pretrain-{seed}")
            pretraining.append(figures)
            log(f"seed {seed} pretrained: {figures} ({time.perf_counter() - started:.0f} s)")
            for task in args.tasks:
                for init in ("pretrained", "random_init"):
                    config = finetune_config(task, seed, init == "random_init", args.finetune_steps)
                    run_dir = work / f"finetune-{task}-{init}-{seed}"
                    result = finetune(config, model, [str(train)], [str(test)], run_dir, resume="never",
                                      loader=LoaderConfig(num_workers=0))  # fmt: skip
                    runs[task][init].append(result.evaluation)
                    shown = {k: round(v, 3) for k, v in result.evaluation.items() if k != "val_loss"}
                    log(f"seed {seed} {task} {init}: {shown} ({time.perf_counter() - started:.0f} s)")
        chance = chance_levels(test)
        train_corpus, test_corpus = ShardCorpus(train), ShardCorpus(test)
        train_seconds = float(train_corpus.num_samples.sum()) / train_corpus.sample_rate

    accuracies = [p["val_accuracy"] for p in pretraining]
    tasks = {
        task: {"config": f"configs/tiny-{task}.yaml", **compare(task, runs[task], chance[task])} for task in args.tasks
    }
    return {
        "benchmark": "learning",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "corpus": {
            "train_utterances": len(train_corpus),
            "test_utterances": len(test_corpus),
            "train_audio_hours": round(train_seconds / 3600, 2),
        },
        "pretraining": {
            "config": "configs/tiny.yaml",
            "val_accuracy": summary(accuracies),
            "val_accuracy_vs_chance": summary([p["val_accuracy_vs_chance"] for p in pretraining]),
            "runs": pretraining,
        },
        "anchor": "random init: the same tiny architecture with seed k's fresh weights (pretraining's start)",
        "tasks": tasks,
        "pretrained_ahead_everywhere": all(
            t["pretrained_ahead_in"] == f"{args.seeds}/{args.seeds}" for t in tasks.values()
        ),
        "seconds": {"corpus": round(corpus_seconds), "total": round(time.perf_counter() - started)},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
