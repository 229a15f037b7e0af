"""The pretraining recipe, top to bottom: build, resume, loop (step, log, checkpoint), finish.

Runs as one process or under `accelerate launch` (each rank runs this same function). Every decision
that must agree across ranks (data, masks, when to stop) is a function of the step and the seed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed

from w2v.data.corpus import split_held_out
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import open_corpora
from w2v.data.stream import StreamState
from w2v.errors import W2VError
from w2v.ssl.objective import gumbel_temperature
from w2v.train.checkpoint import TrainerState, load_checkpoint, resolve_resume, save_best, save_checkpoint
from w2v.train.config import TrainConfig
from w2v.train.evaluate import evaluate
from w2v.train.guards import health_warnings
from w2v.train.memory import OutOfMemory, clear_marker, marker_split, release_memory, write_marker
from w2v.train.metrics import MetricsLog, peak_memory_bytes
from w2v.train.presets import build_model, model_config
from w2v.train.schedule import lr_factor
from w2v.train.step import StepResult, train_step

logger = logging.getLogger("w2v.train")


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    steps: int  # updates done by the end of this run (counting those before a resume)
    last_checkpoint: Path | None
    stopped_by: str  # max_steps | max_hours | early_stopping
    skipped_steps: int


def pretrain(
    config: TrainConfig,
    shards: list[str],
    run_dir: Path,
    *,
    resume: str = "auto",
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    loader: LoaderConfig | None = None,
    accelerator: Accelerator | None = None,
    on_step: Callable[[int, StepResult], None] | None = None,
    verify_shards: bool = True,
) -> PretrainResult:
    """Train (or go on training) into `run_dir`; `on_step(step, result)` is called after each update on the
    main process (the command line draws its progress bar with it). Every shard is checked against its
    manifest before step 1 (`verify_shards=False` skips it: fast and unsafe)."""
    started = time.monotonic()
    run_dir = Path(run_dir)
    transformers.utils.logging.disable_progress_bar()
    # --- build -------------------------------------------------------------------------------------------
    if accelerator is None:
        _check_launcher()
        # Layer drop skips layers at random per rank: DDP must expect parameters without gradients.
        layerdrop = float(model_config(config.model, config.masking).layerdrop)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=layerdrop > 0)
        # cpu=True when there is no GPU: only then does Accelerate join the ranks torchrun started (gloo).
        # Our schedule counts optimizer steps; Accelerate would otherwise step it once per rank per step.
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[ddp],
            step_scheduler_with_optimizer=False,
        )
    with _deterministic_algorithms(config.deterministic):
        set_seed(config.seed)  # the initial weights
        model: Any = build_model(config.model, config.masking)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
            fused=accelerator.device.type == "cuda",
        )
        factor = functools.partial(
            lr_factor,
            warmup_steps=config.optim.warmup_steps,
            max_steps=config.max_steps,
            schedule=config.optim.schedule,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        if config.compile:
            model = torch.compile(model)
        with accelerator.main_process_first():  # one rank per node stages remote shards
            cache = cache_dir or run_dir / "shard-cache"
            corpora, weights = open_corpora(shards, cache, storage_options, verify=verify_shards)
        splits = [split_held_out(corpus, config.val_share) for corpus in corpora]
        corpora = [train for train, _ in splits]
        held_out = [held for _, held in splits if held is not None]

        # --- resume ------------------------------------------------------------------------------------------
        step, loader_state = 0, None
        tracking: dict[str, Any] = {"best_val_loss": None, "evals_since_best": 0}
        checkpoint = resolve_resume(run_dir, resume)
        if checkpoint is not None:
            restored = load_checkpoint(accelerator, checkpoint)
            step, loader_state = restored.step, StreamState.from_dict(restored.loader_state)
            tracking.update(restored.tracking)
        metrics = MetricsLog(run_dir, step if checkpoint is not None else None) if accelerator.is_main_process else None
        # Out-of-memory guard: micro-batches read in `split` pieces (kept in checkpoints, or asked for by a
        # multi-process run that ran out of memory).
        split = max(int(tracking.get("micro_batch_split", 1)), marker_split(run_dir))
        tracking.update(micro_batch_split=split, oom_events=tracking.get("oom_events", 0))
        step_start = loader_state

        def open_batches(state: StreamState | None, split: int) -> Iterator[Any]:
            return iter(
                make_loader(
                    corpora,
                    config.batch,
                    config.seed,
                    weights=weights,
                    rank=accelerator.process_index,
                    world_size=accelerator.num_processes,
                    state=state,
                    loader=loader or LoaderConfig(),
                    split=split,
                )
            )

        batches = open_batches(step_start, split)

        # --- loop --------------------------------------------------------------------------------------------
        last_checkpoint, stopped_by, skipped = checkpoint, "max_steps", 0
        consecutive_skips, rollbacks = 0, 0
        window: list[StepResult] = []
        while step < config.max_steps:
            temperature = gumbel_temperature(
                step, config.gumbel.max_temperature, config.gumbel.min_temperature, config.gumbel.decay
            )
            accelerator.unwrap_model(model).set_gumbel_temperature(temperature)
            try:
                result = train_step(
                    accelerator,
                    model,
                    optimizer,
                    scheduler,
                    batches,
                    accumulation=config.gradient_accumulation,
                    max_grad_norm=config.optim.max_grad_norm,
                    seed=config.seed,
                )
            except OutOfMemory as error:
                failure: OutOfMemory | None = error
            else:
                failure = None
            if failure is not None:  # handled outside the except block: the failed step's tensors are free
                del batches
                release_memory()
                split = _smaller_micro_batches(accelerator, run_dir, failure, split, step)
                tracking.update(micro_batch_split=split, oom_events=tracking["oom_events"] + 1)
                batches = open_batches(step_start, split)
                continue
            step_start = StreamState.from_dict(result.state_after)
            step += 1
            skipped += int(result.skipped)
            consecutive_skips = consecutive_skips + 1 if result.skipped else 0
            if consecutive_skips >= config.guards.max_consecutive_skips:
                rollbacks += 1
                step = _roll_back(accelerator, scheduler, config, last_checkpoint, rollbacks, step)
                consecutive_skips, window = 0, []
                if metrics is not None:
                    metrics.rewind(step)
                continue
            window.append(result)
            if on_step is not None and accelerator.is_main_process:
                on_step(step, result)
            record = None
            if step % config.log_every == 0 or step == config.max_steps:
                record = _record(step, window, temperature, scheduler, accelerator, skipped, config.batch.sample_rate)
                record.update(rollbacks=rollbacks, oom_events=tracking["oom_events"], micro_batch_split=split)
                warmed_up = step > config.optim.warmup_steps  # early codebooks and losses say little
                architecture = accelerator.unwrap_model(model).config
                lowest = tracking.get("lowest_contrastive_loss")
                record["warnings"] = health_warnings(record, architecture, config.guards, lowest) if warmed_up else []
                if lowest is None or record["contrastive_loss"] < lowest:
                    tracking["lowest_contrastive_loss"] = record["contrastive_loss"]
                for warning in record["warnings"]:
                    logger.warning("step %d: %s", step, warning)
                window = []
                if metrics is not None:
                    metrics.write(record)
            patience_over = False
            if held_out and (step % config.eval_every == 0 or step == config.max_steps):
                evaluation = evaluate(
                    accelerator, model, held_out, config.batch, config.seed, config.max_val_batches
                ).as_record()
                best = tracking["best_val_loss"]
                if best is None or evaluation["val_loss"] < best:
                    tracking.update(best_val_loss=evaluation["val_loss"], evals_since_best=0, best_step=step)
                    state = TrainerState(step, result.state_after, config.to_dict(), evaluation, dict(tracking))
                    save_best(accelerator, model, run_dir, state, config.batch.sample_rate)
                else:
                    tracking["evals_since_best"] += 1
                patience = config.early_stopping_patience
                patience_over = patience is not None and tracking["evals_since_best"] >= patience
                if metrics is not None:
                    metrics.write({"step": step, **evaluation, "best_val_loss": tracking["best_val_loss"]})
            out_of_time = config.max_hours is not None and _hours_since(started) >= config.max_hours
            stopping = out_of_time or patience_over
            if out_of_time:
                stopped_by = "max_hours"
            elif patience_over:
                stopped_by = "early_stopping"
            if step % config.checkpoint_every == 0 or step == config.max_steps or stopping:
                state = TrainerState(step, result.state_after, config.to_dict(), record or {}, dict(tracking))
                last_checkpoint = save_checkpoint(
                    accelerator, model, run_dir, state, config.batch.sample_rate, config.keep_last
                )
                if accelerator.is_main_process:
                    clear_marker(run_dir)
            if stopping:
                break

        # --- finish ------------------------------------------------------------------------------------------
        if metrics is not None:
            metrics.close()
        accelerator.wait_for_everyone()
        return PretrainResult(run_dir, step, last_checkpoint, stopped_by, skipped)


def _record(
    step: int,
    window: list[StepResult],
    temperature: float,
    scheduler: Any,
    accelerator: Accelerator,
    skipped: int,
    sample_rate: int,
) -> dict[str, Any]:
    """Means over the steps since the last record (rates over their total time)."""
    count = len(window)
    seconds = sum(r.seconds for r in window)
    audio = sum(r.audio_samples for r in window) * accelerator.num_processes / sample_rate
    return {
        "step": step,
        "loss": sum(r.loss for r in window) / count,
        "contrastive_loss": sum(r.contrastive_loss for r in window) / count,
        "diversity_loss": sum(r.diversity_loss for r in window) / count,
        "masked_share": sum(r.masked_share for r in window) / count,
        "perplexity": sum(r.perplexity for r in window) / count,
        "grad_norm": sum(r.grad_norm for r in window) / count,
        "lr": float(scheduler.get_last_lr()[0]),
        "gumbel_temperature": temperature,
        "audio_seconds_per_second": audio / seconds if seconds > 0 else 0.0,
        "data_wait_share": sum(r.data_seconds for r in window) / seconds if seconds > 0 else 0.0,
        "peak_memory_bytes": peak_memory_bytes(accelerator.device),
        "skipped_steps": skipped,
        "epochs": [c["epoch"] for c in window[-1].state_after.get("corpora", [])],
    }


def _smaller_micro_batches(accelerator: Accelerator, run_dir: Path, failure: OutOfMemory, split: int, step: int) -> int:
    """A step ran out of memory: the split to retry it with (one process), or stop asking for it (several)."""
    if failure.rows <= 1:
        raise W2VError(
            f"out of memory at step {step + 1} on a single utterance of {failure.samples} samples: lower "
            "batch.max_sample_seconds, or turn on gradient_checkpointing or bf16 mixed_precision"
        )
    if accelerator.num_processes > 1:
        write_marker(run_dir, 2 * split, step, accelerator.process_index)
        raise W2VError(
            f"rank {accelerator.process_index} ran out of memory at step {step + 1} ({failure}); resume "
            f"(--resume auto) reads micro-batches in {2 * split} pieces with {2 * split}× the accumulation"
        )
    logger.warning(
        "step %d: %s; micro-batches now read in %d pieces (the same utterances per update)",
        step + 1,
        failure,
        2 * split,
    )
    return 2 * split


def _roll_back(
    accelerator: Accelerator, scheduler: Any, config: TrainConfig, checkpoint: Path | None, rollbacks: int, step: int
) -> int:
    """Updates keep failing: back to the last checkpoint's weights and optimizer, with a lower peak lr.

    The loader keeps going forward (the batches that failed are not read again). Returns the step to go on
    from; raises when there is nothing to go back to or the rollbacks are used up.
    """
    guards = config.guards
    if checkpoint is None or rollbacks > guards.max_rollbacks:
        why = "before its first checkpoint" if checkpoint is None else f"after {guards.max_rollbacks} rollbacks"
        remedy = "lower optim.lr, raise optim.warmup_steps" + (
            ", or use bf16 instead of fp16" if config.mixed_precision == "fp16" else ""
        )
        if step == guards.max_consecutive_skips and checkpoint is None:  # not one finite update: not the lr
            remedy = "check the shards (w2v doctor SHARDS) and the model's overrides; " + remedy
        raise W2VError(
            f"training diverged at step {step} {why}: {guards.max_consecutive_skips} updates in a row had a "
            f"non-finite loss or gradient; {remedy}"
        )
    restored = load_checkpoint(accelerator, checkpoint)
    lr = config.optim.lr * guards.rollback_lr_factor**rollbacks
    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate wraps the torch scheduler
    inner.base_lrs = [lr for _ in inner.base_lrs]
    logger.warning(
        "step %d: %d non-finite updates in a row; rolled back to %s with peak lr %.3g (rollback %d of %d)",
        step,
        guards.max_consecutive_skips,
        checkpoint.name,
        lr,
        rollbacks,
        guards.max_rollbacks,
    )
    return restored.step


def _check_launcher() -> None:
    """Refuse what the step cannot honour, and say when Accelerate will quietly ignore a config file."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise W2VError(
            "DeepSpeed is not supported: it owns the gradients, and the pretraining step normalizes them by the "
            "masked frames of the whole update before clipping; use configs/accelerate/fsdp.yaml (sharding) instead"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        logger.warning("FSDP needs GPUs: without one the ranks train data-parallel (DDP over gloo) on the CPU")


@contextmanager
def _deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic kernels for the run when asked, and the process's previous setting after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _hours_since(started: float) -> float:
    return (time.monotonic() - started) / 3600
