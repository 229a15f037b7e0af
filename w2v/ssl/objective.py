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

from w2v.ssl.masking import feature_lengths, sample_negatives, span_mask


@dataclass(frozen=True)
class PretrainingTargets:
    mask_time_indices: torch.Tensor  # (rows, frames) bool
    sampled_negative_indices: torch.Tensor  # (rows, frames, num_negatives) int32
    frame_lengths: torch.Tensor  # (rows,) frames of audio in each row

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


def contrastive_accuracy(outputs: Any, targets: PretrainingTargets) -> torch.Tensor:
    """Share of masked frames whose context vector is closer (cosine) to its own quantized frame than to every
    distractor, the way Wav2Vec2ForPreTraining scores them (a distractor equal to the target is ignored)."""
    context = outputs.projected_states.float()
    quantized = outputs.projected_quantized_states.float()
    rows, frames, dim = quantized.shape
    negatives = quantized.reshape(-1, dim)[targets.sampled_negative_indices.long().reshape(-1)]
    negatives = negatives.reshape(rows, frames, -1, dim)
    positive = torch.cosine_similarity(context, quantized, dim=-1)
    distractors = torch.cosine_similarity(context[:, :, None, :], negatives, dim=-1)
    same = (negatives == quantized[:, :, None, :]).all(-1)
    distractors = distractors.masked_fill(same, float("-inf"))
    correct = positive > distractors.max(dim=-1).values
    mask = targets.mask_time_indices
    return (correct & mask).sum() / mask.sum().clamp(min=1)
