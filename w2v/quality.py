"""Per-utterance quality measurements: peak, clipping, DC offset, level, loudness, SNR and speech share.

Pure functions of audio already in memory (prepare measures what it decoded; nothing is decoded twice).
Levels are on the float scale, full scale = 1.0. The SNR estimate is a frame-energy percentile method:
the quietest frames are taken as noise, so it assumes pauses (at least ~5 % of frames) between speech.
One real FFT of 100 ms frames gives both the plain frame energies (SNR, speech share) and the K-weighted
ones (loudness), which keeps the measurements to a small share of prepare's time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.signal

# 100 ms frames: a noise frame's energy varies by ~4 %, pauses between words are longer, and four of them
# make one BS.1770 gating block (400 ms, hop 100 ms).
FRAME_SECONDS = 0.1
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


def noise_floor(energies: np.ndarray) -> float:
    """The NOISE_PERCENTILE-th smallest frame energy (nearest rank; a partition, not a sort)."""
    rank = min(energies.size - 1, int(NOISE_PERCENTILE / 100 * energies.size))
    return float(np.partition(energies, rank)[rank])


def snr_db(energies: np.ndarray, noise: float | None = None) -> float:
    """Speech-to-noise power ratio over the utterance: (mean power - noise power) / noise power."""
    noise = noise_floor(energies) if noise is None else noise
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
    return _speech_share(_spectral(samples, sample_rate).plain)


def _speech_share(energies: np.ndarray, noise: float | None = None) -> float:
    noise = noise_floor(energies) if noise is None else noise
    threshold = max(noise * 10 ** (SPEECH_MARGIN_DB / 10), 10 ** (SPEECH_FLOOR_DBFS / 10))
    return float(np.mean(energies > threshold))


def clipped_share(samples: np.ndarray) -> float:
    """Share of samples in flat runs at the signal's own peak, worst channel of a (frames, channels) array.

    Measured on the audio as decoded (before resampling, whose ripple would hide the flat tops), at
    whatever level the clipping happened, not only at full scale.
    """
    # One contiguous row per channel: reductions over a strided column of interleaved audio are slow.
    channels = np.ascontiguousarray(samples.reshape(samples.shape[0], -1).T)
    worst = 0.0
    for channel in channels:
        if channel.size == 0:
            continue
        highest, lowest = float(channel.max()), float(channel.min())
        level = max(highest, -lowest)
        if level < 1e-4:
            continue
        threshold = np.float32(level * (1 - CLIP_TOLERANCE))
        # Flat tops are runs of neighbouring indices, at the positive or the negative peak (a side that
        # never comes near the peak needs no look); few samples come near it, so their indices are cheaper
        # to work on than a mask of the whole signal.
        clipped = 0
        if highest >= threshold:
            clipped += _samples_in_runs(np.flatnonzero(channel >= threshold), CLIP_MIN_RUN)
        if -lowest >= threshold:
            clipped += _samples_in_runs(np.flatnonzero(channel <= -threshold), CLIP_MIN_RUN)
        worst = max(worst, clipped / channel.size)
    return worst


def _samples_in_runs(indices: np.ndarray, min_run: int) -> int:
    """How many of the sorted `indices` lie in runs of at least `min_run` consecutive integers."""
    if indices.size < min_run:
        return 0
    breaks = np.flatnonzero(np.diff(indices) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks + 1, [indices.size]))
    lengths = ends - starts
    return int(lengths[lengths >= min_run].sum())


def rms_dbfs(samples: np.ndarray) -> float:
    rms = math.sqrt(float(np.dot(samples, samples)) / samples.size) if samples.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else LEVEL_FLOOR_DBFS


@functools.lru_cache(maxsize=8)
def k_weighting(sample_rate: int) -> np.ndarray:
    """BS.1770's K-weighting at `sample_rate` as second-order sections: a high shelf, then a high pass.

    Designed from the filters' analog parameters with a pre-warped bilinear transform, which gives the
    standard's published 48 kHz coefficients exactly and the same response at other rates.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh**0.4996667741545416
    norm = 1 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / norm, 2 * (k * k - vh) / norm, (vh - vb * k / q + k * k) / norm]
    shelf += [1.0, 2 * (k * k - 1) / norm, (1 - k / q + k * k) / norm]
    k = math.tan(math.pi * 38.13547087602444 / sample_rate)
    q = 0.5003270373238773
    norm = 1 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2 * (k * k - 1) / norm, (1 - k / q + k * k) / norm]
    return np.array([shelf, high_pass], dtype=np.float64)


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness of mono audio (ITU-R BS.1770-4); None when shorter than one 400 ms block or silent."""
    return _spectral(samples, sample_rate).loudness_lufs()


@dataclass(frozen=True)
class _FrameSpectra:
    """Per 100 ms frame: mean square of the signal, and of the signal through BS.1770's K-weighting."""

    plain: np.ndarray
    k_weighted: np.ndarray

    def loudness_lufs(self) -> float | None:
        frames_per_block = 4
        if self.k_weighted.shape[0] < frames_per_block:
            return None
        prefix = np.concatenate(([0.0], np.cumsum(self.k_weighted)))
        power = (prefix[frames_per_block:] - prefix[:-frames_per_block]) / frames_per_block
        with np.errstate(divide="ignore"):
            level = -0.691 + 10 * np.log10(power)
        above_absolute = power[level > -70.0]
        if above_absolute.size == 0:
            return None
        relative_gate = -0.691 + 10 * math.log10(float(above_absolute.mean())) - 10.0
        gated = power[(level > -70.0) & (level > relative_gate)]
        return -0.691 + 10 * math.log10(float(gated.mean())) if gated.size else None


