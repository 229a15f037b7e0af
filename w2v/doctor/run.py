"""Diagnose a training run from its metrics.jsonl and config: the design document's troubleshooting table.

Each check reads the numbers a person would look at, and says what it saw and what to change. A healthy run
yields only `ok` findings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from w2v.doctor.findings import Finding, error, ok, warning
from w2v.errors import W2VError
from w2v.run.checkpoint import TRAINER_STATE, complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.guards import chance_contrastive_loss, collapse_below, expected_masked_share
from w2v.train.presets import model_config

DATA_WAIT_LIMIT = 0.3  # share of step time waiting for batches
PLATEAU_RELATIVE = 0.01  # loss change over the last half of the records, relative
DIVERGENCE_FACTOR = 1.5  # recent loss over the best loss so far


def run_config(run_dir: Path) -> TrainConfig:
    """The run's config, from its newest checkpoint (else config.yaml / defaults are not guessed: an error)."""
    for checkpoint in reversed(complete_checkpoints(run_dir)):
        try:
            return TrainConfig.from_dict(json.loads((checkpoint / TRAINER_STATE).read_text())["config"])
        except (OSError, ValueError, KeyError) as problem:
            raise W2VError(f"{checkpoint / TRAINER_STATE}: unreadable ({problem})") from problem
    raise W2VError(f"{run_dir}: no checkpoint to read the run's config from; is it a w2v pretrain run folder?")


def diagnose_run(run_dir: Path) -> list[Finding]:
    records = read_metrics(run_dir)
    if not records:
        raise W2VError(f"{run_dir}: no metrics.jsonl (or it is empty): nothing to diagnose yet")
    config = run_config(run_dir)
    training = [r for r in records if "loss" in r]
    if not training:
        return [warning("metrics", "no training records yet", "let the run reach its first log step")]
    return [
        _non_finite(training),
        _divergence(training),
        _perplexity(training, config),
        _chance(training, config),
        _mask_share(training, config),
        _plateau(training, config),
        _data_wait(training),
        _out_of_memory(training),
    ]


def _values(records: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in records if r.get(key) is not None], dtype=np.float64)


def _non_finite(records: list[dict[str, Any]]) -> Finding:
    last = records[-1]
    skipped, rollbacks = int(last.get("skipped_steps", 0)), int(last.get("rollbacks", 0))
    non_finite = int(np.sum(~np.isfinite(_values(records, "loss"))))
    if skipped or rollbacks or non_finite:
        return error(
            "non_finite",
            f"{skipped} updates skipped for a non-finite loss or gradient, {rollbacks} rollbacks, "
            f"{non_finite} log records with a non-finite loss",
            "lower optim.lr (e.g. halve it), keep optim.max_grad_norm (10) on, raise optim.warmup_steps, "
            "use bf16 rather than fp16",
            skipped_steps=skipped,
            rollbacks=rollbacks,
            non_finite_records=non_finite,
        )
    return ok("non_finite", "every update finite", skipped_steps=0)


