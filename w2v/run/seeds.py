"""Seeded streams: every random draw of a run is a function of (seed, where in the run), never of history."""

from __future__ import annotations

import numpy as np


def seed_for(*values: int) -> int:
    """A 63-bit seed mixed from integers (seed, position, ...): independent streams for independent uses."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)
