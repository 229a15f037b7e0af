"""The step guards' decisions: how to go on after an out-of-memory step, and when and how to roll back.

A non-finite update is skipped by the update itself (w2v.run.update); after `max_consecutive_skips` in a row
the run goes back to its last checkpoint's weights and optimizer with a lower peak learning rate, at most
`max_rollbacks` times, then stops with an error that says what to change.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from w2v.errors import W2VError
from w2v.run.checkpoint import load_checkpoint
from w2v.run.config import StepGuards
from w2v.run.memory import OutOfMemory, write_marker
from w2v.run.state import RunState

logger = logging.getLogger("w2v.run")


def smaller_micro_batches(accelerator: Accelerator, run_dir: Path, failure: OutOfMemory, state: RunState) -> RunState:
    """A step ran out of memory: the state to retry it with, micro-batches in twice as many pieces.

    Raises W2VError when a single utterance does not fit (nothing left to split), and when several processes
    run (the others wait in a collective): the failing rank leaves RUN/oom.json for the resumed run to read.
    """
    split, step = 2 * state.micro_batch_split, state.step
    if failure.rows <= 1:
        raise W2VError(
            f"out of memory at step {step + 1} on a single utterance of {failure.samples} samples: lower "
            "batch.max_sample_seconds, or turn on gradient_checkpointing or bf16 mixed_precision"
        )
    if accelerator.num_processes > 1:
        write_marker(run_dir, split, step, accelerator.process_index)
        raise W2VError(
            f"rank {accelerator.process_index} ran out of memory at step {step + 1} ({failure}); resume "
            f"(--resume auto) reads micro-batches in {split} pieces with {split}× the accumulation"
        )
    logger.warning("step %d: %s; micro-batches now read in %d pieces (the same utterances per update)",
                   step + 1, failure, split)  # fmt: skip
    return replace(state, micro_batch_split=split, oom_events=state.oom_events + 1)


def needs_rollback(state: RunState, guards: StepGuards) -> bool:
    return state.consecutive_skips >= guards.max_consecutive_skips


def roll_back(
    accelerator: Accelerator,
    scheduler: Any,
    state: RunState,
    checkpoint: Path | None,
    guards: StepGuards,
    *,
    peak_lr: float,
    remedy: str,
    fp16: bool,
) -> RunState:
    """Updates keep failing: back to the last checkpoint's weights and optimizer, with a lower peak lr.

    The loader keeps going forward (the batches that failed are not read again). Returns the state to go on
    from (the checkpoint's step, this run's counters); raises W2VError when there is nothing to go back to
    or the rollbacks are used up, naming `remedy` (the recipe's words for a lower or slower learning rate).
    """
    rollbacks = state.rollbacks + 1
    if checkpoint is None or rollbacks > guards.max_rollbacks:
        why = "before its first checkpoint" if checkpoint is None else f"after {guards.max_rollbacks} rollbacks"
        remedy += ", or use bf16 instead of fp16" if fp16 else ""
        if state.step == guards.max_consecutive_skips and checkpoint is None:  # not one finite update
            remedy = "check the shards (w2v doctor SHARDS) and the model's overrides; " + remedy
        raise W2VError(
            f"training diverged at step {state.step} {why}: {guards.max_consecutive_skips} updates in a row had "
            f"a non-finite loss or gradient; {remedy}"
        )
    restored = load_checkpoint(accelerator, checkpoint)
    lr = peak_lr * guards.rollback_lr_factor**rollbacks
    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate wraps the torch scheduler
    inner.base_lrs = [lr for _ in inner.base_lrs]
    logger.warning("step %d: %d non-finite updates in a row; rolled back to %s with peak lr %.3g (rollback %d of %d)",
                   state.step, guards.max_consecutive_skips, checkpoint.name, lr, rollbacks,
                   guards.max_rollbacks)  # fmt: skip
    return replace(state, step=restored.step, consecutive_skips=0, rollbacks=rollbacks)
