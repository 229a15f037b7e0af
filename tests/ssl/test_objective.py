"""Our pretraining objective equals Wav2Vec2ForPreTraining's own loss, value and gradient, on the same batch."""

from __future__ import annotations

import copy

import pytest
import torch

from w2v.ssl.objective import pretraining_objective, pretraining_targets
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_objective_equals_the_models_loss_and_gradient(seed: int) -> None:
    torch.manual_seed(seed)
    ours = build_model(ModelConfig(preset="tiny"), MaskingConfig(num_negatives=50))
    theirs = copy.deepcopy(ours)
    ours.train()
    theirs.train()
    audio = torch.randn(3, 40_000)
    lengths = torch.tensor([40_000, 31_000, 17_000])
    audio[1, 31_000:] = 0
    audio[2, 17_000:] = 0
    attention = (torch.arange(40_000)[None, :] < lengths[:, None]).long()
    targets = pretraining_targets(lengths, 40_000, ours.config, torch.Generator().manual_seed(seed))

    torch.manual_seed(100 + seed)
    expected = theirs(
        audio,
        attention_mask=attention,
        mask_time_indices=targets.mask_time_indices,
        sampled_negative_indices=targets.sampled_negative_indices,
    )
    expected.loss.backward()
    torch.manual_seed(100 + seed)
    outputs = ours(audio, attention_mask=attention, mask_time_indices=targets.mask_time_indices)
    objective = pretraining_objective(outputs, targets, ours.config)
    objective.loss.backward()

    assert float(objective.loss.detach()) == pytest.approx(float(expected.loss.detach()), rel=1e-5)
    assert float(objective.contrastive) == pytest.approx(float(expected.contrastive_loss.detach()), rel=1e-5)
    assert float(objective.diversity) == pytest.approx(float(expected.diversity_loss.detach()), rel=1e-5)
    assert int(objective.masked) == int(targets.mask_time_indices.sum())
    assert 0 <= int(objective.correct) <= int(objective.masked)
    for (name, mine), theirs_parameter in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        if theirs_parameter.grad is None:
            assert mine.grad is None or float(mine.grad.abs().max()) == 0.0, name
            continue
        torch.testing.assert_close(mine.grad, theirs_parameter.grad, rtol=1e-4, atol=1e-5, msg=name)
