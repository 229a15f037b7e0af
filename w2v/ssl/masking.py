"""Span masks and contrastive negatives, computed with torch on the training device, for a whole batch at once.

The semantics are transformers' `_compute_mask_indices` and `_sample_negative_indices` (the ones its
pretraining example's collator calls on the CPU, in numpy, utterance by utterance), with padding respected
strictly: a padded step is never masked and never a negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def feature_lengths(num_samples: torch.Tensor, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> torch.Tensor:
    """Frames the convolutional feature encoder makes of `num_samples` samples (no padding in its convs)."""
    lengths = num_samples.to(torch.int64)
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def span_mask(
    frame_lengths: torch.Tensor,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A (batch, num_frames) bool mask of spans of `mask_length` frames, as `_compute_mask_indices` makes it.

    Each row gets int(mask_prob · length / mask_length + ε) span starts (ε ~ U[0, 1) drawn once per batch, at
    least `min_masks`, at most what fits), drawn uniformly without replacement from the starts whose span ends
    inside the row's `frame_lengths`; spans may overlap, so `mask_prob` is an upper bound on the masked share.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be at least 1, got {mask_length}")
    if mask_length > num_frames:
        raise ValueError(f"mask_length {mask_length} is longer than the batch's {num_frames} frames")
    device = frame_lengths.device
    lengths = frame_lengths.to(torch.int64).clamp(max=num_frames)
    batch = lengths.shape[0]
    epsilon = torch.rand((), generator=generator, device=device)
    spans = (mask_prob * lengths / mask_length + epsilon).floor().to(torch.int64).clamp(min=min_masks)
    spans = spans.clamp(max=num_frames // mask_length)
    starts_available = (lengths - (mask_length - 1)).clamp(min=0)
    spans = torch.minimum(spans, starts_available)
    most = int(spans.max()) if batch else 0
    mask = torch.zeros((batch, num_frames), dtype=torch.bool, device=device)
    if most == 0:
        return mask
    # The `spans` smallest of uniform keys over the valid starts: a uniform draw without replacement.
    keys = torch.rand((batch, num_frames), generator=generator, device=device)
    steps = torch.arange(num_frames, device=device)
    keys = keys.masked_fill(steps[None, :] >= starts_available[:, None], 2.0)
    chosen = torch.topk(keys, most, dim=1, largest=False).indices
    taken = torch.arange(most, device=device)[None, :] < spans[:, None]
    starts = torch.zeros((batch, num_frames), dtype=torch.int32, device=device)
    starts.scatter_add_(1, chosen, taken.to(torch.int32))
    # A step is masked when a span started within the last mask_length steps.
    started = torch.cumsum(starts, dim=1)
    before = torch.nn.functional.pad(started, (mask_length, 0))[:, :num_frames]
    mask = (started - before) > 0
    return mask


def sample_negatives(
    candidates: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch, frames, num_negatives) int32 indices into the batch's flattened frames, as `_sample_negative_indices`.

    For every candidate step (True in `candidates`, e.g. the masked steps), `num_negatives` draws, uniform and
    with replacement, among the other candidate steps of the same row, never the step itself. Non-candidate
    steps get index row·frames (as transformers does; the loss ignores them). A row with fewer than two
    candidates has no valid negative: its candidates point at themselves, which the model's loss excludes.
    int32 like transformers' helper (the model casts to int64 as it gathers): int64 arithmetic is several
    times slower on CPUs, and random numbers are drawn only for candidate steps.
    """
    batch, frames = candidates.shape
    device = candidates.device
    candidates = candidates.to(torch.bool)
    steps = candidates.reshape(-1).nonzero().squeeze(1)  # flat positions of the candidates, row by row
    counts = candidates.sum(dim=1, dtype=torch.int32)
    starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    rows = torch.div(steps, frames, rounding_mode="floor")
    ranks = (torch.cumsum(candidates, dim=1, dtype=torch.int32) - 1).reshape(-1)[steps]
    count = counts[rows]
    # Each row's candidate positions listed twice: the draw s in [0, n-2] taken at rank + 1 + s walks past
    # the step itself without wrapping or comparing, uniform over the n - 1 others.
    twice = torch.empty(2 * steps.numel(), dtype=torch.int32, device=device)
    first = 2 * starts[rows] + ranks
    twice[first] = steps.to(torch.int32)
    twice[first + count] = steps.to(torch.int32)
    others = (count - 1).clamp(min=1).to(torch.float32)
    draws = torch.rand((steps.numel(), num_negatives), generator=generator, device=device)
    picked = (draws * others[:, None]).to(torch.int32)
    lonely = count < 2
    base = torch.where(lonely, first, first + 1)  # a lonely step's only "other" is itself
    picked += base[:, None]
    negatives = twice.index_select(0, picked.reshape(-1)).reshape(-1, num_negatives)
    offsets = torch.arange(batch, dtype=torch.int32, device=device) * frames
    out = offsets.repeat_interleave(frames)[:, None].expand(batch * frames, num_negatives).contiguous()
    out.index_copy_(0, steps, negatives)
    return out.reshape(batch, frames, num_negatives)
