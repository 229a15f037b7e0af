"""Pretraining's log record: means over the updates since the last one, the run's counters, and the health
warnings it raises (each logged with its remedy)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from accelerate import Accelerator

from w2v.run.metrics import peak_memory_bytes
from w2v.run.state import RunState
from w2v.train.config import TrainConfig
from w2v.train.health import health_warnings
from w2v.train.step import StepResult

logger = logging.getLogger("w2v.train")


def log_record(
    state: RunState,
    window: list[StepResult],
    temperature: float,
    scheduler: Any,
    accelerator: Accelerator,
    config: TrainConfig,
) -> dict[str, Any]:
    """Means over the updates since the last record (rates over their total time), and the run's counters."""
    count = len(window)
    seconds = sum(r.seconds for r in window)
    audio = sum(r.audio_samples for r in window) * accelerator.num_processes / config.batch.sample_rate
    return {
        "step": state.step,
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
        "epochs": [c["epoch"] for c in window[-1].state_after.get("corpora", [])],
        **state.counters(),
    }


def record_warnings(record: dict[str, Any], state: RunState, architecture: Any, config: TrainConfig) -> list[str]:
    """The record's health warnings, logged too (none during warm-up: early codebooks and losses say little)."""
    if state.step <= config.optim.warmup_steps:
        return []
    warnings = health_warnings(record, architecture, config.guards, state.lowest_loss)
    for warning in warnings:
        logger.warning("step %d: %s", state.step, warning)
    return warnings


def with_lowest_loss(state: RunState, contrastive_loss: float) -> RunState:
    """The state with this record's contrastive loss as its lowest, if it is."""
    if state.lowest_loss is None or contrastive_loss < state.lowest_loss:
        return replace(state, lowest_loss=contrastive_loss)
    return state
