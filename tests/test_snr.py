"""The SNR estimate against the truth: espeak-ng speech plus stationary noise mixed at a known ratio.

Truth = power of the clean speech over the whole recording (pauses included) / power of the added noise.
Continuous speech (sentences joined by 30 ms gaps) leaves few 100 ms frames free of speech; the recording
with 0.4 s pauses is the kind the frame-energy percentile, the estimator before this one, was built for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.fft
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.corpus import read_speech
from w2v import quality

RATE = 16_000
GAP_SECONDS = 0.03
SNRS_DB = tuple(range(0, 31, 5))
NOISES = ("white", "pink", "brown", "low-passed", "speech-shaped")

# (voice, words per minute, sentences): eight talkers, each two or three sentences read without a pause.
CONTINUOUS = [
    ("en-us", 175, ["The farmer sold his apples at the market before noon", "Most of the crowd had already gone home"]),
    (
        "en-gb",
        145,
        [
            "Her brother repaired the old clock that hung above the fireplace",
            "It had not worked for many years",
            "Now it chimes every hour",
        ],
    ),
    ("de", 200, ["Am Wochenende wandern wir gern durch die Berge", "Danach essen wir Kuchen in einem kleinen Café"]),
    ("fr-fr", 160, ["La voisine arrose ses fleurs chaque soir après le travail", "Son chat dort au soleil"]),
    ("es", 210, ["Mañana vamos a visitar a mis abuelos en el campo", "Ellos tienen muchas gallinas y dos caballos"]),
    ("it", 135, ["Ogni estate andiamo al mare con tutta la famiglia", "Mio padre porta sempre troppe valigie"]),
    ("pt", 185, ["O comboio para Lisboa parte daqui a dez minutos", "Não te esqueças do bilhete"]),
    ("en-us+f3", 225, ["Please turn left at the second traffic light", "The museum is opposite the old bank"]),
]
PAUSED = [
    ("The committee will meet again on Thursday to review the budget.", "en-us"),
    ("Please bring the signed forms and a copy of last year's report.", "en-gb"),
    ("Nobody expected the river to rise so quickly after the storm.", "en-us"),
]


def _trimmed(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    return audio[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def continuous() -> list[np.ndarray]:
    """Eight recordings of 3-7 s: several voices and rates, no pause longer than 30 ms between sentences."""
    recordings = []
    for voice, words_per_minute, sentences in CONTINUOUS:
        pieces = []
        for sentence in sentences:
            audio, rate = read_speech(sentence, voice, speed=words_per_minute)
            pieces += [_trimmed(soxr.resample(audio, rate, RATE)), np.zeros(int(GAP_SECONDS * RATE))]
        recordings.append((np.concatenate(pieces[:-1]) * 0.5).astype(np.float32))
    return recordings


@pytest.fixture(scope="module")
def paused() -> np.ndarray:
    """tests/test_quality.py's speech: three sentences, two voices, each followed by 0.4 s of silence."""
    pieces = []
    for text, voice in PAUSED:
        audio, rate = read_speech(text, voice)
        pieces += [soxr.resample(audio, rate, RATE), np.zeros(int(0.4 * RATE))]
    return (np.concatenate(pieces) * 0.5).astype(np.float32)


def noise(kind: str, num_samples: int, seed: int, shape: np.ndarray | None = None) -> np.ndarray:
    """Seeded Gaussian noise with the power spectrum of `kind`, shaped in the frequency domain.

    Pink (1/f) and brown (1/f²) are high-passed at 50 Hz, as recordings are; low-passed: 4th-order
    Butterworth at 1 kHz; speech-shaped: `shape`, a power spectrum on rfftfreq(len(shape) * 2 - 2) bins.
    """
    length = scipy.fft.next_fast_len(num_samples, real=True)  # shaped at a length the FFT likes, then cut
    white = np.random.default_rng(seed).normal(0, 1, length)
    if kind == "white":
        return white[:num_samples]
    frequencies = np.fft.rfftfreq(length, 1 / RATE)
    high_pass = frequencies**4 / (frequencies**4 + 50.0**4)
    above_zero = np.maximum(frequencies, 1.0)
    if kind == "pink":
        power = high_pass / above_zero
    elif kind == "brown":
        power = high_pass / above_zero**2
    elif kind == "low-passed":
        power = 1 / (1 + (frequencies / 1000) ** 8)
    elif kind == "speech-shaped" and shape is not None:
        power = np.interp(frequencies, np.linspace(0, RATE / 2, shape.size), shape)
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return np.fft.irfft(np.fft.rfft(white) * np.sqrt(power), length)[:num_samples]


