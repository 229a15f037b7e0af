"""A run's own memory, beside the weights and the loader: counters, the guards' state, the best score so far.

Saved in every checkpoint's trainer.json (under "tracking") and restored on resume, so that a resumed run
counts, compares and stops exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class RunState:
    step: int = 0  # updates done (skipped ones count: the stream moved on)
    skipped_steps: int = 0  # updates not made: a non-finite loss or gradient
    consecutive_skips: int = 0
    rollbacks: int = 0
    oom_events: int = 0
    micro_batch_split: int = 1  # planned micro-batches are read in this many pieces (out-of-memory guard)
    best_score: float | None = None  # the best validation score so far (lower or higher is better: the recipe's)
    best_step: int | None = None
    evals_since_best: int = 0  # evaluations without a new best (early stopping)
    lowest_loss: float | None = None  # the lowest logged training loss the recipe watches (collapse warnings)

    def to_tracking(self) -> dict[str, Any]:
        """What trainer.json keeps (the step is kept beside it, as before)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "step"}

    @classmethod
    def from_tracking(cls, step: int, tracking: dict[str, Any]) -> RunState:
        """The state a checkpoint saved; also reads the keys of checkpoints written before this class."""
        known = {f.name for f in dataclasses.fields(cls)} - {"step"}
        values = {k: v for k, v in tracking.items() if k in known}
        old_best = tracking.get("best_val_loss", tracking.get("best"))  # pretraining's / fine-tuning's old keys
        values.setdefault("best_score", old_best)
        values.setdefault("lowest_loss", tracking.get("lowest_contrastive_loss"))
        return cls(step=step, **values)

    def after_update(self, skipped: bool) -> RunState:
        return replace(
            self,
            step=self.step + 1,
            skipped_steps=self.skipped_steps + int(skipped),
            consecutive_skips=self.consecutive_skips + 1 if skipped else 0,
        )

    def after_evaluation(self, score: float, higher_is_better: bool) -> RunState:
        """Counts an evaluation: a new best (a finite score better than any before) or one more without."""
        best = self.best_score
        better = math.isfinite(score) and (best is None or (score > best if higher_is_better else score < best))
        if better:
            return replace(self, best_score=score, best_step=self.step, evals_since_best=0)
        return replace(self, evals_since_best=self.evals_since_best + 1)

    def counters(self) -> dict[str, int]:
        """The guards' counters, as every log record carries them (w2v doctor reads them)."""
        return {
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "oom_events": self.oom_events,
            "micro_batch_split": self.micro_batch_split,
        }

    @property
    def is_best(self) -> bool:
        """Whether the last evaluation counted was a new best."""
        return self.best_step == self.step and self.evals_since_best == 0
