"""Short generated recordings for tests about packing, not speech: distinct, deterministic, any length."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf


def write_tones(folder: Path, seconds: Sequence[float], seed: int = 0, rate: int = 16_000) -> list[Path]:
    """Distinct, deterministic recordings of the given lengths (a tone plus a little noise: no two decode to
    the same audio), for tests about packing rather than about speech; the quality filters reject tones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number, length in enumerate(seconds):
        t = np.arange(round(length * rate)) / rate
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + rng.normal(0, 0.01, t.size)
        path = folder / f"tone{seed:02d}_{number:03d}.wav"
        sf.write(path, tone.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths
