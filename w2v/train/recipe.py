"""The pretraining recipe, top to bottom: build, resume, loop (update, log, validate, checkpoint), finish.

Runs as one process or under `accelerate launch` (each rank runs this same function). Every decision
that must agree across ranks (data, masks, when to stop) is a function of the step and the seed. The run
folder, resume, the step guards and checkpoints are the run harness's (w2v.run); what is pretraining's own
is here: the model and its Gumbel temperature, the objective's step (w2v.train.step), its log record with
health warnings, and validation on held-out recordings with early stopping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from w2v.data.collate import Batch
from w2v.data.corpus import ShardCorpus, split_held_out
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import open_corpora, open_streaming_corpora
from w2v.data.stream import StreamState
from w2v.data.streaming import STREAM_REMOTE_SHARDS, CorpusCache, StreamingOptions, load_held_out, window_advice
from w2v.run.harness import (
    OnStep,
    Run,
    RunSpec,
    StepBatches,
    StepReport,
    deterministic_algorithms,
    due,
    make_accelerator,
)
from w2v.run.mirror import MirrorConfig
from w2v.run.schedule import lr_factor
from w2v.run.state import RunState
from w2v.run.update import DataUnavailable
from w2v.ssl.objective import gumbel_temperature
from w2v.train.config import TrainConfig
from w2v.train.evaluate import evaluate, validation_seconds
from w2v.train.presets import build_model, model_config
from w2v.train.record import log_record, record_warnings, with_lowest_loss
from w2v.train.step import StepResult, train_step

logger = logging.getLogger("w2v.train")
LR_REMEDY = "lower optim.lr, raise optim.warmup_steps"


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    steps: int  # updates done by the end of this run (counting those before a resume)
    last_checkpoint: Path | None
    stopped_by: str  # max_steps | max_hours | early_stopping
    skipped_steps: int  # updates skipped over the whole run (a non-finite loss or gradient)


@dataclass(frozen=True)
class _Data:
    train: list[ShardCorpus]
    weights: list[float]
    held_out: list[ShardCorpus]
    cache: CorpusCache | None = None  # streamed corpora's shards


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
    on_step: OnStep | None = None,
    verify_shards: bool = True,
    mirror: MirrorConfig | None = None,
    streaming: StreamingOptions | None = STREAM_REMOTE_SHARDS,
) -> PretrainResult:
    """Train (or go on training) into `run_dir`; `on_step` hears of each update on the main process (the
    command line draws its progress bar with it). Every shard is checked against its
    manifest before step 1 (`verify_shards=False` skips it: fast and unsafe). With `mirror`, every
    checkpoint also goes to a bucket as it is written, and `resume="auto"` also looks there. Raises W2VError
    when the run diverges past its rollbacks, a single utterance does not fit in memory, the mirror fails, or
    a shard cannot be fetched or read (after checkpointing the last completed update).
    Shards at a URL are streamed through a cache in `cache_dir` bounded by `streaming.limit` (None: staged
    whole before step 1)."""
    started, run_dir = time.monotonic(), Path(run_dir)
    if accelerator is None:
        layerdrop = float(model_config(config.model, config.masking).layerdrop)
        accelerator = make_accelerator(config.mixed_precision, unused_parameters=layerdrop > 0)
    with deterministic_algorithms(config.deterministic):
        model, optimizer, scheduler = _build(config, accelerator)
        with accelerator.main_process_first():  # one rank per node stages remote shards or fetches metadata
            data = _open_data(config, shards, cache_dir or run_dir / "shard-cache", storage_options, verify_shards,
                              streaming, accelerator)  # fmt: skip
        spec = RunSpec(run_dir, config.to_dict(), config.batch.sample_rate, config.keep_last, config.guards,
                       config.optim.lr, LR_REMEDY, mirror=mirror)  # fmt: skip
        run = Run(accelerator, spec)
        with run.finishing(), _closing(data.cache):  # closed at the end; after an error, the last upload may finish
            state, loader_state, _ = run.resume(resume)
            open_at = functools.partial(_open_batches, config, data, accelerator, loader or LoaderConfig())
            batches = StepBatches(open_at, loader_state, state.micro_batch_split)
            update = functools.partial(train_step, accelerator, model, optimizer, scheduler, seed=config.seed,
                                       accumulation=config.gradient_accumulation,
                                       max_grad_norm=config.optim.max_grad_norm)  # fmt: skip

            window: list[tuple[int, StepResult]] = []  # the updates since the last log record
            stopped_by = None
            while state.step < config.max_steps:
                temperature = _set_temperature(accelerator, model, config, state.step)
                try:
                    state, result = run.guarded_step(state, batches, update, scheduler)
                except DataUnavailable as error:  # a shard that cannot be fetched or read: save, then stop
                    run.stop_for_data(model, state, batches, error)
                if result is None:  # to be redone in smaller pieces, or rolled back to a checkpoint
                    window = [(step, r) for step, r in window if step <= state.step]
                    continue
                window.append((state.step, result))
                if on_step is not None and accelerator.is_main_process:
                    rate = result.audio_samples / config.batch.sample_rate / max(result.seconds, 1e-9)
                    on_step(StepReport(state.step, config.max_steps, result.loss, rate))
                record: dict[str, Any] = {}
                if due(state.step, config.log_every, config.max_steps):
                    record = log_record(state, [r for _, r in window], temperature, scheduler, accelerator, config)
                    record |= _cache_record(data.cache, accelerator) if data.cache is not None else {}
                    record["warnings"] = record_warnings(record, state, accelerator.unwrap_model(model).config, config)
                    state = with_lowest_loss(state, record["contrastive_loss"])
                    run.log(record)
                    window = []
                if data.held_out and due(state.step, config.eval_every, config.max_steps):
                    state = _validate(run, model, state, result.state_after, data.held_out, config)
                stopped_by = _stop_reason(config, state, started)
                if due(state.step, config.checkpoint_every, config.max_steps) or stopped_by:
                    run.checkpoint(model, state, result.state_after, record)
                if stopped_by:
                    break
        return PretrainResult(run_dir, state.step, run.last_checkpoint, stopped_by or "max_steps", state.skipped_steps)


def _build(config: TrainConfig, accelerator: Accelerator) -> tuple[Any, Any, Any]:
    """The model (initial weights from the seed), AdamW and the learning-rate schedule, prepared."""
    set_seed(config.seed)
    model: Any = build_model(config.model, config.masking)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                  weight_decay=optim.weight_decay, fused=accelerator.device.type == "cuda")  # fmt: skip
    factor = functools.partial(lr_factor, warmup_steps=optim.warmup_steps, max_steps=config.max_steps,
                               schedule=optim.schedule)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.compile:
        model = torch.compile(model)
    return model, optimizer, scheduler


def _open_data(config: TrainConfig, shards: list[str], cache: Path, storage_options: dict[str, Any] | None,
               verify: bool, streaming: StreamingOptions | None, accelerator: Accelerator) -> _Data:  # fmt: skip
    """The corpora (checked against their manifests), their mixing weights, and the held-out recordings; a
    streamed corpus' held-out recordings that validation reads are copied into memory once."""
    if streaming is None:
        corpora, weights = open_corpora(shards, cache, storage_options, verify=verify)
        splits = [split_held_out(corpus, config.val_share) for corpus in corpora]
        return _Data([train for train, _ in splits], weights, [held for _, held in splits if held is not None])
    opened = open_streaming_corpora(shards, cache, streaming, storage_options, verify=verify,
                                    local_rank=accelerator.local_process_index)  # fmt: skip
    splits = [split_held_out(corpus, config.val_share) for corpus in opened.corpora]
    held_out = [held for _, held in splits if held is not None]
    if opened.cache is not None:
        sizes = [shard.entry.bytes for shard in opened.cache.cache.shards]
        advice = window_advice(opened.cache.cache.limit_bytes, sizes, config.batch.shuffle_window_shards)
        if advice and accelerator.is_main_process:
            logger.warning("%s", advice)
        budget = validation_seconds(config)
        held_out = [load_held_out(held, k, opened.cache, budget, config.seed) for k, (_, held) in enumerate(splits)
                    if held is not None]  # fmt: skip
    return _Data([train for train, _ in splits], opened.weights, held_out, opened.cache)


