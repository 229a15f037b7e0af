"""Which parameters learn while fine-tuning: the feature encoder frozen by default, the first K transformer
layers if asked (a fraction of them or a count), or everything but the task head."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from w2v.errors import W2VError


@dataclass(frozen=True)
class Frozen:
    layers: int  # transformer layers frozen
    frozen_parameters: int
    trainable_parameters: int


def layers_to_freeze(layers: float, total: int) -> int:
    """`layers` below 1 is a share of `total` (rounded down), otherwise a count."""
    if layers < 0:
        raise W2VError(f"--freeze-layers {layers}: must not be negative")
    count = math.floor(layers * total + 1e-9) if layers < 1 else int(layers)
    if count > total:
        raise W2VError(f"--freeze-layers {layers}: the model has only {total} transformer layers")
    return count


def apply_freeze(model: Any, feature_encoder: bool, layers: float, head_only: bool) -> Frozen:
    """Set requires_grad on `model` (a Wav2Vec2For… task model) and say what was frozen."""
    backbone: Any = model.wav2vec2
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    encoder_layers = backbone.encoder.layers
    count = len(encoder_layers)
    if head_only:
        # Also tell transformers the feature encoder is frozen, or it keeps gradients on the input and every
        # backward runs through the whole frozen backbone (~3.7x slower per step).
        backbone.freeze_feature_encoder()
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
    else:
        if feature_encoder:
            backbone.freeze_feature_encoder()
        count = layers_to_freeze(layers, len(encoder_layers))
        for layer in list(encoder_layers)[:count]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Frozen(count, frozen, trainable)
