"""Quality measurements on cases with a known answer: speech in noise, clipping, DC offset, tone, noise."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.corpus import read_speech
from w2v import quality

RATE = 16_000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 8 s of espeak-ng speech: three sentences, two voices, with short pauses as people make them."""
    pieces = []
    for text, voice in [
        ("The committee will meet again on Thursday to review the budget.", "en-us"),
        ("Please bring the signed forms and a copy of last year's report.", "en-gb"),
        ("Nobody expected the river to rise so quickly after the storm.", "en-us"),
    ]:
        audio, rate = read_speech(text, voice)
        pieces += [soxr.resample(audio, rate, RATE).astype(np.float32), np.zeros(int(0.4 * RATE), np.float32)]
    return np.concatenate(pieces) * np.float32(0.5)


def _with_noise(speech: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 1, speech.shape[0])
    noise *= np.sqrt(np.sum(speech.astype(np.float64) ** 2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return (speech + noise).astype(np.float32)


def test_snr_estimate_is_within_3_db_from_10_to_30_db_and_monotone(speech: np.ndarray) -> None:
    estimates = {}
    for truth in (0, 10, 20, 30):
        estimates[truth] = quality.measure(_with_noise(speech, truth), RATE).snr_db
    for truth in (10, 20, 30):
        assert abs(estimates[truth] - truth) <= 3, estimates
    assert estimates[0] < estimates[10] < estimates[20] < estimates[30], estimates


def test_clean_speech_measures_clean(speech: np.ndarray) -> None:
    measured = quality.measure(speech, RATE)
    assert measured.clipped_share < 0.001
    assert abs(measured.dc_offset) < 0.001
    assert measured.snr_db > 40
    assert 0.5 < measured.speech_share < 0.98
    assert measured.loudness_lufs is not None and -40 < measured.loudness_lufs < -10
    assert measured.peak == pytest.approx(float(np.max(np.abs(speech))))


def test_hard_clipping_at_a_third_of_the_peak_is_detected(speech: np.ndarray) -> None:
    level = 0.3 * float(np.max(np.abs(speech)))
    clipped = np.clip(speech, -level, level)
    truth = float(np.mean(np.abs(speech) >= level))
    assert 0.8 * truth <= quality.measure(clipped, RATE).clipped_share <= truth
    # The flat tops are found in any channel, against the recording's peak over all its channels.
    stereo = np.stack([np.roll(speech, 48) * np.float32(0.2), clipped], axis=1)
    assert quality.clipped_share(stereo) == pytest.approx(quality.clipped_share(clipped))
    # A piece's share counts the runs found over the whole recording that fall inside the piece.
    clipping = quality.Clipping.find(clipped)
    half = clipped.size // 2
    expected = (clipping.share(0, half) * half + clipping.share(half) * (clipped.size - half)) / clipped.size
    assert clipping.share() == pytest.approx(expected)


def _clipped_share_by_hand(samples: np.ndarray) -> float:
    """The definition, one channel and one sample at a time."""
    worst = 0.0
    level = max(float(samples.max()), -float(samples.min()))
    if level < 1e-4:
        return 0.0
    for channel in samples.reshape(samples.shape[0], -1).T:
        threshold = np.float32(level * (1 - quality.CLIP_TOLERANCE))
        clipped = 0
        for side in (channel >= threshold, channel <= -threshold):
            run = 0
            for flag in [*side.tolist(), False]:
                if flag:
                    run += 1
                    continue
                clipped += run if run >= quality.CLIP_MIN_RUN else 0
                run = 0
        worst = max(worst, clipped / channel.size)
    return worst


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 5000),
    levels=st.lists(st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_clipped_share_counts_flat_runs_at_the_recordings_peak_as_defined(
    frames: int, levels: list[tuple[float, float]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.5, (frames, len(levels)))
    low, high = np.array(levels).T
    samples = np.clip(noise, -low, high).astype(np.float32)
    assert quality.clipped_share(samples) == _clipped_share_by_hand(samples)
    assert quality.clipped_share(samples[:, 0]) == _clipped_share_by_hand(samples[:, :1])


def test_dc_offset_is_measured(speech: np.ndarray) -> None:
    assert quality.measure(speech + np.float32(0.2), RATE).dc_offset == pytest.approx(0.2, abs=0.002)


def test_noise_and_a_tone_have_no_speech() -> None:
    seconds = np.arange(5 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.1, 5 * RATE).astype(np.float32)
    for signal in (tone, noise):
        measured = quality.measure(signal, RATE)
        assert measured.speech_share < 0.05
        assert measured.snr_db < 0


def test_levels_of_a_full_scale_sine() -> None:
    sine = np.sin(2 * np.pi * 997 * np.arange(RATE) / RATE).astype(np.float32)
    measured = quality.measure(sine, RATE)
    assert measured.rms_dbfs == pytest.approx(-3.01, abs=0.05)
    assert measured.loudness_lufs == pytest.approx(-3.01, abs=0.3)  # BS.1770's calibration point
    assert quality.measure(np.zeros(RATE, np.float32), RATE).loudness_lufs is None


def test_k_weighting_at_48_khz_has_the_standards_coefficients() -> None:
    shelf, high_pass = quality.k_weighting(48_000)
    assert shelf == pytest.approx([1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241,
                                   0.73248077421585], abs=1e-10)  # fmt: skip
    assert high_pass == pytest.approx([1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621], abs=1e-10)


def test_loudness_agrees_with_pyloudnorm(speech: np.ndarray) -> None:
    import pyloudnorm

    for rate in (8_000, 16_000, 48_000):
        audio = soxr.resample(speech, RATE, rate).astype(np.float32)
        reference = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(audio.astype(np.float64))
        assert quality.loudness_lufs(audio, rate) == pytest.approx(reference, abs=0.05)


def test_a_shard_has_one_column_per_measurement_and_each_has_histogram_bins() -> None:
    from w2v.shards.histograms import BINS
    from w2v.shards.schema import QUALITY_COLUMNS, SCHEMA

    assert tuple(quality.Quality.__dataclass_fields__) == QUALITY_COLUMNS  # the one list, in the dataclass's order
    assert all(SCHEMA.field(name).type == "float" for name in QUALITY_COLUMNS)
    assert set(BINS) <= set(QUALITY_COLUMNS)
