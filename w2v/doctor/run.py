"""Diagnose a training run from its metrics.jsonl and config: the design document's troubleshooting table.
Pretraining's own checks are here; those every run gets are in training_checks, fine-tuning's in
finetune_run.

Each check reads the numbers a person would look at, and says what it saw and what to change. A healthy run
yields only `ok` findings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from w2v.doctor.findings import Finding, error, ok, warning
from w2v.doctor.finetune_run import diagnose_finetuning
from w2v.doctor.training_checks import PRETRAINING, data_wait, divergence, non_finite, out_of_memory, values
from w2v.errors import W2VError
from w2v.finetune.config import FinetuneConfig
from w2v.run.checkpoint import TRAINER_STATE, complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import TrainConfig
from w2v.train.health import chance_contrastive_loss, collapse_below, expected_masked_share
from w2v.train.presets import model_config

PLATEAU_RELATIVE = 0.01  # loss change over the last half of the records, relative


def run_config(run_dir: Path) -> TrainConfig | FinetuneConfig:
    """The run's config, from its newest checkpoint: a fine-tuning run's names its task. Raises W2VError when
    there is no checkpoint or its trainer.json cannot be read (defaults are not guessed)."""
    for checkpoint in reversed(complete_checkpoints(run_dir)):
        try:
            values = json.loads((checkpoint / TRAINER_STATE).read_text())["config"]
            if "task" in values:
                return FinetuneConfig.for_task(values["task"], values)
            return TrainConfig.from_dict(values)
        except (OSError, ValueError, KeyError) as problem:
            raise W2VError(f"{checkpoint / TRAINER_STATE}: unreadable ({problem})") from problem
    raise W2VError(f"{run_dir}: no checkpoint to read the run's config from; is it a w2v training run folder?")


def diagnose_run(run_dir: Path) -> list[Finding]:
    records = read_metrics(run_dir)
    if not records:
        raise W2VError(f"{run_dir}: no metrics.jsonl (or it is empty): nothing to diagnose yet")
    config = run_config(run_dir)
    training = [r for r in records if "loss" in r]
    if not training:
        return [warning("metrics", "no training records yet", "let the run reach its first log step")]
    if isinstance(config, FinetuneConfig):
        return diagnose_finetuning(run_dir, records, config)
    return [
        non_finite(training, PRETRAINING),
        divergence(training, PRETRAINING),
        _perplexity(training, config),
        _chance(training, config),
        _mask_share(training, config),
        _plateau(training, config),
        data_wait(training),
        out_of_memory(training),
    ]


def _perplexity(records: list[dict[str, Any]], config: TrainConfig) -> Finding:
    architecture = model_config(config.model, config.masking)
    codevectors = architecture.num_codevectors_per_group * architecture.num_codevector_groups
    perplexity = values(records, "perplexity")
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
    losses = values(warm, "contrastive_loss")
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
    shares = values(records, "masked_share")
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
    losses = values(records, "loss")
    steps = values(records, "step")
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