def long_term_spectrum(recordings: list[np.ndarray], length: int = 512) -> np.ndarray:
    """Mean power spectrum of the recordings over `length`-sample frames: the speech-shaped noise's shape."""
    frames = np.concatenate([r[: r.size // length * length].reshape(-1, length) for r in recordings])
    return np.mean(np.abs(np.fft.rfft(frames * np.hanning(length), axis=1)) ** 2, axis=0)


def mixed(speech: np.ndarray, added: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    added = added * math.sqrt(speech_power / float(np.mean(added**2)) / 10 ** (snr_db / 10))
    return (speech + added).astype(np.float32)


def percentile_snr_db(samples: np.ndarray) -> float:
    """The estimator this one replaced: noise = 5th percentile of 100 ms frame energies (frame mean removed)."""
    length = int(quality.FRAME_SECONDS * RATE)
    energies = samples[: samples.size // length * length].reshape(-1, length).astype(np.float64).var(axis=1)
    floor = quality.noise_floor(energies)
    return 10 * math.log10(max(float(energies.mean()) - floor, 1e-12) / floor)


def error_table(
    recordings: list[np.ndarray], estimate: Callable[[np.ndarray, int], float] = quality.snr_db
) -> list[tuple[int, str, int, float]]:
    """(recording, noise, true SNR dB, estimate - truth dB) for every recording, noise and SNR in SNRS_DB."""
    shape = long_term_spectrum(recordings)
    rows = []
    for index, speech in enumerate(recordings):
        for kind_index, kind in enumerate(NOISES):
            for truth in SNRS_DB:
                added = noise(kind, speech.size, seed=1000 * index + 10 * kind_index + truth, shape=shape)
                rows.append((index, kind, truth, estimate(mixed(speech, added, truth), RATE) - truth))
    return rows


def test_snr_of_continuous_speech_is_within_3_db_in_white_and_coloured_noise(continuous: list[np.ndarray]) -> None:
    rows = error_table(continuous)
    assert len(rows) == len(CONTINUOUS) * len(NOISES) * len(SNRS_DB)
    errors = np.array([error for *_, error in rows])
    outside = [f"recording {i} {kind} {truth} dB: {error:+.1f}" for i, kind, truth, error in rows if abs(error) > 3]
    assert not outside, outside
    assert np.mean(np.abs(errors)) < 1.0  # measured: 0.6 dB, the estimate reading ~0.5 dB low on average


def test_snr_of_a_20_s_piece_is_within_3_db_from_every_other_frame(continuous: list[np.ndarray]) -> None:
    piece = np.concatenate(continuous)[: 20 * RATE]  # prepare's longest piece: eight talkers in turn
    assert piece.size // round(quality.NOISE_FRAME_SECONDS * RATE) > 1.5 * quality.NOISE_MAX_FRAMES
    rows = error_table([piece])
    outside = [f"{kind} {truth} dB: {error:+.1f}" for _, kind, truth, error in rows if abs(error) > 3]
    assert not outside, outside


def test_snr_with_pauses_is_as_good_as_the_frame_percentile_it_replaced(paused: np.ndarray) -> None:
    new = np.array([error for *_, error in error_table([paused])])
    old = np.array([error for *_, error in error_table([paused], lambda samples, _: percentile_snr_db(samples))])
    # Measured: new 0.29 dB mean, 0.9 worst (brown); old 0.37 dB mean, 1.0 worst (brown).
    assert np.mean(np.abs(new)) <= np.mean(np.abs(old)) + 0.1, (new, old)
    assert np.max(np.abs(new)) <= max(1.5, np.max(np.abs(old))), (new, old)


def test_snr_of_speech_without_noise_is_high_and_of_noise_alone_is_negative(continuous: list[np.ndarray]) -> None:
    assert all(quality.snr_db(speech, RATE) > 30 for speech in continuous)
    alone = noise("pink", 5 * RATE, seed=3)
    assert quality.snr_db(alone.astype(np.float32), RATE) < -5


def iterated_band_noise(tiles: np.ndarray, truncated_mean: np.ndarray) -> np.ndarray:
    """The iteration quality._band_noise stands for, band by band: N <- mean(tiles < cutoff * N) / h until the
    tiles under the cutoff stay the same, from the band's start quantile."""
    noise = []
    for row, h in zip(tiles, truncated_mean, strict=True):
        level = float(np.sort(row)[int(quality.NOISE_START_QUANTILE * row.size)])
        under = -1
        for _ in range(row.size + 1):
            counted = row[row < quality.NOISE_CUTOFF * level]
            if counted.size in (0, under):
                break
            under, level = counted.size, float(counted.mean()) / h
        noise.append(level)
    return np.array(noise)


@settings(max_examples=200, deadline=None)
@given(
    frames=st.integers(8, 400),
    bands=st.integers(1, 5),
    speech_share=st.floats(0.0, 0.97),
    silent_share=st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_band_noise_is_where_the_truncated_mean_iteration_settles(
    frames: int, bands: int, speech_share: float, silent_share: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    levels = 10 ** rng.uniform(-8, 0, (bands, 1))
    tiles = rng.gamma(6.45, 1 / 6.45, (bands, frames)) * levels
    speech = rng.random((bands, frames)) < speech_share
    tiles[speech] += (levels * rng.lognormal(1, 2, (bands, frames)))[speech]
    tiles[rng.random((bands, frames)) < silent_share] = 0.0  # digital silence
    truncated_mean = rng.uniform(0.6, 0.98, bands)
    expected = iterated_band_noise(tiles, truncated_mean)
    assert quality._band_noise(tiles, truncated_mean) == pytest.approx(expected, rel=1e-9)
