"""Masks and negatives against transformers' helpers, by statistics over fixed seeds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2ForPreTraining,
    _compute_mask_indices,
    _sample_negative_indices,
)

from w2v.ssl.masking import Backend, dense_negatives, feature_lengths, sample_negatives, span_mask

FRAMES = 400
LENGTHS = torch.tensor([400, 390, 310, 250, 200, 120, 60, 30])

# Both implementations: "auto" is the compiled one for CPU tensors, "torch" the one GPUs use.
both_backends = pytest.mark.parametrize("backend", ["auto", "torch"])


def _ours(
    lengths: torch.Tensor, prob: float, span: int, min_masks: int, batches: int, backend: Backend
) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    return [
        span_mask(lengths, FRAMES, prob, span, min_masks, generator, backend=backend).numpy() for _ in range(batches)
    ]


def _theirs(lengths: torch.Tensor, prob: float, span: int, min_masks: int, batches: int) -> list[np.ndarray]:
    np.random.seed(0)
    attention = (torch.arange(FRAMES)[None, :] < lengths[:, None]).long()
    return [_compute_mask_indices((len(lengths), FRAMES), prob, span, attention, min_masks) for _ in range(batches)]


def _run_lengths(masks: list[np.ndarray]) -> Counter[int]:
    runs: Counter[int] = Counter()
    for mask in masks:
        for row in mask:
            edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
            runs.update((edges[1::2] - edges[::2]).tolist())
    return runs


@both_backends
@pytest.mark.parametrize(("prob", "span"), [(0.65, 10), (0.05, 10), (0.3, 5)])
def test_masked_share_per_row_matches_transformers(prob: float, span: int, backend: Backend) -> None:
    ours, theirs = _ours(LENGTHS, prob, span, 2, 400, backend), _theirs(LENGTHS, prob, span, 2, 400)
    for row, length in enumerate(LENGTHS.tolist()):
        share_ours = np.mean([m[row, :length].mean() for m in ours])
        share_theirs = np.mean([m[row, :length].mean() for m in theirs])
        assert share_ours == pytest.approx(share_theirs, abs=0.015), (row, length)


@both_backends
def test_span_lengths_are_distributed_as_in_transformers(backend: Backend) -> None:
    ours, theirs = (
        _run_lengths(_ours(LENGTHS, 0.65, 10, 2, 300, backend)),
        _run_lengths(_theirs(LENGTHS, 0.65, 10, 2, 300)),
    )
    total_ours, total_theirs = sum(ours.values()), sum(theirs.values())
    distance = 0.5 * sum(abs(ours[k] / total_ours - theirs[k] / total_theirs) for k in set(ours) | set(theirs))
    assert distance < 0.03
    assert min(ours) >= 10  # a run is one span or several merged, never shorter than a span


@both_backends
def test_minimum_masks_are_kept_when_the_probability_gives_none(backend: Backend) -> None:
    masks = _ours(LENGTHS, 0.0, 10, 2, 200, backend)
    for mask in masks:
        masked = mask.sum(axis=1)
        assert (masked >= 10).all() and (masked <= 20).all()
    assert np.mean([m.sum() for m in masks]) == pytest.approx(
        np.mean([m.sum() for m in _theirs(LENGTHS, 0.0, 10, 2, 200)]), rel=0.03
    )


@both_backends
@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(0, FRAMES), min_size=1, max_size=6),
    prob=st.floats(0.0, 1.0),
    span=st.integers(1, 20),
    min_masks=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_padding_is_never_masked_and_counts_follow_the_formula(
    lengths: list[int], prob: float, span: int, min_masks: int, seed: int, backend: Backend
) -> None:
    frame_lengths = torch.tensor(lengths)
    generator = torch.Generator().manual_seed(seed)
    mask = span_mask(frame_lengths, FRAMES, prob, span, min_masks, generator, backend=backend)
    steps = torch.arange(FRAMES)[None, :]
    assert not mask[steps >= frame_lengths[:, None]].any()
    for row, length in enumerate(lengths):
        # int(prob·length/span + ε) with ε < 1, at least min_masks, at most what fits in the batch and the row.
        most = min(max(int(prob * length / span + 1), min_masks), FRAMES // span, max(length - span + 1, 0))
        assert int(mask[row].sum()) <= most * span
        if length >= span and min(min_masks, length - span + 1) > 0:
            assert int(mask[row].sum()) >= span


def _candidates(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return span_mask(LENGTHS // 4, 100, 0.5, 5, 2, generator, backend="torch")


@both_backends
def test_negatives_are_never_the_positive_and_stay_in_their_row(backend: Backend) -> None:
    candidates = _candidates()
    compact = sample_negatives(candidates, 100, torch.Generator().manual_seed(1), backend=backend)
    negatives = dense_negatives(candidates, compact, backend=backend)
    batch, frames = candidates.shape
    for row in range(batch):
        allowed = set((torch.nonzero(candidates[row]).flatten() + row * frames).tolist())
        for step in torch.nonzero(candidates[row]).flatten().tolist():
            drawn = set(negatives[row, step].tolist())
            assert row * frames + step not in drawn
            assert drawn <= allowed
        # Steps that are not candidates carry transformers' filler: the row's offset.
        assert (negatives[row][~candidates[row]] == row * frames).all()


@both_backends
def test_negatives_are_uniform_over_the_other_candidates_like_transformers(backend: Backend) -> None:
    candidates = _candidates()
    row = 0
    steps = torch.nonzero(candidates[row]).flatten()
    step = int(steps[len(steps) // 2])
    compact = sample_negatives(candidates, 20_000, torch.Generator().manual_seed(2), backend=backend)
    ours = dense_negatives(candidates, compact, backend=backend)[row, step].numpy()
    np.random.seed(2)
    theirs = np.concatenate(
        [_sample_negative_indices(tuple(candidates.shape), 100, candidates.numpy())[row, step] for _ in range(200)]
    )
    others = [int(s) for s in steps.tolist() if s != step]
    for drawn in (ours, theirs):
        counts = np.array([np.sum(drawn == s) for s in others])
        expected = drawn.size / len(others)
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        # 99.9th percentile of chi-square with len(others) - 1 degrees of freedom, generously rounded up.
        assert chi_square < len(others) - 1 + 5 * np.sqrt(2 * (len(others) - 1)), chi_square
        assert counts.sum() == drawn.size


@both_backends
def test_a_row_with_one_candidate_points_at_itself(backend: Backend) -> None:
    candidates = torch.zeros((2, 10), dtype=torch.bool)
    candidates[0, 3] = True
    candidates[1, [2, 5]] = True
    negatives = dense_negatives(candidates, sample_negatives(candidates, 4, backend=backend), backend=backend)
    assert (negatives[0, 3] == 3).all()
    assert set(negatives[1, 2].tolist()) == {15} and set(negatives[1, 5].tolist()) == {12}


@both_backends
def test_compact_negatives_follow_the_candidates_in_row_major_order(backend: Backend) -> None:
    candidates = _candidates()
    compact = sample_negatives(candidates, 7, torch.Generator().manual_seed(3), backend=backend)
    rows, steps = candidates.nonzero(as_tuple=True)
    frames = candidates.shape[1]
    assert compact.shape == (len(rows), 7) and compact.dtype == torch.int32
    assert (torch.div(compact, frames, rounding_mode="floor") == rows[:, None]).all()
    assert (compact != (rows * frames + steps)[:, None]).all()
    assert torch.equal(dense_negatives(candidates, compact, backend=backend)[rows, steps], compact)


@both_backends
def test_the_same_seed_gives_the_same_masks_and_negatives(backend: Backend) -> None:
    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        mask = span_mask(LENGTHS, FRAMES, 0.65, 10, 2, generator, backend=backend)
        return mask, sample_negatives(mask, 100, generator, backend=backend)

    (mask, negatives), (mask_again, negatives_again), (other_mask, _) = draw(5), draw(5), draw(6)
    assert torch.equal(mask, mask_again) and torch.equal(negatives, negatives_again)
    assert not torch.equal(mask, other_mask)


@both_backends
def test_draws_of_different_candidates_are_independent(backend: Backend) -> None:
    # Several draws are cut from each random number (for 749 frames, 4 of them, going to 4 of these 12
    # candidates): every pair of candidates' draws must look independent and uniform.
    candidates = torch.zeros((1, 749), dtype=torch.bool)
    candidates[0, : 12 * 60 : 60] = True
    negatives = sample_negatives(candidates, 20_000, torch.Generator().manual_seed(4), backend=backend).long()
    ranks = torch.div(negatives, 60, rounding_mode="floor")  # each candidate's rank among the 12
    cells = 11 * 11
    for a in range(12):
        for b in range(a + 1, 12):
            # Rank among the other 11: skip the candidate's own rank.
            first, second = ranks[a] - (ranks[a] > a).long(), ranks[b] - (ranks[b] > b).long()
            counts = torch.bincount(first * 11 + second, minlength=cells).double()
            expected = negatives.shape[1] / cells
            chi_square = float(((counts - expected) ** 2 / expected).sum())
            assert chi_square < cells - 1 + 6 * np.sqrt(2 * (cells - 1)), (a, b, chi_square)


def test_feature_lengths_match_the_model() -> None:
    config = Wav2Vec2Config()
    model = Wav2Vec2ForPreTraining(
        Wav2Vec2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=(8,) * 7
        )
    )
    samples = torch.tensor([400, 401, 16_000, 250_000, 123_457])
    expected = model._get_feat_extract_output_lengths(samples)
    assert torch.equal(feature_lengths(samples, config.conv_kernel, config.conv_stride), expected)


@both_backends
def test_successive_draws_for_one_candidate_are_independent(backend: Backend) -> None:
    # The compiled kernel cuts four draws from each 64-bit random number, for one candidate's successive
    # negatives: each pair of successive negatives must look independent and uniform.
    rows = 2_000
    candidates = torch.zeros((rows, 749), dtype=torch.bool)
    candidates[:, : 12 * 60 : 60] = True
    negatives = sample_negatives(candidates, 8, torch.Generator().manual_seed(5), backend=backend).long()
    draws = torch.div(negatives % 749, 60, rounding_mode="floor")  # rank among the row's 12
    own = torch.arange(12).repeat(rows)[:, None]
    ranks = draws - (draws > own).long()  # rank among the other 11
    cells = 11 * 11
    for first in range(7):
        counts = torch.bincount(ranks[:, first] * 11 + ranks[:, first + 1], minlength=cells).double()
        expected = ranks.shape[0] / cells
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        assert chi_square < cells - 1 + 6 * np.sqrt(2 * (cells - 1)), (first, chi_square)


@both_backends
def test_rows_with_more_candidates_than_paired_draws_allow_stay_uniform(backend: Backend) -> None:
    # Past 1,025 candidates in a row the kernel takes one draw per 32 bits: still never the positive,
    # still in the row, still uniform.
    candidates = torch.zeros((2, 3000), dtype=torch.bool)
    candidates[0, :2000] = True
    candidates[1, 5] = candidates[1, 9] = True
    negatives = sample_negatives(candidates, 200, torch.Generator().manual_seed(7), backend=backend).long()
    rows, steps = candidates.nonzero(as_tuple=True)
    assert (negatives != (rows * 3000 + steps)[:, None]).all()
    assert (torch.div(negatives, 3000, rounding_mode="floor") == rows[:, None]).all()
    counts = torch.bincount(negatives[:2000].flatten(), minlength=2000).double()
    expected = 2000 * 200 / 2000
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 1999 + 5 * np.sqrt(2 * 1999), chi_square
