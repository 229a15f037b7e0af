"""Guards for long unattended runs: warnings with remedies, and a rollback when updates keep failing."""

from __future__ import annotations

import math
from typing import Any

from transformers import Wav2Vec2Config

from w2v.train.config import GuardConfig


def expected_masked_share(mask_time_prob: float) -> float:
    """About 1 - e^-p: p·T/L span starts of length L cover a share p of the frames, less their overlaps."""
    return 1.0 - math.exp(-mask_time_prob)


def chance_contrastive_loss(num_negatives: int) -> float:
    """ln(K + 1): the contrastive loss of a model whose logits cannot tell the target from its K distractors."""
    return math.log(num_negatives + 1)


def collapse_below(chance: float, guards: GuardConfig) -> float:
    """A contrastive loss under this had left chance: back at chance after it is a collapse."""
    return (1 - 5 * guards.chance_margin) * chance


def health_warnings(
    record: dict[str, Any], model: Wav2Vec2Config, guards: GuardConfig, lowest_contrastive_loss: float | None = None
) -> list[str]:
    """What a log record says is going wrong, each with what to do about it (empty when all is well).

    `lowest_contrastive_loss` is the run's lowest logged so far: a loss back at chance after it is a collapse.
    (A loss that has not left chance yet is normal early on; `w2v doctor` judges that over the whole run.)
    """
    warnings = []
    codevectors = model.num_codevectors_per_group * model.num_codevector_groups
    if record["perplexity"] < guards.perplexity_floor_share * codevectors:
        warnings.append(
            f"codevector perplexity {record['perplexity']:.1f} of {codevectors}: the quantizer is collapsing onto "
            "few codevectors; raise diversity_loss_weight (model.overrides) or gumbel.max_temperature, or lower "
            "optim.lr"
        )
    target = expected_masked_share(model.mask_time_prob)
    share = record["masked_share"]
    if abs(share - target) > guards.mask_share_tolerance * target:
        warnings.append(
            f"{100 * share:.0f} % of frames masked, expected about {100 * target:.0f} %: utterances are too short "
            "for mask_time_length (raise prepare's --min-seconds or batch.max_sample_seconds) or the masking "
            "config is off"
        )
    chance = chance_contrastive_loss(model.num_negatives)
    at_chance = record["contrastive_loss"] >= (1 - guards.chance_margin) * chance
    if at_chance and lowest_contrastive_loss is not None and lowest_contrastive_loss < collapse_below(chance, guards):
        warnings.append(
            f"contrastive loss {record['contrastive_loss']:.3f} is back at chance (ln({model.num_negatives} + 1) = "
            f"{chance:.3f}) after {lowest_contrastive_loss:.3f}: the representations collapsed; lower optim.lr "
            "or raise optim.warmup_steps, and resume from a checkpoint from before the rise"
        )
    if not math.isfinite(record["loss"]):
        warnings.append("the loss is not finite: lower optim.lr, raise optim.warmup_steps (with fp16: use bf16)")
    return warnings
