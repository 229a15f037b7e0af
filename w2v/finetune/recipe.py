"""The fine-tuning recipe, top to bottom: labels, the task's model and its freezing, resume, loop (update, log,
evaluate, checkpoint), finish.

Runs as one process or under `accelerate launch`. Utterances without a label are left out. The run folder,
resume, the step guards (non-finite skip, out-of-memory pieces, rollback) and checkpoints are the run
harness's (w2v.run), as in pretraining; what differs is here: the task's loss (the mean over a micro-batch's
utterances, w2v.finetune.task), its evaluation (w2v.finetune.evaluate), the tri-stage schedule over epochs,
the best model chosen by WER (CTC) or accuracy, and the tokenizer saved beside every model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from w2v.data.collate import Batch
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import open_corpora
from w2v.data.plan import plan_batches
from w2v.data.stream import StreamState
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.evaluate import evaluate_task
from w2v.finetune.freeze import apply_freeze
from w2v.finetune.labels import ctc_processor
from w2v.finetune.task import TaskData, label_corpora, task_loss, task_model
from w2v.run.harness import OnStep, Run, RunSpec, StepBatches, StepReport, due, make_accelerator
from w2v.run.schedule import tri_stage_factor
from w2v.run.seeds import seed_micro_batch
from w2v.run.update import Micro, Update, guarded_update

logger = logging.getLogger("w2v.finetune")
LR_REMEDY = "lower lr, raise schedule.warmup_share"


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    steps: int
    last_checkpoint: Path | None
    best: Path | None
    evaluation: dict[str, float]


@dataclass(frozen=True)
class _Cadence:
    max_steps: int
    eval_every: int
    checkpoint_every: int


def finetune(
    config: FinetuneConfig,
    pretrained: Path,
    train: Sequence[str],
    valid: Sequence[str],
    run_dir: Path,
    *,
    resume: str = "auto",
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    loader: LoaderConfig | None = None,
    verify_shards: bool = True,
    on_step: OnStep | None = None,
) -> FinetuneResult:
    """Fine-tune `pretrained` (a model folder) for `config.task` into `run_dir`, or go on with a run there;
    `on_step` hears of each update on the main process (the command line's progress bar).
    Raises W2VError on missing labels, a folder that is not a model, or a run that diverges past its rollbacks."""
    run_dir = Path(run_dir)
    accelerator = make_accelerator(config.mixed_precision)
    cache = cache_dir or run_dir / "shard-cache"
    with accelerator.main_process_first():
        train_corpora, _ = open_corpora(list(train), cache, storage_options, verify=verify_shards)
        valid_corpora, _ = open_corpora(list(valid), cache, storage_options, verify=verify_shards)
    data = label_corpora(config, train_corpora, valid_corpora, run_dir, accelerator)
    set_seed(config.seed)  # the new head's initial weights
    model = _frozen(task_model(config, pretrained, data), config)
    cadence = _cadence(config, data, accelerator)
    optimizer, scheduler = _optimizer(config, model, cadence.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    save_extra = functools.partial(_save_tokenizer, data, config.batch.sample_rate)
    spec = RunSpec(run_dir, config.to_dict(), config.batch.sample_rate, config.keep_last, config.guards, config.lr,
                   LR_REMEDY, save_extra)  # fmt: skip
    run = Run(accelerator, spec)
    state, loader_state, evaluation = run.resume(resume)  # the newest evaluation, also for a finished run
    open_at = functools.partial(_open_batches, config, data, accelerator, loader or LoaderConfig())
    batches = StepBatches(open_at, loader_state, state.micro_batch_split)
    micro = functools.partial(_micro, model, data, config)
    update = functools.partial(guarded_update, accelerator, model, optimizer, scheduler, micro=micro,
                               accumulation=config.gradient_accumulation,
                               max_grad_norm=config.max_grad_norm)  # fmt: skip

    window: list[tuple[int, Update]] = []  # the updates since the last log record
    higher_is_better = config.task != "ctc"
    while state.step < cadence.max_steps:
        state, result = run.guarded_step(state, batches, update, scheduler)
        if result is None:  # to be redone in smaller pieces, or rolled back to a checkpoint
            window = [(step, u) for step, u in window if step <= state.step]
            continue
        window.append((state.step, result))
        if on_step is not None and accelerator.is_main_process:
            on_step(_report(state.step, cadence.max_steps, result, config.batch.sample_rate))
        if due(state.step, config.log_every, cadence.max_steps):
            run.log({"step": state.step, **_means([u for _, u in window]), "lr": float(scheduler.get_last_lr()[0]),
                     **state.counters()})  # fmt: skip
            window = []
        if due(state.step, cadence.eval_every, cadence.max_steps):
            evaluation = evaluate_task(accelerator, model, data, config)
            score = evaluation.get("val_accuracy" if higher_is_better else "val_wer", float("nan"))
            state = state.after_evaluation(score, higher_is_better)
            if state.is_best:
                run.save_best(model, state, result.state_after, evaluation)
            run.log({"step": state.step, **evaluation})
        if due(state.step, cadence.checkpoint_every, cadence.max_steps):
            run.checkpoint(model, state, result.state_after, evaluation)
    run.close()
    best = run_dir / "best"
    return FinetuneResult(run_dir, state.step, run.last_checkpoint, best if best.is_dir() else None, evaluation)


def _frozen(model: Any, config: FinetuneConfig) -> Any:
    frozen = apply_freeze(model, config.freeze.feature_encoder, config.freeze.layers, config.freeze.head_only)
    logger.info("%s: %d transformer layers frozen; %d parameters learn, %d frozen", config.task, frozen.layers,
                frozen.trainable_parameters, frozen.frozen_parameters)  # fmt: skip
    return model


def _cadence(config: FinetuneConfig, data: TaskData, accelerator: Accelerator) -> _Cadence:
    """Steps in the run (`max_steps`, else `epochs` of the training utterances), and when to evaluate and save
    (every epoch unless given)."""
    batches = sum(len(plan_batches(s.corpus.num_samples, config.batch, config.seed, 0)) for s in data.train)
    steps_per_epoch = max(1, batches // (config.gradient_accumulation * accelerator.num_processes))
    max_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    eval_every = config.eval_every or steps_per_epoch
    return _Cadence(max_steps, eval_every, config.checkpoint_every or eval_every)


def _optimizer(config: FinetuneConfig, model: Any, max_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the parameters that learn, and the tri-stage learning-rate schedule."""
    learning = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(learning, lr=config.lr, weight_decay=config.weight_decay)
    stages = config.schedule
    factor = functools.partial(tri_stage_factor, max_steps=max_steps, warmup_share=stages.warmup_share,
                               hold_share=stages.hold_share, initial_scale=stages.initial_scale,
                               final_scale=stages.final_scale)  # fmt: skip
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _open_batches(config: FinetuneConfig, data: TaskData, accelerator: Accelerator, loader: LoaderConfig,
                  state: StreamState | None, split: int) -> Iterable[Batch]:  # fmt: skip
    return make_loader([s.corpus for s in data.train], config.batch, config.seed, rank=accelerator.process_index,
                       world_size=accelerator.num_processes, state=state, loader=loader, split=split)  # fmt: skip


def _micro(model: Any, data: TaskData, config: FinetuneConfig, batch: Batch) -> Micro:
    """The task's loss on one micro-batch, weighted as its share of the update. A micro-batch read in pieces
    (after running out of memory) weighs each piece's mean loss equally: close to, not exactly, the whole.
    Its random draws (dropout, masks) are seeded by its place in the stream."""
    seed_micro_batch(config.seed, batch.position, () if batch.pieces == 1 else (batch.piece,))
    loss = task_loss(model, batch, data.train[batch.corpus], config.task)
    share = (
        loss / config.gradient_accumulation
        if batch.pieces == 1
        else loss / (config.gradient_accumulation * batch.pieces)
    )
    sums = torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=loss.device)])
    return Micro(share, sums)


def _means(window: list[Update]) -> dict[str, float]:
    """The loss (mean over micro-batches), gradient norm (mean over updates) and share of time spent waiting
    for batches since the last record."""
    loss_sum, count = sum(u.totals[0] for u in window), sum(u.totals[1] for u in window)
    seconds = sum(u.seconds for u in window)
    return {
        "loss": loss_sum / max(count, 1.0),
        "grad_norm": sum(u.grad_norm for u in window) / len(window),
        "data_wait_share": sum(u.data_seconds for u in window) / seconds if seconds > 0 else 0.0,
    }


def _report(step: int, max_steps: int, update: Update, sample_rate: int) -> StepReport:
    rate = update.audio_samples / sample_rate / max(update.seconds, 1e-9)
    return StepReport(step, max_steps, update.totals[0] / max(update.totals[1], 1.0), rate)


def _save_tokenizer(data: TaskData, sample_rate: int, folder: Path) -> None:
    """CTC: the processor (tokenizer and feature extractor) beside the weights, for transformers' pipelines."""
    if data.tokenizer is not None:
        ctc_processor(data.tokenizer, sample_rate).save_pretrained(str(folder))
