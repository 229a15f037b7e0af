"""A run's plumbing, shared by every recipe: the Accelerator, the run folder (resume, checkpoints, the best
model, metrics) and the guarded step (out-of-memory retry in pieces, rollback after repeated skips).

A recipe builds its model, data and loss, then loops:

    state = run.resume(...)                       # RunState: the step and the guards' counters
    while state.step < max_steps:
        state, result = run.guarded_step(state, batches, update)
        if result is None: continue               # retried in pieces, or rolled back
        ... log, evaluate, run.checkpoint(...)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

from w2v.data.collate import Batch
from w2v.data.stream import StreamState
from w2v.errors import W2VError
from w2v.run.checkpoint import TrainerState, load_checkpoint, resolve_resume, save_best, save_checkpoint
from w2v.run.config import StepGuards
from w2v.run.guards import needs_rollback, roll_back, smaller_micro_batches
from w2v.run.memory import OutOfMemory, clear_marker, marker_split, release_memory
from w2v.run.metrics import MetricsLog
from w2v.run.mirror import CheckpointMirror, MirrorConfig, MirrorError, bring_back_best, bring_back_newest
from w2v.run.state import RunState
from w2v.run.update import DataUnavailable

logger = logging.getLogger("w2v.run")
ABANDON_WAIT_SECONDS = 600.0  # how long a failing run waits for its last checkpoint to reach the bucket


def make_accelerator(mixed_precision: str, *, unused_parameters: bool = False) -> Accelerator:
    """The Accelerator of a run: on the CPU when there is no GPU (only then does Accelerate join the ranks
    torchrun started, over gloo); the scheduler stepped once per update (our schedules count updates, and
    Accelerate would otherwise step it once per rank). `unused_parameters`: DDP must expect parameters
    without gradients (layer drop skips layers at random per rank). Raises W2VError under DeepSpeed."""
    _check_launcher()
    transformers.utils.logging.disable_progress_bar()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[ddp],
        step_scheduler_with_optimizer=False,
    )


def _check_launcher() -> None:
    """Refuse what the step cannot honour, and say when Accelerate will quietly ignore a config file."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise W2VError(
            "DeepSpeed is not supported: it owns the gradients, and a w2v update rescales them over the whole "
            "update (pretraining: by its masked frames) before clipping; use configs/accelerate/fsdp.yaml "
            "(sharding) instead"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        logger.warning("FSDP needs GPUs: without one the ranks train data-parallel (DDP over gloo) on the CPU")


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic kernels for the run when asked, and the process's previous setting after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@dataclass(frozen=True)
class StepReport:
    """What a progress display is told after each update (on the main process): `w2v pretrain` and
    `w2v finetune` draw their progress bars from it."""

    step: int
    max_steps: int
    loss: float
    audio_seconds_per_second: float  # this rank's


OnStep = Callable[[StepReport], None]


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, evaluate, checkpoint) falls on `step`: every `every`, and at the end."""
    return step % every == 0 or step == last


class Outcome(Protocol):
    """What a recipe's update returns, as far as the harness cares."""

    @property
    def skipped(self) -> bool: ...

    @property
    def state_after(self) -> dict[str, Any]: ...


Result = TypeVar("Result", bound=Outcome)


class StepBatches:
    """A run's micro-batches, reopened where the current update began when they must come in more pieces."""

    def __init__(self, open_at: Callable[[StreamState | None, int], Iterable[Batch]], start: dict[str, Any] | None,
                 split: int) -> None:  # fmt: skip
        self._open_at = open_at
        self._start = StreamState.from_dict(start) if start is not None else None
        self._batches: Iterator[Batch] = iter(open_at(self._start, split))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return next(self._batches)

    def update_done(self, state_after: dict[str, Any]) -> None:
        self._start = StreamState.from_dict(state_after)

    def resume_state(self) -> dict[str, Any] | None:
        """The loader state the current update began at (None: the run's start), to checkpoint it."""
        return self._start.to_dict() if self._start is not None else None

    def reopen(self, split: int) -> None:
        """Read the current update again from its start, each planned micro-batch in `split` pieces."""
        del self._batches
        release_memory()
        self._batches = iter(self._open_at(self._start, split))