def _cache_record(cache: CorpusCache, accelerator: Accelerator) -> dict[str, float]:
    """The streaming cache's figures for a log record: reads, hits and bytes fetched summed over the ranks (the
    run's downloads), the rest this rank's."""
    record = cache.interval_record()
    if accelerator.num_processes > 1:
        hits = record["cache_hit_rate"] * record["cache_reads"]
        local = [record["cache_reads"], hits, record["cache_fetched_bytes"]]
        reads, hits, fetched = accelerator.reduce(
            torch.tensor(local, dtype=torch.float64, device=accelerator.device), reduction="sum"
        ).tolist()
        record |= {"cache_reads": reads, "cache_hit_rate": hits / reads if reads else 1.0}
        record["cache_fetched_bytes"] = fetched
    return record


@contextlib.contextmanager
def _closing(cache: CorpusCache | None) -> Iterator[None]:
    try:
        yield
    finally:
        if cache is not None:
            cache.close()


def _open_batches(config: TrainConfig, data: _Data, accelerator: Accelerator, loader: LoaderConfig,
                  state: StreamState | None, split: int) -> Iterable[Batch]:  # fmt: skip
    first = accelerator.process_index - accelerator.local_process_index  # the node's ranks are consecutive
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    node = range(first, min(first + local, accelerator.num_processes))
    return make_loader(data.train, config.batch, config.seed, weights=data.weights, rank=accelerator.process_index,
                       world_size=accelerator.num_processes, state=state, loader=loader, split=split,
                       cache=data.cache, node_ranks=node)  # fmt: skip


def _set_temperature(accelerator: Accelerator, model: Any, config: TrainConfig, step: int) -> float:
    gumbel = config.gumbel
    temperature = gumbel_temperature(step, gumbel.max_temperature, gumbel.min_temperature, gumbel.decay)
    accelerator.unwrap_model(model).set_gumbel_temperature(temperature)
    return temperature


def _validate(run: Run, model: Any, state: RunState, loader_state: dict[str, Any], held_out: list[ShardCorpus],
              config: TrainConfig) -> RunState:  # fmt: skip
    """Evaluate on the held-out recordings; a new lowest loss replaces RUN/best. Returns the counted state."""
    evaluation = evaluate(run.accelerator, model, held_out, config.batch, config.seed, config.max_val_batches)
    record = evaluation.as_record()
    state = state.after_evaluation(record["val_loss"], higher_is_better=False)
    if state.is_best:
        run.save_best(model, state, loader_state, record)
    run.log({"step": state.step, **record, "best_val_loss": state.best_score})
    return state


def _stop_reason(config: TrainConfig, state: RunState, started: float) -> str | None:
    """Why the run stops after this update before max_steps (None: it goes on)."""
    if config.max_hours is not None and (time.monotonic() - started) / 3600 >= config.max_hours:
        return "max_hours"
    patience = config.early_stopping_patience
    if patience is not None and state.evals_since_best >= patience:
        return "early_stopping"
    return None
