"""The harness's own configuration: the step guards' limits (each recipe's config carries them as `guards`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepGuards:
    """When a run rolls back to its last checkpoint with a lower learning rate, and when it gives up."""

    max_consecutive_skips: int = 5  # non-finite updates in a row before a rollback
    max_rollbacks: int = 3  # then the run stops with an error
    rollback_lr_factor: float = 0.5  # the peak lr after the k-th rollback: lr · factor^k
