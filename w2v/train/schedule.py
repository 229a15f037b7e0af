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
