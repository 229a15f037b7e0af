"""Checks every training run gets, pretraining or fine-tuning: non-finite updates, divergence, time spent
waiting for data, out-of-memory steps. Remedies name the run's own config keys (`Knobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from w2v.doctor.findings import Finding, error, ok, warning

DATA_WAIT_LIMIT = 0.3  # share of step time waiting for batches
DIVERGENCE_FACTOR = 1.5  # recent loss over the best loss so far


@dataclass(frozen=True)
class Knobs:
    """The config keys a remedy names: the learning rate, its warm-up and gradient clipping."""

    lr: str
    warmup: str
    grad_norm: str


PRETRAINING = Knobs("optim.lr", "optim.warmup_steps", "optim.max_grad_norm")
FINE_TUNING = Knobs("lr", "schedule.warmup_share", "max_grad_norm")


def values(records: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in records if r.get(key) is not None], dtype=np.float64)


def non_finite(records: list[dict[str, Any]], knobs: Knobs) -> Finding:
    last = records[-1]
    skipped, rollbacks = int(last.get("skipped_steps", 0)), int(last.get("rollbacks", 0))
    non_finite = int(np.sum(~np.isfinite(values(records, "loss"))))
    if skipped or rollbacks or non_finite:
        return error(
            "non_finite",
            f"{skipped} updates skipped for a non-finite loss or gradient, {rollbacks} rollbacks, "
            f"{non_finite} log records with a non-finite loss",
            f"lower {knobs.lr} (e.g. halve it), keep {knobs.grad_norm} on, raise {knobs.warmup}, use bf16 "
            "rather than fp16",
            skipped_steps=skipped,
            rollbacks=rollbacks,
            non_finite_records=non_finite,
        )
    return ok("non_finite", "every update finite", skipped_steps=0)


def divergence(records: list[dict[str, Any]], knobs: Knobs) -> Finding:
    losses = values(records, "loss")
    losses = losses[np.isfinite(losses)]
    if losses.size < 4:
        return ok("divergence", "too few records to judge the trend", records=float(losses.size))
    best = float(losses.min())
    recent = float(losses[-max(2, losses.size // 4) :].mean())
    if recent > DIVERGENCE_FACTOR * best:
        return error(
            "divergence",
            f"the loss rose from a best of {best:.3f} to {recent:.3f} (mean of the last quarter of the records)",
            f"lower {knobs.lr}, raise {knobs.warmup}, check {knobs.grad_norm}; resume from the checkpoint before "
            "the rise",
            best_loss=best,
            recent_loss=recent,
        )
    return ok("divergence", f"recent loss {recent:.3f} within {DIVERGENCE_FACTOR}× of the best {best:.3f}")


def data_wait(records: list[dict[str, Any]]) -> Finding:
    waits = values(records, "data_wait_share")
    if waits.size == 0:
        return ok("data_wait", "no data wait logged")
    wait = float(waits[-max(1, waits.size // 2) :].mean())
    if wait > DATA_WAIT_LIMIT:
        return warning(
            "data_wait",
            f"{100 * wait:.0f} % of each step waiting for batches",
            "more loader workers (--workers), shards on local disk (staged, not network storage), or a "
            "larger batch budget so each step computes longer",
            data_wait_share=wait,
        )
    return ok("data_wait", f"{100 * wait:.0f} % of step time waiting for data")


def out_of_memory(records: list[dict[str, Any]]) -> Finding:
    events = int(max((r.get("oom_events", 0) for r in records), default=0))
    split = int(max((r.get("micro_batch_split", 1) for r in records), default=1))
    if events:
        return warning(
            "out_of_memory",
            f"{events} out-of-memory steps; micro-batches now read in {split} pieces",
            "lower batch.max_batch_seconds (and raise gradient_accumulation to keep the update), turn on "
            "gradient_checkpointing, use bf16 mixed_precision",
            oom_events=events,
            micro_batch_split=split,
        )
    return ok("out_of_memory", "no out-of-memory steps")