def _divergence(records: list[dict[str, Any]]) -> Finding:
    losses = _values(records, "loss")
    losses = losses[np.isfinite(losses)]
    if losses.size < 4:
        return ok("divergence", "too few records to judge the trend", records=float(losses.size))
    best = float(losses.min())
    recent = float(losses[-max(2, losses.size // 4) :].mean())
    if recent > DIVERGENCE_FACTOR * best:
        return error(
            "divergence",
            f"the loss rose from a best of {best:.3f} to {recent:.3f} (mean of the last quarter of the records)",
            "lower optim.lr, raise optim.warmup_steps, check optim.max_grad_norm; resume from the checkpoint "
            "before the rise",
            best_loss=best,
            recent_loss=recent,
        )
    return ok("divergence", f"recent loss {recent:.3f} within {DIVERGENCE_FACTOR}× of the best {best:.3f}")


def _perplexity(records: list[dict[str, Any]], config: TrainConfig) -> Finding:
    architecture = model_config(config.model, config.masking)
    codevectors = architecture.num_codevectors_per_group * architecture.num_codevector_groups
    perplexity = _values(records, "perplexity")
    if perplexity.size == 0:
        return ok("perplexity", "no perplexity logged")
    recent = float(perplexity[-max(1, perplexity.size // 4) :].mean())
    floor = config.guards.perplexity_floor_share * codevectors
    if recent < floor:
        return warning(
            "perplexity",
            f"codevector perplexity {recent:.1f} of {codevectors} codevectors (below {floor:.0f}): the quantizer "
            "is collapsing onto a few codevectors",
            "raise diversity_loss_weight (model.overrides) or gumbel.max_temperature, slow gumbel.decay, or "
            "lower optim.lr",
            perplexity=recent,
            codevectors=codevectors,
        )
    return ok("perplexity", f"codevector perplexity {recent:.1f} of {codevectors}", perplexity=recent)


def _chance(records: list[dict[str, Any]], config: TrainConfig) -> Finding:
    """Contrastive loss at ln(K + 1): the model tells targets from distractors no better than a guess."""
    warm = [r for r in records if r["step"] > config.optim.warmup_steps]
    losses = _values(warm, "contrastive_loss")
    losses = losses[np.isfinite(losses)]
    chance = chance_contrastive_loss(config.masking.num_negatives)
    if losses.size < 4:
        return ok("chance", "too early to compare the contrastive loss with chance", chance=chance)
    recent, best = float(losses[-max(2, losses.size // 4) :].mean()), float(losses.min())
    margin = config.guards.chance_margin
    numbers = {"recent_contrastive_loss": recent, "best_contrastive_loss": best, "chance": chance}
    if recent < (1 - margin) * chance:
        return ok("chance", f"contrastive loss {recent:.3f}, below chance {chance:.3f}", **numbers)
    if best < collapse_below(chance, config.guards):
        return error(
            "chance",
            f"the contrastive loss fell to {best:.3f} and is back at chance ({recent:.3f}, ln(K + 1) = "
            f"{chance:.3f}): the representations collapsed",
            "lower optim.lr (e.g. halve it) and raise optim.warmup_steps; resume from a checkpoint from before "
            "the rise",
            **numbers,
        )
    return warning(
        "chance",
        f"the contrastive loss has stayed at chance since warm-up ({recent:.3f}, ln(K + 1) = {chance:.3f}): the "
        "model is not learning yet",
        "check the corpus (w2v doctor SHARDS: silence, noise, very short audio), try a lower or higher optim.lr, "
        "or train longer",
        **numbers,
    )


def _mask_share(records: list[dict[str, Any]], config: TrainConfig) -> Finding:
    shares = _values(records, "masked_share")
    if shares.size == 0:
        return ok("mask_share", "no masked share logged")
    share = float(shares.mean())
    target = expected_masked_share(config.masking.mask_time_prob)
    if abs(share - target) > config.guards.mask_share_tolerance * target:
        return warning(
            "mask_share",
            f"{100 * share:.0f} % of frames masked, expected about {100 * target:.0f} % for mask_time_prob "
            f"{config.masking.mask_time_prob}",
            "utterances too short for masking.mask_time_length: raise prepare's --min-seconds or "
            "batch.max_sample_seconds, or lower mask_time_length",
            masked_share=share,
            expected=target,
        )
    return ok("mask_share", f"{100 * share:.0f} % of frames masked (expected {100 * target:.0f} %)")


def _plateau(records: list[dict[str, Any]], config: TrainConfig) -> Finding:
    losses = _values(records, "loss")
    steps = _values(records, "step")
    if losses.size < 8 or steps[-1] <= config.optim.warmup_steps:
        return ok("plateau", "too early to judge convergence")
    half = losses.size // 2
    earlier, later = float(losses[half // 2 : half].mean()), float(losses[-(half // 2) :].mean())
    change = (earlier - later) / max(abs(earlier), 1e-9)
    if abs(change) < PLATEAU_RELATIVE:  # a rising loss is the divergence check's
        return warning(
            "plateau",
            f"the loss moved {100 * change:.2f} % over the last half of the run ({earlier:.3f} → {later:.3f})",
            "check the lr schedule (optim.lr, warmup, decay), raise masking.num_negatives, add data, or stop: "
            "the run may have converged",
            relative_change=change,
        )
    return ok("plateau", f"loss still falling ({100 * change:.1f} % over the last half)")


def _data_wait(records: list[dict[str, Any]]) -> Finding:
    waits = _values(records, "data_wait_share")
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


def _out_of_memory(records: list[dict[str, Any]]) -> Finding:
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
