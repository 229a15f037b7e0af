"""Per-utterance quality measurements: peak, clipping, DC offset, level, loudness, SNR and speech share.

Pure functions of audio already in memory (prepare measures what it decoded; nothing is decoded twice).
Levels are on the float scale, full scale = 1.0. The SNR estimate is a frame-energy percentile method:
the quietest frames are taken as noise, so it assumes pauses (at least ~5 % of frames) between speech.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# 50 ms frames: long enough that a noise frame's energy varies by ~5 %, short enough to find pauses.
FRAME_SECONDS = 0.05
NOISE_PERCENTILE = 5.0
# A frame is speech when its energy stands this far above the noise floor, and above an absolute floor.
SPEECH_MARGIN_DB = 6.0
SPEECH_FLOOR_DBFS = -60.0
# A flat run of at least this many samples within CLIP_TOLERANCE of the signal's own peak is clipping.
CLIP_MIN_RUN = 3
CLIP_TOLERANCE = 1e-3
SNR_CEILING_DB = 100.0
LEVEL_FLOOR_DBFS = -120.0

# Returns the share of `samples` (float32 mono at `sample_rate`) that is speech.
SpeechDetector = Callable[[np.ndarray, int], float]


@dataclass(frozen=True)
class Quality:
    """What prepare measures of each kept utterance; stored as shard columns of the same names."""

    peak: float
    clipped_share: float
    dc_offset: float
    rms_dbfs: float
    loudness_lufs: float | None
    snr_db: float
    speech_share: float


QUALITY_COLUMNS = tuple(Quality.__dataclass_fields__)


def frame_energies(samples: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """Mean square of each whole, non-overlapping frame (the tail shorter than a frame is left out)."""
    length = max(1, int(frame_seconds * sample_rate))
    usable = (samples.shape[0] // length) * length
    if usable == 0:
        return np.array([float(np.mean(np.square(samples, dtype=np.float64)))]) if samples.size else np.zeros(1)
    frames = samples[:usable].astype(np.float64).reshape(-1, length)
    energies: np.ndarray = np.einsum("ij,ij->i", frames, frames) / length
    return energies


def noise_floor(energies: np.ndarray) -> float:
    return float(np.percentile(energies, NOISE_PERCENTILE))


def snr_db(energies: np.ndarray) -> float:
    """Speech-to-noise power ratio over the utterance: (mean power - noise power) / noise power."""
    noise = noise_floor(energies)
    total = float(energies.mean())
    if noise <= 0.0:
        return SNR_CEILING_DB if total > 0 else -SNR_CEILING_DB
    signal = max(total - noise, 0.0)
    if signal == 0.0:
        return -SNR_CEILING_DB
    return float(np.clip(10 * math.log10(signal / noise), -SNR_CEILING_DB, SNR_CEILING_DB))


def energy_speech_share(samples: np.ndarray, sample_rate: int) -> float:
    """Share of frames whose energy stands SPEECH_MARGIN_DB above the noise floor (and above -60 dBFS).

    Cheap and blind to what the sound is: steady noise or a tone has no frame above its own floor, so it
    scores near 0; music scores like speech (use the silero detector where that matters).
    """
    energies = frame_energies(_without_dc(samples), sample_rate)
    threshold = max(noise_floor(energies) * 10 ** (SPEECH_MARGIN_DB / 10), 10 ** (SPEECH_FLOOR_DBFS / 10))
    return float(np.mean(energies > threshold))


def _without_dc(samples: np.ndarray) -> np.ndarray:
    """Energies count the signal, not a constant offset (measured separately as dc_offset)."""
    if samples.size == 0:
        return samples
    return (samples - np.float32(np.mean(samples, dtype=np.float64))).astype(np.float32)


def clipped_share(samples: np.ndarray) -> float:
    """Share of samples in flat runs at the signal's own peak, worst channel of a (frames, channels) array.

    Measured on the audio as decoded (before resampling, whose ripple would hide the flat tops), at
    whatever level the clipping happened, not only at full scale.
    """
    channels = samples.reshape(samples.shape[0], -1)
    worst = 0.0
    for channel in channels.T:
        magnitude = np.abs(channel)
        level = float(magnitude.max()) if magnitude.size else 0.0
        if level < 1e-4:
            continue
        near = magnitude >= level * (1 - CLIP_TOLERANCE)
        worst = max(worst, _share_in_runs(near, CLIP_MIN_RUN))
    return worst


def _share_in_runs(mask: np.ndarray, min_run: int) -> float:
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    return float(lengths[lengths >= min_run].sum() / mask.size)


def rms_dbfs(samples: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else LEVEL_FLOOR_DBFS


@functools.lru_cache(maxsize=8)
def _loudness_meter(sample_rate: int) -> object:
    import pyloudnorm

    return pyloudnorm.Meter(sample_rate)


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4, pyloudnorm); None when shorter than one 400 ms block or silent."""
    if samples.shape[0] < int(0.4 * sample_rate):
        return None
    value = float(_loudness_meter(sample_rate).integrated_loudness(samples.astype(np.float64)))  # type: ignore[attr-defined]
    return value if math.isfinite(value) else None


def measure(
    samples: np.ndarray,
    sample_rate: int,
    decoded: np.ndarray | None = None,
    speech_detector: SpeechDetector = energy_speech_share,
) -> Quality:
    """Measure float32 mono `samples`; `decoded` is the same span as decoded (any rate, any channels)."""
    energies = frame_energies(_without_dc(samples), sample_rate)
    return Quality(
        peak=float(np.max(np.abs(samples))) if samples.size else 0.0,
        clipped_share=clipped_share(decoded if decoded is not None else samples),
        dc_offset=float(np.mean(samples, dtype=np.float64)) if samples.size else 0.0,
        rms_dbfs=rms_dbfs(samples),
        loudness_lufs=loudness_lufs(samples, sample_rate),
        snr_db=snr_db(energies),
        speech_share=speech_detector(samples, sample_rate),
    )
