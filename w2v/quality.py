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
    return _speech_share(_spectral(samples, sample_rate)[0].plain)


def _speech_share(energies: np.ndarray, noise: float | None = None) -> float:
    noise = noise_floor(energies) if noise is None else noise
    threshold = max(noise * 10 ** (SPEECH_MARGIN_DB / 10), 10 ** (SPEECH_FLOOR_DBFS / 10))
    return float(np.mean(energies > threshold))


@dataclass(frozen=True)
class Clipping:
    """Where a recording is clipped: per channel, the sorted frames that lie in flat runs at its peak.

    Found once per recording, on the audio as decoded (before resampling, whose ripple would hide the flat
    tops), at whatever level the clipping happened, not only at full scale. The level is the recording's
    peak over all its channels: converters and gain stages clip every channel at the same level.
    """

    frames: tuple[np.ndarray, ...]
    length: int

    @classmethod
    def find(cls, samples: np.ndarray, highest: float | None = None, lowest: float | None = None) -> Clipping:
        """Scan a (frames,) or (frames, channels) array; its max and min may be passed in when known."""
        length = samples.shape[0]
        channels = 1 if samples.ndim == 1 else int(np.prod(samples.shape[1:]))
        none = cls(tuple(np.zeros(0, np.int64) for _ in range(channels)), length)
        if length == 0 or channels == 0:
            return none
        flat = np.ascontiguousarray(samples).reshape(-1)
        highest = float(flat.max()) if highest is None else highest
        lowest = float(flat.min()) if lowest is None else lowest
        level = max(highest, -lowest)
        if level < 1e-4:
            return none
        threshold = np.float32(level * (1 - CLIP_TOLERANCE))
        found: list[list[np.ndarray]] = [[] for _ in range(channels)]
        # A side that never comes near the peak needs no look; on the other, few samples come near it, so
        # one comparison and a count decide whether their indices are worth taking.
        for reaches, near in ((highest >= threshold, np.greater_equal), (-lowest >= threshold, np.less_equal)):
            if not reaches:
                continue
            mask = near(flat, threshold if near is np.greater_equal else -threshold)
            if np.count_nonzero(mask) < CLIP_MIN_RUN:
                del mask  # freed before the next side allocates its own: fresh pages cost more than the scan
                continue
            indices = np.flatnonzero(mask)
            del mask
            for channel in range(channels):
                own = indices if channels == 1 else indices[indices % channels == channel] // channels
                found[channel].append(_in_runs(own, CLIP_MIN_RUN))
        return cls(tuple(np.sort(np.concatenate(f)) if f else np.zeros(0, np.int64) for f in found), length)

    def share(self, start: int = 0, end: int | None = None) -> float:
        """Share of frames start..end that are clipped, in the worst channel."""
        end = self.length if end is None else min(end, self.length)
        if end <= start:
            return 0.0
        worst = max((int(np.searchsorted(f, end) - np.searchsorted(f, start)) for f in self.frames), default=0)
        return worst / (end - start)


def clipped_share(samples: np.ndarray) -> float:
    """Share of samples in flat runs at the recording's peak, worst channel of a (frames, channels) array."""
    return Clipping.find(samples).share()


def _in_runs(indices: np.ndarray, min_run: int) -> np.ndarray:
    """The sorted `indices` that lie in runs of at least `min_run` consecutive integers."""
    if indices.size < min_run:
        return indices[:0]
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts, [indices.size])))
    keep = np.repeat(lengths >= min_run, lengths)
    return indices[keep]


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
    return _spectral(samples, sample_rate)[0].loudness_lufs()


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
def _bin_weights(sample_rate: int, frame_length: int) -> np.ndarray:
    """(2 * bins, 2) weights that turn a frame's rfft, viewed as interleaved re/im floats and squared, into
    its mean square (Parseval): column 0 plain, column 1 through the K-weighting.

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
    weights = np.stack([plain, plain * np.abs(response) ** 2], axis=1)
    return np.repeat(weights, 2, axis=0).astype(np.float32)


def _spectral(samples: np.ndarray, sample_rate: int) -> tuple[_FrameSpectra, float]:
    """Frame energies, and the mean of `samples` (its DC offset, read off the spectra's DC bins)."""
    length = max(2, int(FRAME_SECONDS * sample_rate))
    count = samples.shape[0] // length
    if count == 0:
        energy = float(np.dot(samples, samples)) / max(1, samples.size)
        mean = float(np.mean(samples, dtype=np.float64)) if samples.size else 0.0
        return _FrameSpectra(np.array([energy]), np.zeros(0)), mean
    frames = samples[: count * length].astype(np.float32, copy=False).reshape(count, length)
    spectrum = scipy.fft.rfft(frames, axis=1)
    total = float(spectrum[:, 0].real.sum(dtype=np.float64)) + float(samples[count * length :].sum(dtype=np.float64))
    # |X|² summed with weights, as one product: the complex spectra are read as interleaved floats.
    parts = spectrum.view(np.float32)
    energies = (parts * parts) @ _bin_weights(sample_rate, length)
    return _FrameSpectra(energies[:, 0].astype(np.float64), energies[:, 1].astype(np.float64)), total / samples.shape[0]


def measure(
    samples: np.ndarray,
    sample_rate: int,
    clipped: float | None = None,
    speech_detector: SpeechDetector | None = None,
) -> Quality:
    """Measure float32 mono `samples`; `clipped` is the span's clipped share when known (see Clipping).

    Speech share comes from the frame energies unless another `speech_detector` is given.
    """
    spectra, dc = _spectral(samples, sample_rate)
    energies = spectra.plain
    noise = noise_floor(energies)
    if speech_detector is None or speech_detector is energy_speech_share:
        speech = _speech_share(energies, noise)
    else:
        speech = speech_detector(samples, sample_rate)
    peak = max(float(samples.max()), -float(samples.min())) if samples.size else 0.0
    return Quality(
        peak=peak,
        clipped_share=clipped_share(samples) if clipped is None else clipped,
        dc_offset=dc,
        rms_dbfs=rms_dbfs(samples),
        loudness_lufs=spectra.loudness_lufs(),
        snr_db=snr_db(energies, noise),
        speech_share=speech,
    )
