"""The learning-rate schedule: linear warmup, then linear or cosine decay to zero at the last step."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for the update after `step` updates."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    remaining = max(max_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / remaining, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def tri_stage_factor(
    step: int,
    max_steps: int,
    warmup_share: float,
    hold_share: float,
    initial_scale: float,
    final_scale: float,
) -> float:
    """fairseq's tri-stage schedule as a multiplier of the peak lr: linear warmup from `initial_scale`, hold
    at 1, then exponential decay to `final_scale` by the last step."""
    warmup = round(warmup_share * max_steps)
    hold = round(hold_share * max_steps)
    if step < warmup:
        return initial_scale + (1.0 - initial_scale) * step / warmup
    if step < warmup + hold:
        return 1.0
    decay = max(max_steps - warmup - hold, 1)
    progress = min((step - warmup - hold) / decay, 1.0)
    return math.exp(math.log(final_scale) * progress)
