"""Span masks and contrastive negatives, computed with torch on the training device, for a whole batch at once.

The semantics are transformers' `_compute_mask_indices` and `_sample_negative_indices` (the ones its
pretraining example's collator calls on the CPU, in numpy, utterance by utterance), with padding respected
strictly: a padded step is never masked and never a negative. Negatives come compactly, one row per masked
step; `dense_negatives` spreads them into transformers' (batch, frames, negatives) layout.

Two implementations draw them: compiled loops for CPU tensors (`w2v.ssl.cpu_kernels`), and vectorized torch
for any other device. `backend="torch"` forces the latter (the tests check both against transformers).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from w2v.ssl import cpu_kernels

Backend = Literal["auto", "torch"]

# Negatives are cut from 53-bit uniforms several at a time (see `sample_negatives`), as many as keep a
# group's bias under 2^-12.
_UNIFORM_BITS = 53
_BIAS_BITS = 12


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
    *,
    backend: Backend = "auto",
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
    # A few numbers per row: worked out on the host, in float64 like transformers.
    lengths = [min(max(int(length), 0), num_frames) for length in frame_lengths.tolist()]
    epsilon = float(torch.rand((), generator=generator, device=device))
    available = [max(length - mask_length + 1, 0) for length in lengths]  # starts whose span fits the row
    spans = [
        min(max(int(mask_prob * length / mask_length + epsilon), min_masks), num_frames // mask_length, starts)
        for length, starts in zip(lengths, available, strict=True)
    ]
    if device.type == "cpu" and backend == "auto":
        seed = _seed(generator)
        mask = cpu_kernels.span_mask_kernel(np.array(lengths), np.array(spans), num_frames, mask_length, seed)
        return torch.from_numpy(mask)
    return _span_mask_torch(available, spans, num_frames, mask_length, generator, device)


def _span_mask_torch(
    available: list[int],
    spans: list[int],
    num_frames: int,
    mask_length: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    batch = len(spans)
    most = max(spans, default=0)
    if most == 0:
        return torch.zeros((batch, num_frames), dtype=torch.bool, device=device)
    # The `spans` largest of random keys over a row's valid starts: a uniform draw without replacement.
    # Keys are 31-bit integers (int topk is faster than float here); a start past the row's end gets -1.
    width = max(available)
    keys = torch.empty((batch, width), dtype=torch.int32, device=device).random_(generator=generator)
    if min(available) < width:
        too_late = torch.arange(width, device=device) >= torch.tensor(available, device=device)[:, None]
        keys.masked_fill_(too_late, -1)
    uneven = min(spans) < most  # then a row keeps its first `spans` keys, so they must come sorted
    starts = torch.topk(keys, most, dim=1, sorted=uneven).indices
    # Each span's steps as flat positions in the batch: row · num_frames + start + (0 … mask_length - 1).
    row_steps = torch.arange(batch * num_frames, device=device).view(batch, 1, num_frames)
    steps = starts[:, :, None] + row_steps[:, :, :mask_length]
    spare = batch * num_frames  # spans a row does not use mark a spare element past the batch
    if uneven:
        unused = torch.arange(most, device=device) >= torch.tensor(spans, device=device)[:, None]
        steps.masked_fill_(unused[:, :, None], spare)
    flat = torch.zeros(spare + 1, dtype=torch.bool, device=device)
    flat.index_fill_(0, steps.view(-1), True)
    return flat[:spare].view(batch, num_frames)


def sample_negatives(
    candidates: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """(candidate steps, num_negatives) int32 indices into the batch's flattened frames, as `_sample_negative_indices`.

    Row m belongs to the m-th candidate step (True in `candidates`, e.g. the masked steps) in row-major order,
    the order of `candidates.nonzero()`. It holds `num_negatives` draws, uniform and with replacement, among
    the other candidate steps of the same row, never the step itself. A row with fewer than two candidates
    has no valid negative: its candidates point at themselves, which the model's loss excludes.
    `dense_negatives` gives transformers' (batch, frames, num_negatives) layout. int32 like transformers'
    helper: int64 arithmetic is several times slower on CPUs.

    Random numbers are most of the cost, so several draws are cut from each random number, within 2^-12
    (0.024%) of uniform and independent: see `w2v.ssl.cpu_kernels` for CPUs; on other devices each 53-bit
    uniform gives d draws (its digits in the bases of the choices; d = 4 for rows of 749 frames), a group
    of draws among n₁ … n_d candidates within n₁·…·n_d / 2^53 ≤ 2^-12 of uniform, d chosen from `frames`.
    """
    candidates = candidates.to(torch.bool)
    if candidates.device.type == "cpu" and backend == "auto":
        kernel = cpu_kernels.negatives_kernel(candidates.contiguous().numpy(), num_negatives, _seed(generator))
        return torch.from_numpy(kernel)
    return _sample_negatives_torch(candidates, num_negatives, generator)


def _sample_negatives_torch(
    candidates: torch.Tensor, num_negatives: int, generator: torch.Generator | None
) -> torch.Tensor:
    batch, frames = candidates.shape
    device = candidates.device
    counts = candidates.sum(dim=1).tolist()
    total = sum(counts)
    if total == 0 or num_negatives == 0:
        return torch.zeros((total, num_negatives), dtype=torch.int32, device=device)
    # Each row's candidate positions listed twice, row after row. The m-th candidate, in a row of n whose
    # first is the batch's `first`-th, is listed at m + first; the draw s in [0, n - 2] read at
    # m + first + 1 + s walks past it, uniform over the n - 1 others, without wrapping or comparing.
    positions = torch.arange(batch * frames, dtype=torch.int32, device=device).view(batch, 1, frames)
    doubled = candidates.view(batch, 1, frames).expand(batch, 2, frames)
    twice = positions.expand(batch, 2, frames).masked_select(doubled)
    firsts = list(itertools.accumulate(counts, initial=0))[:-1]
    shifts, others = [], []
    for first, count in zip(firsts, counts, strict=True):
        shifts.append(first + (count > 1))  # a lonely candidate's only "other" is itself: read at m + first
        others.append(max(count - 1, 1))
    read_at = np.repeat(np.array(shifts, dtype=np.int32), counts)
    read_at += np.arange(total, dtype=np.int32)
    # Several draws from each uniform u: the integer part of u·n is a draw, its fraction the next u. Digit d
    # of the uniforms serves the d-th block of candidates, so that each digit fills a contiguous block.
    per_uniform = _draws_per_uniform(frames)
    block = -(-total // per_uniform)
    multipliers = np.ones(per_uniform * block)
    multipliers[:total] = np.repeat(others, counts)
    multiplier = torch.from_numpy(multipliers).to(device)[:, None]
    uniforms = torch.rand((block, num_negatives), generator=generator, dtype=torch.float64, device=device)
    draws = torch.empty((per_uniform * block, num_negatives), dtype=torch.int32, device=device)
    for digit in range(per_uniform):
        rows = slice(digit * block, (digit + 1) * block)
        uniforms.mul_(multiplier[rows])  # rounds below n: u ≤ 1 - 2^-53
        draws[rows] = uniforms  # truncates to the integer part
        if digit + 1 < per_uniform:
            uniforms.frac_()
    read = draws[:total]
    read += torch.from_numpy(read_at).to(device)[:, None]
    return twice.index_select(0, read.view(-1)).view(total, num_negatives)


def dense_negatives(candidates: torch.Tensor, negatives: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """`sample_negatives`' rows spread into transformers' (batch, frames, num_negatives) int32 layout.

    Steps that are not candidates get index row·frames, as transformers gives them (the loss ignores them).
    """
    if negatives.device.type == "cpu" and backend == "auto":
        kernel = cpu_kernels.dense_kernel(
            candidates.to(torch.bool).contiguous().numpy(), negatives.contiguous().numpy()
        )
        return torch.from_numpy(kernel)
    batch, frames = candidates.shape
    count = negatives.shape[1]
    offsets = torch.arange(0, batch * frames, frames, dtype=torch.int32, device=negatives.device)
    dense = offsets.view(batch, 1, 1).expand(batch, frames, count).contiguous()
    steps = candidates.reshape(-1).nonzero().view(-1)
    dense.view(batch * frames, count).index_copy_(0, steps, negatives.to(torch.int32))
    return dense


def _draws_per_uniform(frames: int) -> int:
    """How many draws among at most `frames` - 1 values to cut from one 53-bit uniform (at most 8).

    As many as keep their product of choices n₁·…·n_d under 2^41, so that each group of draws is within
    2^41 / 2^53 = 2^-12 of uniform.
    """
    return max(1, min(8, (_UNIFORM_BITS - _BIAS_BITS) // max(frames - 1, 1).bit_length()))


def _seed(generator: torch.Generator | None) -> int:
    """A 63-bit seed for the compiled kernels, drawn from `generator` (the same state, the same seed)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))
