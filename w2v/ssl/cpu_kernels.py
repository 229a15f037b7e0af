"""Span starts and negatives for CPU tensors, as compiled loops (numba): one pass over each row, no temporaries.

Eager torch needs about fifteen kernels and as many temporaries for what is here one loop per row; on a
CPU, for 8 × 15 s with 100 negatives (300,000 draws), that overhead was most of its cost. GPUs keep the
torch path in `w2v.ssl.masking`.

Random numbers come from splitmix64 over a counter seeded from the caller's torch generator: the same
generator state gives the same masks and negatives. A draw among n values is the high half of r·n for a
32-bit r; when n ≤ 2^10 the low half, times n, gives a second draw. Such a pair is within n²/2^32 ≤ 2^-12
of uniform over its n² outcomes (a single draw within n/2^32), the bound `w2v.ssl.masking` keeps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_LOW_32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)
_PAIRED_UP_TO = 1 << 10  # two draws from one 32-bit half while n ≤ this (n² ≤ 2^20: within 2^-12)


@njit(cache=True, inline="always")
def _mix(state: np.uint64) -> np.uint64:
    """splitmix64's output function: a 64-bit random number from the counter value `state`."""
    z = (state ^ (state >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def span_mask_kernel(
    lengths: np.ndarray, spans: np.ndarray, num_frames: int, mask_length: int, seed: int
) -> np.ndarray:
    """(rows, num_frames) bool: row i gets `spans[i]` spans of `mask_length` frames, their starts drawn uniformly
    without replacement (a partial Fisher–Yates shuffle) among the `lengths[i] - mask_length + 1` that fit."""
    rows = lengths.shape[0]
    mask = np.zeros((rows, num_frames), dtype=np.bool_)
    starts = np.empty(max(num_frames - mask_length + 1, 1), dtype=np.int64)
    state = np.uint64(seed)
    for row in range(rows):
        available = lengths[row] - mask_length + 1
        for start in range(max(available, 0)):
            starts[start] = start
        for drawn in range(spans[row]):
            state += _GOLDEN
            left = np.uint64(available - drawn)
            pick = drawn + np.int64(((_mix(state) & _LOW_32) * left) >> _32)
            start = starts[pick]
            starts[pick] = starts[drawn]
            starts[drawn] = start
            for step in range(start, start + mask_length):
                mask[row, step] = True
    return mask


@njit(cache=True)
def negatives_kernel(candidates: np.ndarray, num_negatives: int, seed: int) -> np.ndarray:
    """(candidate steps, num_negatives) int32: for each True of `candidates` (rows, frames) in row-major order,
    draws with replacement among the other Trues of its row, as flat indices row·frames + step. A lonely
    candidate points at itself."""
    rows, frames = candidates.shape
    total = 0
    for row in range(rows):
        for step in range(frames):
            total += candidates[row, step]
    negatives = np.empty((total, num_negatives), dtype=np.int32)
    flat = negatives.reshape(-1)
    # A row's candidate positions listed twice: the draw s in [0, n - 2] read at m + 1 + s is uniform over
    # the n - 1 candidates other than the m-th, without a comparison.
    twice = np.empty(2 * frames, dtype=np.int32)
    state = np.uint64(seed)
    out = 0
    for row in range(rows):
        count = 0
        for step in range(frames):
            if candidates[row, step]:
                twice[count] = row * frames + step
                count += 1
        for m in range(count):
            twice[count + m] = twice[m]
        others = np.uint64(max(count - 1, 1))
        skip = 1 if count > 1 else 0
        paired = count - 1 <= _PAIRED_UP_TO
        for m in range(count):
            read = twice[m + skip : m + skip + count]
            done = 0
            if paired:
                while done + 4 <= num_negatives:
                    state += _GOLDEN
                    bits = _mix(state)
                    first = (bits & _LOW_32) * others
                    third = (bits >> _32) * others
                    second = (first & _LOW_32) * others
                    fourth = (third & _LOW_32) * others
                    flat[out] = read[first >> _32]
                    flat[out + 1] = read[second >> _32]
                    flat[out + 2] = read[third >> _32]
                    flat[out + 3] = read[fourth >> _32]
                    out += 4
                    done += 4
            while done < num_negatives:
                state += _GOLDEN
                flat[out] = read[((_mix(state) & _LOW_32) * others) >> _32]
                out += 1
                done += 1
    return negatives


@njit(cache=True)
def dense_kernel(candidates: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """`negatives_kernel`'s rows spread into (rows, frames, num_negatives) int32; other steps get row·frames."""
    rows, frames = candidates.shape
    count = negatives.shape[1]
    dense = np.empty((rows, frames, count), dtype=np.int32)
    flat, drawn = dense.reshape(-1), negatives.reshape(-1)
    out = taken = 0
    for row in range(rows):
        filler = row * frames
        for step in range(frames):
            if candidates[row, step]:
                flat[out : out + count] = drawn[taken : taken + count]
                taken += count
            else:
                flat[out : out + count] = filler
            out += count
    return dense