@functools.lru_cache(maxsize=16)
def _bin_weights(sample_rate: int, frame_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights that turn |rfft|² of a frame into its mean square (Parseval), plain and K-weighted.

    The DC bin gets no weight: energies count the signal, not an offset (measured apart as dc_offset).
    """
    bins = frame_length // 2 + 1
    plain = np.full(bins, 2.0)
    plain[0] = 0.0
    if frame_length % 2 == 0:
        plain[-1] = 1.0
    plain /= float(frame_length) ** 2
    frequencies = np.fft.rfftfreq(frame_length, 1 / sample_rate)
    _, response = scipy.signal.sosfreqz(k_weighting(sample_rate), worN=frequencies, fs=sample_rate)
    return plain.astype(np.float32), (plain * np.abs(response) ** 2).astype(np.float32)


def _spectral(samples: np.ndarray, sample_rate: int) -> _FrameSpectra:
    length = max(2, int(FRAME_SECONDS * sample_rate))
    count = samples.shape[0] // length
    if count == 0:
        energy = float(np.dot(samples, samples)) / max(1, samples.size)
        return _FrameSpectra(np.array([energy]), np.zeros(0))
    frames = samples[: count * length].astype(np.float32, copy=False).reshape(count, length)
    spectrum = scipy.fft.rfft(frames, axis=1)
    power = spectrum.real * spectrum.real
    power += spectrum.imag * spectrum.imag
    plain_weights, k_weights = _bin_weights(sample_rate, length)
    return _FrameSpectra((power @ plain_weights).astype(np.float64), (power @ k_weights).astype(np.float64))


def measure(
    samples: np.ndarray,
    sample_rate: int,
    decoded: np.ndarray | None = None,
    speech_detector: SpeechDetector | None = None,
) -> Quality:
    """Measure float32 mono `samples`; `decoded` is the same span as decoded (any rate, any channels).

    Speech share comes from the frame energies unless another `speech_detector` is given.
    """
    dc = float(np.mean(samples, dtype=np.float64)) if samples.size else 0.0
    spectra = _spectral(samples, sample_rate)
    energies = spectra.plain
    noise = noise_floor(energies)
    if speech_detector is None or speech_detector is energy_speech_share:
        speech = _speech_share(energies, noise)
    else:
        speech = speech_detector(samples, sample_rate)
    peak = max(float(samples.max()), -float(samples.min())) if samples.size else 0.0
    return Quality(
        peak=peak,
        clipped_share=clipped_share(decoded if decoded is not None else samples),
        dc_offset=dc,
        rms_dbfs=rms_dbfs(samples),
        loudness_lufs=spectra.loudness_lufs(),
        snr_db=snr_db(energies, noise),
        speech_share=speech,
    )
