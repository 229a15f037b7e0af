"""Speech detectors for the speech-share measurement: the cheap frame-energy one, or silero-vad.

silero-vad's weights ship inside its package, so it works offline; it is loaded with torch alone.
"""

from __future__ import annotations

import functools

import numpy as np
import soxr

from w2v.errors import W2VError
from w2v.quality import SpeechDetector, energy_speech_share

DETECTORS = ("energy", "silero")
SILERO_RATES = (8_000, 16_000)


def speech_detector(name: str) -> SpeechDetector:
    if name == "energy":
        return energy_speech_share
    if name == "silero":
        return silero_speech_share
    raise W2VError(f"vad must be one of {', '.join(DETECTORS)}, got {name!r}")


@functools.lru_cache(maxsize=1)
def _silero_model() -> object:
    import torch
    from silero_vad import load_silero_vad

    # One decoding process per core already: a model using every core in each would oversubscribe them.
    torch.set_num_threads(1)
    return load_silero_vad()


def silero_speech_share(samples: np.ndarray, sample_rate: int) -> float:
    """Share of the audio inside the speech segments silero-vad finds."""
    import torch
    from silero_vad import get_speech_timestamps

    rate = sample_rate if sample_rate in SILERO_RATES else 16_000
    audio = samples if rate == sample_rate else soxr.resample(samples, sample_rate, rate)
    if audio.size == 0:
        return 0.0
    with torch.inference_mode():
        spans = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), _silero_model(), sampling_rate=rate
        )
    return float(sum(s["end"] - s["start"] for s in spans) / audio.shape[0])
