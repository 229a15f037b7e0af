"""Diagnose a fine-tuning run: the checks every run gets, and its validation metric over the evaluations
(a model that got worse since its best is overfitting; one that never beat chance has not learnt the task)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from w2v.doctor.findings import Finding, ok, warning
from w2v.doctor.training_checks import FINE_TUNING, data_wait, divergence, non_finite, out_of_memory, values
from w2v.finetune.config import FinetuneConfig
from w2v.run.checkpoint import BEST, complete_checkpoints

WER_WORSE_BY = 0.05  # absolute rise of the word error rate over its best before calling it overfitting
ACCURACY_WORSE_BY = 0.05  # absolute fall of the accuracy below its best
OVERFIT_REMEDY = (
    "RUN/best holds the best model; train fewer epochs, freeze more layers (freeze.layers), or raise "
    "specaugment.mask_time_prob or weight_decay"
)


def diagnose_finetuning(run_dir: Path, records: list[dict[str, Any]], config: FinetuneConfig) -> list[Finding]:
    training = [r for r in records if "loss" in r]
    evaluations = [r for r in records if "val_loss" in r]
    ctc = config.task == "ctc"
    validation = _word_error_rate(evaluations) if ctc else _accuracy(evaluations, _classes(run_dir))
    return [
        non_finite(training, FINE_TUNING),
        divergence(training, FINE_TUNING),
        validation,
        data_wait(training),
        out_of_memory(training),
    ]


def _word_error_rate(evaluations: list[dict[str, Any]]) -> Finding:
    rates = values(evaluations, "val_wer")
    if rates.size == 0:
        return ok("validation", "no evaluation yet")
    best, last = float(rates.min()), float(rates[-1])
    numbers = {"best_wer": best, "last_wer": last, "evaluations": float(rates.size)}
    if best >= 1.0:
        return warning(
            "validation",
            f"no evaluation got a word right yet (best WER {best:.2f} over {rates.size} evaluations)",
            "train longer (epochs), raise lr, unfreeze layers (freeze.layers), check the shards' text column and "
            "that --pretrained is a pretrained model (w2v doctor on its run)",
            **numbers,
        )
    if last > best + WER_WORSE_BY:
        return warning("validation", f"the WER rose from its best {best:.3f} to {last:.3f}: overfitting",
                       OVERFIT_REMEDY, **numbers)  # fmt: skip
    return ok("validation", f"WER {last:.3f} (best {best:.3f})", **numbers)


def _accuracy(evaluations: list[dict[str, Any]], classes: int | None) -> Finding:
    scores = values(evaluations, "val_accuracy")
    if scores.size == 0:
        return ok("validation", "no evaluation yet")
    best, last = float(scores.max()), float(scores[-1])
    numbers = {"best_accuracy": best, "last_accuracy": last, "evaluations": float(scores.size)}
    chance = 1.0 / classes if classes else None
    if chance is not None and scores.size >= 2 and best <= chance:
        return warning(
            "validation",
            f"the accuracy never beat chance (best {best:.3f}, chance 1/{classes} = {chance:.3f})",
            "train longer (epochs), raise lr, unfreeze layers (freeze.layers or freeze.head_only=false), check "
            "the label column, or pretrain longer",
            chance=chance,
            **numbers,
        )
    if last < best - ACCURACY_WORSE_BY:
        return warning("validation", f"the accuracy fell from its best {best:.3f} to {last:.3f}: overfitting",
                       OVERFIT_REMEDY, **numbers)  # fmt: skip
    return ok("validation", f"accuracy {last:.3f} (best {best:.3f})", **numbers)


def _classes(run_dir: Path) -> int | None:
    """How many classes the run's model tells apart (from its saved config), when a model was saved."""
    folders = [run_dir / BEST] + [c for c in reversed(complete_checkpoints(run_dir))]
    for folder in folders:
        try:
            return len(json.loads((folder / "model" / "config.json").read_text())["id2label"])
        except (OSError, ValueError, KeyError):
            continue
    return None
