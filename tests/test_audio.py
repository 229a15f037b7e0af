"""Pure audio transforms: conservation, bounds and exactness, on arrays the tests make."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v import audio


def test_int16_round_trip_is_bit_exact() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(audio.to_int16(audio.int16_to_float(pcm)), pcm)


def test_downmix_averages_channels() -> None:
    stereo = np.stack([np.full(10, 0.5, np.float32), np.full(10, -0.25, np.float32)], axis=1)
    assert np.allclose(audio.downmix(stereo), 0.125)
    assert audio.downmix(stereo[:, :1]).shape == (10,)


def test_resample_keeps_a_tone_at_its_frequency() -> None:
    t = np.arange(44_100) / 44_100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = audio.resample(tone, 44_100, 16_000)
    assert out.shape[0] == 16_000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1


def test_fit_to_full_scale_scales_only_what_would_clip() -> None:
    quiet = np.array([0.5, -0.5], np.float32)
    assert audio.fit_to_full_scale(quiet)[1] == 1.0
    loud, gain = audio.fit_to_full_scale(np.array([2.0, -1.0], np.float32))
    assert gain < 0.5 and np.max(np.abs(loud)) <= 32767 / 32768


def test_normalize_matches_feature_extractor_convention() -> None:
    rng = np.random.default_rng(0)
    pcm = (rng.normal(0, 3000, 16_000) + 400).astype(np.int16)
    mean, std = audio.mean_std(pcm)
    x = audio.normalize(pcm, mean, std)
    reference = pcm.astype(np.float32) / 32768
    expected = (reference - reference.mean()) / np.sqrt(reference.var() + 1e-7)
    assert np.allclose(x, expected, atol=1e-4)


def test_short_recordings_are_not_cut() -> None:
    plan = audio.plan_segments(np.ones(16_000, np.float32), 16_000, max_seconds=2.0)
    assert plan.bounds == ((0, 16_000),)


def test_cut_lands_in_the_quiet_gap_nearest_the_even_split() -> None:
    rate = 16_000
    loud = np.random.default_rng(1).normal(0, 0.3, 30 * rate).astype(np.float32)
    loud[int(13.0 * rate) : int(13.3 * rate)] = 0.0  # a pause 2 s before the even split at 15 s
    plan = audio.plan_segments(loud, rate, max_seconds=20.0, search_seconds=6.0)
    assert len(plan.bounds) == 2
    cut = plan.bounds[0][1]
    assert 13.0 * rate <= cut <= 13.3 * rate


@settings(max_examples=200, deadline=None)
@given(
    num_samples=st.integers(min_value=0, max_value=200_000),
    max_seconds=st.floats(min_value=0.5, max_value=5.0),
    search_seconds=st.floats(min_value=0.0, max_value=3.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_segments_cover_every_sample_once_and_respect_the_maximum(
    num_samples: int, max_seconds: float, search_seconds: float, seed: int
) -> None:
    rate = 8_000
    x = np.random.default_rng(seed).normal(0, 1, num_samples).astype(np.float32)
    plan = audio.plan_segments(x, rate, max_seconds=max_seconds, search_seconds=search_seconds)
    max_len = int(max_seconds * rate)
    if num_samples == 0:
        assert plan.bounds == ()
        return
    assert plan.bounds[0][0] == 0 and plan.bounds[-1][1] == num_samples
    for (_, end), (start, _) in zip(plan.bounds, plan.bounds[1:], strict=False):
        assert end == start
    assert all(0 < e - s <= max_len for s, e in plan.bounds)
    # As few pieces as leave each cut room to move, none shorter than half an even piece.
    slack = min(int(search_seconds * rate), max_len // 4)
    pieces = -(-num_samples // (max_len - slack)) if num_samples > max_len else 1
    assert len(plan.bounds) == pieces
    assert min(e - s for s, e in plan.bounds) >= num_samples // pieces // 2