@dataclass(frozen=True)
class RunSpec:
    """What the harness needs from the recipe: where, what to save, and how to guard its updates."""

    folder: Path
    config: dict[str, Any]  # the recipe's config, saved in every checkpoint
    sample_rate: int
    keep_last: int
    guards: StepGuards
    peak_lr: float
    lr_remedy: str  # what to lower or slow down, in the recipe's config keys
    save_extra: Callable[[Path], None] | None = None  # writes beside a saved model (a tokenizer)
    mirror: MirrorConfig | None = None  # a bucket that receives every checkpoint as it is written


class Run:
    """One run folder under one Accelerator: resume, the guarded step, checkpoints, the best model, metrics.

    Metrics are written by the main process only; every rank calls every method (saving is collective)."""

    def __init__(self, accelerator: Accelerator, spec: RunSpec) -> None:
        self.accelerator, self.spec = accelerator, spec
        self.last_checkpoint: Path | None = None
        self._saved_step: int | None = None  # the step of last_checkpoint
        self.metrics: MetricsLog | None = None
        self._mirror: CheckpointMirror | None = None
        if spec.mirror is not None and accelerator.is_main_process:
            self._mirror = CheckpointMirror(spec.mirror, spec.folder)

    def resume(self, resume: str) -> tuple[RunState, dict[str, Any] | None, dict[str, Any]]:
        """Restore `resume` (auto | never | a checkpoint folder) into the prepared model, optimizer and
        scheduler; returns the run state, the loader's state (None: from the start) and the checkpoint's
        metrics. Opens the metrics log, forgetting records past the checkpoint's step. With a mirror, `auto`
        first brings back the bucket's newest checkpoint when it is newer than the run folder's (a machine
        that was preempted left its successor an empty disk)."""
        mirror = self.spec.mirror
        if mirror is not None and resume == "auto":
            self._everywhere(lambda: bring_back_newest(mirror, self.spec.folder))
        checkpoint = resolve_resume(self.spec.folder, resume)
        state, loader_state, metrics = RunState(), None, {}
        if checkpoint is not None:
            restored = load_checkpoint(self.accelerator, checkpoint)
            if mirror is not None:  # RUN/best went with the machine: the bucket's, if this history's
                self._everywhere(lambda: bring_back_best(mirror, self.spec.folder, restored.step))
            state = RunState.from_tracking(restored.step, restored.tracking)
            loader_state, metrics = restored.loader_state, dict(restored.metrics)
        self.last_checkpoint = checkpoint
        self._saved_step = state.step if checkpoint is not None else None
        if self.accelerator.is_main_process:
            self.metrics = MetricsLog(self.spec.folder, state.step if checkpoint is not None else None)
        # A multi-process run that ran out of memory asked for smaller pieces (RUN/oom.json).
        split = max(state.micro_batch_split, marker_split(self.spec.folder))
        return replace(state, micro_batch_split=split), loader_state, metrics

    def guarded_step(
        self, state: RunState, batches: StepBatches, update: Callable[[Iterator[Batch]], Result], scheduler: Any
    ) -> tuple[RunState, Result | None]:
        """Try one update. Out of memory: retried next call in twice the pieces (one process) or stopped
        with RUN/oom.json for the resumed run (several). Too many non-finite updates in a row: rolled back
        to the last checkpoint. Returns the new state and the update's outcome (None when it must be redone)."""
        try:
            outcome = update(batches)
        except OutOfMemory as error:
            failure: OutOfMemory | None = error
        else:
            failure = None
        if failure is not None:  # handled outside the except block: the failed step's tensors are free
            state = smaller_micro_batches(self.accelerator, self.spec.folder, failure, state)
            batches.reopen(state.micro_batch_split)
            return state, None
        batches.update_done(outcome.state_after)
        state = state.after_update(outcome.skipped)
        if needs_rollback(state, self.spec.guards):
            fp16 = self.accelerator.mixed_precision == "fp16"
            state = roll_back(self.accelerator, scheduler, state, self.last_checkpoint, self.spec.guards,
                              peak_lr=self.spec.peak_lr, remedy=self.spec.lr_remedy, fp16=fp16)  # fmt: skip
            if self.metrics is not None:
                self.metrics.rewind(state.step)
            return state, None
        return state, outcome

    def log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def _trainer_state(self, state: RunState, loader_state: dict[str, Any], metrics: dict[str, Any]) -> TrainerState:
        return TrainerState(state.step, loader_state, self.spec.config, metrics, state.to_tracking())

    def checkpoint(self, model: Any, state: RunState, loader_state: dict[str, Any], metrics: dict[str, Any]) -> Path:
        """Save a checkpoint of this step (the last `keep_last` are kept); returns its folder."""
        spec = self.spec
        saved = self._trainer_state(state, loader_state, metrics)
        self.last_checkpoint = save_checkpoint(
            self.accelerator, model, spec.folder, saved, spec.sample_rate, spec.keep_last, spec.save_extra
        )
        self._saved_step = state.step
        if self.accelerator.is_main_process:
            clear_marker(spec.folder)  # the checkpoint holds the split now
        if spec.mirror is not None:  # an earlier upload that failed for good stops the run here, saved
            self._everywhere(self._submit_to_mirror)
        return self.last_checkpoint

    def stop_for_data(self, model: Any, state: RunState, batches: StepBatches, error: DataUnavailable) -> NoReturn:
        """After `error` (every rank): checkpoint the last completed update, unless one holds it already, then
        raise a W2VError saying what failed and where the run goes on from (the same command resumes)."""
        loader_state = batches.resume_state()
        if loader_state is not None and state.step != self._saved_step:
            self.checkpoint(model, state, loader_state, {})
        where = f"stopped at {self.last_checkpoint}" if self.last_checkpoint is not None else "saved no checkpoint"
        raise W2VError(f"{error}; the run {where}: run the same command again to resume") from error

    def save_best(self, model: Any, state: RunState, loader_state: dict[str, Any], metrics: dict[str, Any]) -> Path:
        """RUN/best: this step's model, the best by validation so far."""
        saved = self._trainer_state(state, loader_state, metrics)
        best = save_best(self.accelerator, model, self.spec.folder, saved, self.spec.sample_rate, self.spec.save_extra)
        if self.spec.mirror is not None:
            self._everywhere(lambda: self._mirror.submit_best(best) if self._mirror is not None else None)
        return best

    def close(self) -> None:
        """Close the metrics log and wait for the checkpoints still being mirrored. Raises MirrorError."""
        if self.metrics is not None:
            self.metrics.close()
        if self.spec.mirror is not None:
            self._everywhere(self._close_mirror)
        self.accelerator.wait_for_everyone()

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """The run's training: closed when it ends, abandoned (the upload under way may finish) when an error
        ends it."""
        try:
            yield
        except BaseException:
            if self.accelerator.is_main_process:
                self.abandon()
            raise
        self.close()

    def abandon(self) -> None:
        """After an error that ends the run: let the checkpoint upload under way finish (bounded), so the
        bucket holds the newest checkpoint the run saved. Never raises; the main process only."""
        if self._mirror is None:
            return
        logger.warning("waiting for the checkpoint upload under way to %s to finish", self._mirror.config.url)
        self._mirror.close(timeout=ABANDON_WAIT_SECONDS)
        if self._mirror.error is not None:
            logger.warning("%s", self._mirror.error)

    def _submit_to_mirror(self) -> None:
        self._mirror_failure()
        if self._mirror is not None and self.last_checkpoint is not None:
            self._mirror.submit(self.last_checkpoint)

    def _mirror_failure(self) -> None:
        error = self._mirror.error if self._mirror is not None else None
        if error is not None:
            raise MirrorError(f"{error}; the run stopped at {self.last_checkpoint} (resume once the bucket answers)")

    def _close_mirror(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
        self._mirror_failure()

    def _everywhere(self, action: Callable[[], Any]) -> None:
        """Run `action` on the main process; a W2VError it raises is raised on every rank (none is left
        waiting for the others in a collective)."""
        message: list[str | None] = [None]
        if self.accelerator.is_main_process:
            try:
                action()
            except (W2VError, OSError, ValueError, KeyError) as error:  # damaged or unreadable: one line
                message = [str(error) if isinstance(error, W2VError) else f"{type(error).__name__}: {error}"]
        message = broadcast_object_list(message)
        if message[0] is not None:
            raise MirrorError(message[0])
