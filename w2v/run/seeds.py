"""Seeded streams: every random draw of a run is a function of (seed, where in the run), never of history,
so that a resumed run, a retried step or a rolled-back run draws what an uninterrupted one would."""

from __future__ import annotations

import numpy as np
import torch

TORCH_STREAM, NUMPY_STREAM = 2, 3


def seed_for(*values: int) -> int:
    """A 63-bit seed mixed from integers (seed, position, ...): independent streams for independent uses."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)


def seed_micro_batch(seed: int, position: int, piece: tuple[int, ...] = ()) -> None:
    """Seed torch's and numpy's global generators for the micro-batch at `position` of the stream (and its
    piece, when it comes in pieces): dropout, layer drop, and the SpecAugment masks transformers draws with
    numpy's global generator."""
    torch.manual_seed(seed_for(seed, position, TORCH_STREAM, *piece))
    np.random.seed(seed_for(seed, position, NUMPY_STREAM, *piece) % 2**32)
