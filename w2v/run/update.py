"""One guarded optimizer update: forward and backward over the accumulated micro-batches, clip, then update
unless the loss or the gradient is not finite.

The recipe gives the micro-batch's work (`micro`: its loss to back-propagate and the sums it reports, the
first of which is its loss) and, optionally, how to rescale the summed gradients once the totals over all
micro-batches and ranks are known (pretraining normalizes by the masked frames of the whole update).

A step takes `accumulation` planned micro-batches; after an out-of-memory step the loader delivers each as
several pieces (w2v.run.memory), and the step takes all the pieces of its micro-batches. Running out of
memory raises OutOfMemory with the gradients cleared, for the loop to retry the step in smaller pieces.

A micro-batch the loader cannot deliver (a shard that cannot be fetched or read: a W2VError) raises
DataUnavailable with the gradients cleared, on every rank at once: before each forward pass the ranks agree
that all of them hold their micro-batch (one scalar all-reduce), so no rank is left waiting in a collective
for one that stopped. The loop can then save the last completed update and stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from w2v.data.collate import Batch
from w2v.errors import W2VError
from w2v.run.memory import OutOfMemory, check_simulated_limit, is_out_of_memory


class DataUnavailable(W2VError):
    """A rank could not get its next micro-batch; raised on every rank, naming what failed."""


@dataclass(frozen=True)
class Micro:
    """What one micro-batch (or piece) gave: the loss to back-propagate, and sums to report (float64, 1-D,
    the same length for every micro-batch; the first is the loss the update is judged by)."""

    loss: torch.Tensor
    sums: torch.Tensor


@dataclass(frozen=True)
class Update:
    totals: tuple[float, ...]  # the micro-batches' sums, added over micro-batches and ranks
    grad_norm: float  # after any rescaling, before clipping
    skipped: bool  # a non-finite loss or gradient (or an fp16 overflow): no update was made
    audio_samples: int  # delivered to this rank
    data_seconds: float  # waiting for batches
    seconds: float  # the whole update
    state_after: dict[str, Any]  # the loader's stream state after this update


def guarded_update(
    accelerator: Accelerator,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterator[Batch],
    micro: Callable[[Batch], Micro],
    *,
    accumulation: int,
    max_grad_norm: float | None,
    grad_scale: Callable[[tuple[float, ...]], float] | None = None,
) -> Update:
    """Make one update from `accumulation` micro-batches of `batches`; returns what it saw and did.

    Raises OutOfMemory (gradients cleared) when a micro-batch does not fit."""
    started = time.perf_counter()
    device = accelerator.device
    model.train()
    sums: torch.Tensor | None = None
    data_seconds, audio, state = 0.0, 0, {}
    positions = 0  # planned micro-batches done; each may come in pieces
    while positions < accumulation:
        waited = time.perf_counter()
        try:
            delivered: Batch | None = next(batches).to(device)
            failure = None
        except W2VError as error:  # a shard that cannot be fetched or read
            delivered, failure = None, str(error)
        failure = _failure_anywhere(accelerator, failure)
        if failure is not None or delivered is None:
            optimizer.zero_grad(set_to_none=True)
            raise DataUnavailable(failure or "no micro-batch")
        batch = delivered
        data_seconds += time.perf_counter() - waited
        last_piece = batch.piece == batch.pieces - 1
        last = positions == accumulation - 1 and last_piece
        rows, samples = batch.input_values.shape
        try:
            with nullcontext() if last else accelerator.no_sync(model):
                check_simulated_limit(rows, samples)
                result = micro(batch)
                accelerator.backward(result.loss)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            failed: OutOfMemory | None = OutOfMemory(rows, samples, batch.position)
        else:
            failed = None
        if failed is not None:  # raised outside the handler, so the failed step's tensors can be freed
            del batch
            optimizer.zero_grad(set_to_none=True)
            raise failed
        sums = result.sums if sums is None else sums + result.sums
        audio += batch.audio_samples
        state = batch.state_after
        positions += int(last_piece)
    assert sums is not None
    totals = tuple(float(x) for x in accelerator.reduce(sums, reduction="sum"))
    parameters = [p for p in model.parameters() if p.grad is not None]
    if grad_scale is not None:
        scale = grad_scale(totals)
        for parameter in parameters:
            parameter.grad.mul_(scale)
    limit = max_grad_norm if max_grad_norm is not None else math.inf
    grad_norm = float(accelerator.clip_grad_norm_(parameters, limit))
    finite = math.isfinite(totals[0]) and math.isfinite(grad_norm)
    if accelerator.scaler is not None:
        # fp16: the loss scaler must see the overflow to lower its scale; it skips the update itself.
        optimizer.step()
        skipped = accelerator.optimizer_step_was_skipped or not finite
    else:
        skipped = not finite
        if not skipped:
            optimizer.step()
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return Update(totals, grad_norm, skipped, audio, data_seconds, time.perf_counter() - started, state)


def _failure_anywhere(accelerator: Accelerator, failure: str | None) -> str | None:
    """Every rank states whether it holds its micro-batch (`failure` None) or not; the first failing rank's
    message on every rank when any does not, else None."""
    if accelerator.num_processes == 1:
        return failure
    flag = torch.tensor([0.0 if failure is None else 1.0], device=accelerator.device)
    if float(accelerator.reduce(flag, reduction="sum")) == 0:
        return None
    failures = gather_object([failure])  # only once some rank failed: a rarer, slower collective
    return next(message for message in failures if message is not None)
