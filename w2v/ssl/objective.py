"""What Wav2Vec2ForPreTraining needs besides the audio, drawn on the device, and the Gumbel temperature schedule.

The model's own loss is the sum over masked steps of the contrastive loss (cosine logits over the positive
and the negatives, divided by `contrastive_logits_temperature`), plus `diversity_loss_weight` times the
diversity loss scaled by the masked count. Training divides by the number of masked steps of the whole
optimizer step (all micro-batches, all ranks), as the seed's example divides its gradients by num_losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Wav2Vec2Config

from w2v.ssl.masking import dense_negatives, feature_lengths, sample_negatives, span_mask


@dataclass(frozen=True)
class PretrainingTargets:
    mask_time_indices: torch.Tensor  # (rows, frames) bool
    # (masked frames, num_negatives) int32 indices into the batch's flattened frames, one row per masked
    # frame in row-major order (the order of mask_time_indices.nonzero())
    negative_indices: torch.Tensor
    frame_lengths: torch.Tensor  # (rows,) frames of audio in each row

    @property
    def sampled_negative_indices(self) -> torch.Tensor:
        """The negatives in the (rows, frames, num_negatives) layout Wav2Vec2ForPreTraining takes (built on call)."""
        return dense_negatives(self.mask_time_indices, self.negative_indices)

    @property
    def masked(self) -> torch.Tensor:
        return self.mask_time_indices.sum()

    @property
    def frames(self) -> torch.Tensor:
        return self.frame_lengths.sum()


def pretraining_targets(
    num_samples: torch.Tensor, width: int, config: Wav2Vec2Config, generator: torch.Generator | None
) -> PretrainingTargets:
    """Span masks and negatives (among the masked steps, as the seed's collator draws them) for a batch whose
    rows hold `num_samples` samples of audio, padded or cropped to `width` samples."""
    kernels, strides = config.conv_kernel, config.conv_stride
    frame_lengths = feature_lengths(num_samples, kernels, strides)
    frames = int(feature_lengths(torch.tensor([width]), kernels, strides)[0])
    mask = span_mask(
        frame_lengths.to(num_samples.device),
        frames,
        config.mask_time_prob,
        config.mask_time_length,
        config.mask_time_min_masks,
        generator,
    )
    negatives = sample_negatives(mask, config.num_negatives, generator)
    return PretrainingTargets(mask, negatives, frame_lengths)


def gumbel_temperature(step: int, max_temperature: float, min_temperature: float, decay: float) -> float:
    """max(max_temperature · decay^step, min_temperature) for `step` updates done, as the seed's example sets it."""
    return float(max(max_temperature * decay**step, min_temperature))


@dataclass(frozen=True)
class Objective:
    """Sums over the batch's masked frames, as Wav2Vec2ForPreTraining's own loss (not yet divided)."""

    loss: torch.Tensor  # contrastive + diversity_loss_weight · diversity
    contrastive: torch.Tensor
    diversity: torch.Tensor
    correct: torch.Tensor  # masked frames whose true quantized frame scores above every distractor
    masked: torch.Tensor


def pretraining_objective(outputs: Any, targets: PretrainingTargets, config: Wav2Vec2Config) -> Objective:
    """Wav2Vec2ForPreTraining's loss, computed from its outputs for the masked frames only.

    The model scores every frame against its distractors (a batch × frames × negatives × dim gather) and
    then ignores the unmasked ones. Here the normalized context vectors meet the normalized quantized ones
    in one batched product per utterance, and only masked frames' logits are gathered from it: the same
    numbers (cosine / temperature, distractors equal to the target excluded, cross-entropy summed, plus the
    weighted diversity term) for a fraction of the time and memory.
    """
    context = outputs.projected_states.float()
    quantized = outputs.projected_quantized_states.float()
    frames = quantized.shape[1]
    eps = 1e-8
    context = context / context.norm(dim=-1, keepdim=True).clamp(min=eps)
    unit = quantized / quantized.norm(dim=-1, keepdim=True).clamp(min=eps)
    mask = targets.mask_time_indices
    row, step = mask.nonzero(as_tuple=True)
    # (masked frames, frames): each masked frame's context against every quantized frame of its utterance.
    scores = torch.bmm(context, unit.transpose(1, 2))[row, step] / config.contrastive_logits_temperature
    distractors = targets.negative_indices.long() - (row * frames)[:, None]
    positive = scores.gather(1, step[:, None])
    negative = scores.gather(1, distractors)
    # A distractor identical to the target is no distractor (the model compares the vectors; a fixed
    # random projection of each quantized vector compares them in one number). Summed elementwise products,
    # not a matrix-vector product: its blocked kernels can round two identical rows differently.
    direction = torch.randn(quantized.shape[-1], generator=torch.Generator().manual_seed(0)).to(quantized)
    fingerprint = (quantized * direction).sum(dim=-1)
    same = fingerprint[row[:, None], distractors] == fingerprint[row, step][:, None]
    negative = negative.masked_fill(same, float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    contrastive = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    codevectors = config.num_codevectors_per_group * config.num_codevector_groups
    masked = mask.sum()
    diversity = (codevectors - outputs.codevector_perplexity) / codevectors * masked
    correct = (positive[:, 0] > negative.max(dim=1).values).sum()
    loss = contrastive + config.diversity_loss_weight * diversity
    return Objective(loss, contrastive.detach(), diversity.detach(), correct, masked)
