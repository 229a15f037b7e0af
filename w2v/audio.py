"""Pure transforms on decoded audio: downmix, resample, quantize to int16, measure, segment.

Every function takes numpy arrays and plain numbers and returns new arrays; nothing here touches a file.
Float audio is float32 in [-1, 1]; stored audio is int16 PCM (x * 32768, rounded).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import soxr

INT16_SCALE = 32768.0
# Wav2Vec2FeatureExtractor's zero-mean/unit-variance normalization adds this to the variance.
NORM_EPS = 1e-7


def downmix(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array into float32 mono (frames,)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return samples[:, 0].astype(np.float32, copy=False)
    # Channel by channel: a strided mean over axis 1 costs more than decoding the file.
    total = samples[:, 0].astype(np.float32)
    for channel in range(1, samples.shape[1]):
        total += samples[:, channel]
    total *= np.float32(1 / samples.shape[1])
    return total


def resample(samples: np.ndarray, from_rate: int, to_rate: int, quality: str = "HQ") -> np.ndarray:
    """Resample float32 mono audio with soxr; returns the input unchanged when the rates are equal."""
    if from_rate == to_rate:
        return samples
    out: np.ndarray = soxr.resample(samples, from_rate, to_rate, quality=quality)
    return out.astype(np.float32, copy=False)


def fit_to_full_scale(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale float audio down so its peak fits int16, returning (audio, gain applied).

    Float sources and resampling overshoot can exceed 1.0; clipping would distort, and the loader
    normalizes each utterance to unit variance anyway, so a uniform gain loses nothing.
    """
    # Highest and lowest in two passes: no |x| array is allocated.
    peak = max(float(samples.max()), -float(samples.min())) if samples.size else 0.0
    limit = 32767.0 / INT16_SCALE
    if peak <= limit:
        return samples, 1.0
    gain = limit / peak
    return (samples * np.float32(gain)).astype(np.float32), gain


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Quantize float audio in [-1, 1] to int16; exact for audio that was int16 to begin with."""
    # float32 holds every int16 value exactly, so int16 sources come back bit-exact.
    scaled = np.multiply(samples, np.float32(INT16_SCALE), dtype=np.float32)  # one new array, scaled in place
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    """The inverse of `to_int16`: float32 in [-1, 1)."""
    return (pcm.astype(np.float32) / np.float32(INT16_SCALE)).astype(np.float32)


def mean_std(pcm: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of int16 audio on the float scale (the one the model sees)."""
    if pcm.size == 0:
        return 0.0, 0.0
    x = pcm.astype(np.float64)
    mean = float(x.sum()) / x.size
    # One conversion and two BLAS-speed passes instead of numpy's var (several passes and temporaries).
    variance = max(float(np.dot(x, x)) / x.size - mean * mean, 0.0)
    return mean / INT16_SCALE, math.sqrt(variance) / INT16_SCALE


def normalize(pcm: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Zero-mean, unit-variance float32 audio, as Wav2Vec2FeatureExtractor(do_normalize=True) makes it."""
    x = pcm.astype(np.float32) / np.float32(INT16_SCALE)
    return ((x - np.float32(mean)) / np.float32(math.sqrt(std * std + NORM_EPS))).astype(np.float32)


@dataclass(frozen=True)
class SegmentPlan:
    """Where to cut a recording: contiguous [start, end) sample ranges covering all of it."""

    bounds: tuple[tuple[int, int], ...]

    def kept(self, min_samples: int) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self.bounds if e - s >= min_samples]

    def dropped(self, min_samples: int) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self.bounds if e - s < min_samples]


def plan_segments(
    samples: np.ndarray,
    sample_rate: int,
    max_seconds: float,
    search_seconds: float = 2.0,
    frame_seconds: float = 0.025,
    hop_seconds: float = 0.010,
) -> SegmentPlan:
    """Cut a recording longer than `max_seconds` into pieces no longer than it.

    Pieces aim at equal length a little under the maximum (so no tiny remainder is left over), and each cut
    is placed at the centre of the quietest `frame_seconds` frame within half of `search_seconds` of its aim.
    The pieces cover every sample exactly once, so seconds are conserved.
    """
    n = int(samples.shape[0])
    max_len = max(1, int(max_seconds * sample_rate))
    if n <= max_len:
        return SegmentPlan(((0, n),) if n else ())
    half = max(1, int(frame_seconds * sample_rate) // 2)
    hop = max(1, int(hop_seconds * sample_rate))
    window = int(search_seconds * sample_rate)
    # Plan a little under the maximum so each cut has room to move to a quiet frame: with P pieces aimed at
    # n / P <= max_len - slack and each cut within slack / 2 of its aim, no piece exceeds max_len.
    slack = min(window, max_len // 4)
    pieces = math.ceil(n / (max_len - slack))
    even = n / pieces
    reach = int(min(slack // 2, even // 4))
    cuts_chosen = [0]
    for k in range(1, pieces):
        target = round(k * even)
        cuts = np.arange(target - reach, target + reach + 1, hop)
        frame_starts = np.clip(cuts - half, 0, max(0, n - 2 * half))
        # Energies from a local prefix sum: no copy of the whole (possibly hours-long) recording.
        lo, hi = int(frame_starts[0]), min(n, int(frame_starts[-1]) + 2 * half)
        x = samples[lo:hi].astype(np.float64)
        prefix = np.concatenate(([0.0], np.cumsum(x * x)))
        frame_energy = prefix[np.minimum(frame_starts - lo + 2 * half, hi - lo)] - prefix[frame_starts - lo]
        # Quietest first; among equally quiet frames (digital silence) the one nearest the aim.
        order = np.lexsort((np.abs(cuts - target), frame_energy))
        cuts_chosen.append(int(cuts[order[0]]))
    cuts_chosen.append(n)
    bounds = list(itertools.pairwise(cuts_chosen))
    return SegmentPlan(tuple(bounds))
