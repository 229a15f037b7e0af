"""One optimizer step: forward and backward over the accumulated micro-batches, normalize, clip, update.

Gradients are summed over micro-batches (and averaged over ranks by DDP), then scaled so that the update is
the gradient of (summed loss / masked steps of the whole step), the seed example's normalization. Everything
random in a micro-batch (masks, negatives, dropout, Gumbel noise) is seeded from (seed, stream position):
a resumed run draws exactly what an uninterrupted one would.

A step takes `accumulation` planned micro-batches; after an out-of-memory step the loader delivers each as
several pieces (w2v.train.memory), and the step takes all the pieces of its micro-batches. Running out of
memory raises OutOfMemory with the gradients cleared, for the loop to retry the step in smaller pieces.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from w2v.data.collate import Batch
from w2v.ssl.objective import pretraining_objective, pretraining_targets
from w2v.train.memory import OutOfMemory, check_simulated_limit, is_out_of_memory


@dataclass(frozen=True)
class StepResult:
    loss: float  # per masked step, over the whole step (all micro-batches, all ranks)
    contrastive_loss: float
    diversity_loss: float
    masked_share: float  # masked frames / audio frames
    perplexity: float  # codevector perplexity, mean over micro-batches
    grad_norm: float
    audio_samples: int  # delivered to this rank
    skipped: bool  # a non-finite loss or gradient: no update was made
    data_seconds: float  # waiting for batches
    seconds: float  # the whole step
    state_after: dict[str, Any]  # the loader's stream state after this step


def seed_for(*values: int) -> int:
    """A 63-bit seed mixed from integers (seed, position, ...): independent streams for independent uses."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)


def train_step(
    accelerator: Accelerator,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterator[Batch],
    *,
    accumulation: int,
    max_grad_norm: float | None,
    seed: int,
) -> StepResult:
    started = time.perf_counter()
    device = accelerator.device
    config = accelerator.unwrap_model(model).config
    use_attention_mask = config.feat_extract_norm == "layer"
    model.train()
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # loss, contrastive, diversity, masked, frames, ppl, n
    data_seconds = 0.0
    audio = 0
    state: dict[str, Any] = {}
    positions = 0  # planned micro-batches done; each may come in pieces (see w2v.train.memory)
    while positions < accumulation:
        waited = time.perf_counter()
        batch = next(batches).to(device)
        data_seconds += time.perf_counter() - waited
        piece = () if batch.pieces == 1 else (batch.piece,)
        generator = torch.Generator(device=device).manual_seed(seed_for(seed, batch.position, 1, *piece))
        targets = pretraining_targets(batch.num_samples, batch.input_values.shape[1], config, generator)
        torch.manual_seed(seed_for(seed, batch.position, 2, *piece))  # dropout, layer drop, Gumbel noise
        last_piece = batch.piece == batch.pieces - 1
        last = positions == accumulation - 1 and last_piece
        rows, samples = batch.input_values.shape
        try:
            with nullcontext() if last else accelerator.no_sync(model):
                check_simulated_limit(rows, samples)
                with accelerator.autocast():
                    # No negatives to the model: it would score every frame; the objective scores masked ones.
                    outputs = model(
                        batch.input_values,
                        attention_mask=batch.attention_mask if use_attention_mask else None,
                        mask_time_indices=targets.mask_time_indices,
                    )
                objective = pretraining_objective(outputs, targets, config)
                accelerator.backward(objective.loss)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            failed: OutOfMemory | None = OutOfMemory(rows, samples, batch.position)
        else:
            failed = None
        if failed is not None:  # raised outside the handler, so the failed step's tensors can be freed
            del batch, targets
            optimizer.zero_grad(set_to_none=True)
            raise failed
        sums += torch.stack(
            [
                objective.loss.detach().double(),
                objective.contrastive.double(),
                objective.diversity.double(),
                objective.masked.double(),
                targets.frames.to(device).double(),
                outputs.codevector_perplexity.detach().double(),
                torch.ones((), dtype=torch.float64, device=device),
            ]
        )
        audio += batch.audio_samples
        state = batch.state_after
        positions += int(last_piece)
    totals = accelerator.reduce(sums, reduction="sum")
    masked = float(totals[3])
    # DDP averaged the ranks' summed gradients: times the number of ranks, over all masked steps.
    scale = accelerator.num_processes / max(masked, 1.0)
    parameters = [p for p in model.parameters() if p.grad is not None]
    for parameter in parameters:
        parameter.grad.mul_(scale)
    limit = max_grad_norm if max_grad_norm is not None else math.inf
    grad_norm = float(accelerator.clip_grad_norm_(parameters, limit))
    loss = float(totals[0]) / max(masked, 1.0)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
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
    return StepResult(
        loss=loss,
        contrastive_loss=float(totals[1]) / max(masked, 1.0),
        diversity_loss=float(totals[2]) / max(masked, 1.0),
        masked_share=masked / max(float(totals[4]), 1.0),
        perplexity=float(totals[5]) / max(float(totals[6]), 1.0),
        grad_norm=grad_norm,
        audio_samples=audio,
        skipped=skipped,
        data_seconds=data_seconds,
        seconds=time.perf_counter() - started,
        state_after=state,
    )
