"""Pretraining's update: the contrastive objective per micro-batch, normalized over the whole update.

Gradients are summed over micro-batches (and averaged over ranks by DDP), then scaled so that the update is
the gradient of (summed loss / masked steps of the whole step), the seed example's normalization. Everything
random in a micro-batch (masks, negatives, dropout, Gumbel noise) is seeded from (seed, stream position):
a resumed run draws exactly what an uninterrupted one would. The guards (non-finite skip, out-of-memory
pieces) are the run harness's (w2v.run.update).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from w2v.data.collate import Batch
from w2v.run.seeds import seed_for
from w2v.run.update import Micro, guarded_update
from w2v.ssl.objective import pretraining_objective, pretraining_targets


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
    """One pretraining update over `accumulation` micro-batches; raises OutOfMemory (w2v.run.memory) when one
    does not fit, with the gradients cleared."""
    micro = functools.partial(_pretraining_micro, accelerator, model, seed)
    # DDP averaged the ranks' summed gradients: times the number of ranks, over all masked steps.
    processes = accelerator.num_processes
    update = guarded_update(accelerator, model, optimizer, scheduler, batches, micro, accumulation=accumulation,
                            max_grad_norm=max_grad_norm, grad_scale=lambda t: processes / max(t[3], 1.0))  # fmt: skip
    total, contrastive, diversity, masked, frames, perplexity, count = update.totals
    per_masked = max(masked, 1.0)
    return StepResult(
        loss=total / per_masked,
        contrastive_loss=contrastive / per_masked,
        diversity_loss=diversity / per_masked,
        masked_share=masked / max(frames, 1.0),
        perplexity=perplexity / max(count, 1.0),
        grad_norm=update.grad_norm,
        audio_samples=update.audio_samples,
        skipped=update.skipped,
        data_seconds=update.data_seconds,
        seconds=update.seconds,
        state_after=update.state_after,
    )


def _pretraining_micro(accelerator: Accelerator, model: Any, seed: int, batch: Batch) -> Micro:
    """The objective on one micro-batch (or piece), its random draws seeded by its place in the stream."""
    device = accelerator.device
    config = accelerator.unwrap_model(model).config
    piece = () if batch.pieces == 1 else (batch.piece,)
    generator = torch.Generator(device=device).manual_seed(seed_for(seed, batch.position, 1, *piece))
    targets = pretraining_targets(batch.num_samples, batch.input_values.shape[1], config, generator)
    torch.manual_seed(seed_for(seed, batch.position, 2, *piece))  # dropout, layer drop, Gumbel noise
    use_attention_mask = config.feat_extract_norm == "layer"
    with accelerator.autocast():
        # No negatives to the model: it would score every frame; the objective scores masked ones.
        outputs = model(
            batch.input_values,
            attention_mask=batch.attention_mask if use_attention_mask else None,
            mask_time_indices=targets.mask_time_indices,
        )
    objective = pretraining_objective(outputs, targets, config)
    sums = torch.stack(
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
    return Micro(objective.loss, sums)
