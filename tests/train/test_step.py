"""One training step: the loss and gradient are the seed example's, normalized over the whole step's masked frames."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from tests.data.shard_folders import write_shard_folder
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig
from w2v.run.schedule import lr_factor
from w2v.run.seeds import seed_for
from w2v.ssl.objective import gumbel_temperature, pretraining_targets
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model
from w2v.train.step import train_step

LENGTHS = [int(x) for x in np.random.default_rng(1).integers(16_000, 40_000, 40)]
MASKING = MaskingConfig(num_negatives=10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> ShardCorpus:
    return ShardCorpus(write_shard_folder(tmp_path_factory.mktemp("step"), LENGTHS))


def _batches(corpus: ShardCorpus) -> Iterator:
    config = BatchConfig(max_batch_seconds=6.0, max_sample_seconds=2.0)
    return iter(make_loader([corpus], config, seed=4, loader=LoaderConfig(num_workers=0)))


@pytest.mark.parametrize("accumulation", [1, 3])
def test_the_update_is_the_gradient_of_the_summed_loss_over_all_masked_frames(
    corpus: ShardCorpus, accumulation: int
) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), MASKING)
    reference = copy.deepcopy(model)
    # The seed's formula by hand: sum the model's losses, divide by the masked count of the whole step.
    total_loss, masked = torch.zeros(()), 0
    reference.train()
    batches = _batches(corpus)
    for _ in range(accumulation):
        batch = next(batches)
        generator = torch.Generator().manual_seed(seed_for(7, batch.position, 1))
        targets = pretraining_targets(batch.num_samples, batch.input_values.shape[1], reference.config, generator)
        torch.manual_seed(seed_for(7, batch.position, 2))
        outputs = reference(
            batch.input_values,
            attention_mask=batch.attention_mask,
            mask_time_indices=targets.mask_time_indices,
            sampled_negative_indices=targets.sampled_negative_indices,
        )
        total_loss = total_loss + outputs.loss
        masked += int(targets.masked)
    (total_loss / masked).backward()
    expected_gradients = [p.grad.clone() for p in reference.parameters()]

    accelerator = Accelerator(cpu=True)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    result = train_step(
        accelerator,
        model,
        optimizer,
        scheduler,
        _batches(corpus),
        accumulation=accumulation,
        max_grad_norm=None,
        seed=7,
    )
    assert result.loss == pytest.approx(float(total_loss.detach()) / masked, rel=1e-5)
    assert 0.3 < result.masked_share < 0.8
    for old, new, gradient in zip(before, model.parameters(), expected_gradients, strict=True):
        # old - new rounds at the weights' scale (~1e-7): compare at that precision.
        torch.testing.assert_close(old - new.detach(), gradient, rtol=1e-4, atol=1e-6)


def test_a_non_finite_loss_skips_the_update_and_says_so(corpus: ShardCorpus) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), MASKING)
    with torch.no_grad():
        model.project_q.weight.fill_(float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    result = train_step(
        Accelerator(cpu=True), model, optimizer, scheduler, _batches(corpus), accumulation=1, max_grad_norm=1.0, seed=0
    )
    assert result.skipped
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new.detach()) or torch.isnan(old).all()


def test_gumbel_temperature_and_learning_rate_follow_their_schedules() -> None:
    assert gumbel_temperature(0, 2.0, 0.5, 0.999995) == 2.0
    assert gumbel_temperature(100_000, 2.0, 0.5, 0.999995) == pytest.approx(2.0 * 0.999995**100_000)
    assert gumbel_temperature(10**7, 2.0, 0.5, 0.999995) == 0.5
    assert [lr_factor(s, 4, 12, "linear") for s in (0, 3, 4, 8, 12)] == [0.25, 1.0, 1.0, 0.5, 0.0]
    assert lr_factor(8, 4, 12, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 4, 12, "constant") == 1.0


def test_seeds_for_different_uses_and_positions_differ() -> None:
    seeds = {seed_for(0, position, use) for position in range(100) for use in (1, 2)}
    assert len(seeds) == 200
    assert seed_for(3, 5, 1) == seed_for(3, 5, 1)


def test_the_loss_is_finite_for_a_batch_of_one_short_row(tmp_path: Path) -> None:
    corpus = ShardCorpus(write_shard_folder(tmp_path / "one", [8000]))
    model = build_model(ModelConfig(preset="tiny"), MASKING)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    result = train_step(
        Accelerator(cpu=True), model, optimizer, scheduler, _batches(corpus), accumulation=1, max_grad_norm=1.0, seed=0
    )
    assert np.isfinite(result.loss) and not result.skipped


def test_the_base_presets_first_update_has_finite_gradients(corpus: ShardCorpus) -> None:
    # transformers 5's xlogy perplexity has NaN gradients where a codevector's marginal is exactly 0, which
    # the base preset's softmax gives at once: every gradient was NaN and no base run could start.
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

    from w2v.ssl.objective import pretraining_objective

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="base", overrides={"num_hidden_layers": 1}), MASKING)
    model.train()
    batch = next(iter(make_loader([corpus], BatchConfig(max_batch_seconds=12.0), seed=0, loader=LoaderConfig(0))))
    targets = pretraining_targets(batch.num_samples, batch.input_values.shape[1], model.config, None)
    outputs = model(
        batch.input_values,
        mask_time_indices=targets.mask_time_indices,
        sampled_negative_indices=targets.sampled_negative_indices.long(),
    )
    pretraining_objective(outputs, targets, model.config).loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert torch.isfinite(norm) and norm > 0
    # Some codevectors do have a marginal of exactly 0 here (what made transformers' gradient NaN), and the
    # perplexity is the same value transformers computes.
    with torch.no_grad():
        hidden = model.wav2vec2(batch.input_values).extract_features
        logits = model.quantizer.weight_proj(model.dropout_features(hidden))
        probs = logits.view(-1, model.config.num_codevector_groups, model.config.num_codevectors_per_group).softmax(-1)
        mask = targets.mask_time_indices
    assert (probs[mask.flatten()].mean(dim=0) == 0).any()
    ours = model.quantizer._compute_perplexity(probs, mask)
    assert torch.allclose(ours, Wav2Vec2GumbelVectorQuantizer._compute_perplexity(probs, mask), rtol=1e-5)
