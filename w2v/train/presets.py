"""Model presets: Wav2Vec2Config for `tiny` (tests), `base` (~95M, fairseq BASE sizes) and `large` (~317M).

All use the layer-normalized feature encoder and pre-LN ("stable layer norm") transformer that the seed's
pretraining example requires (it refuses the group-norm variant), and SDPA attention.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

from w2v.errors import W2VError
from w2v.train.config import MaskingConfig, ModelConfig

_COMMON: dict[str, Any] = {
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
    "num_codevector_groups": 2,
    "num_codevectors_per_group": 320,
    "contrastive_logits_temperature": 0.1,
    "diversity_loss_weight": 0.1,
    "feat_quantizer_dropout": 0.0,
    "mask_feature_prob": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # ~0.1M parameters: learns (slowly) in a few hundred CPU steps
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "codevector_dim": 64,
        "proj_codevector_dim": 64,
        "num_codevectors_per_group": 40,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "codevector_dim": 256,
        "proj_codevector_dim": 256,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "layerdrop": 0.05,
    },
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "codevector_dim": 768,
        "proj_codevector_dim": 768,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "layerdrop": 0.1,
    },
}


def model_config(model: ModelConfig, masking: MaskingConfig) -> Wav2Vec2Config:
    """The Wav2Vec2Config of the run: the `init_from` model's, or the preset's with the run's masking and overrides."""
    if model.init_from is not None:
        loaded: Wav2Vec2Config = _from_pretrained(Wav2Vec2Config, model.init_from)
        return loaded
    if model.preset not in PRESETS:
        raise W2VError(f"model preset {model.preset!r}: expected one of {', '.join(PRESETS)}")
    values = {**_COMMON, **PRESETS[model.preset], **model.overrides}
    values.update(
        mask_time_prob=masking.mask_time_prob,
        mask_time_length=masking.mask_time_length,
        mask_time_min_masks=masking.mask_time_min_masks,
        num_negatives=masking.num_negatives,
    )
    return Wav2Vec2Config(**values)


def build_model(model: ModelConfig, masking: MaskingConfig) -> Wav2Vec2ForPreTraining:
    """A randomly initialized model of the preset, or the `init_from` checkpoint to continue from, ready to train."""
    if model.init_from is not None:
        built: Wav2Vec2ForPreTraining = _from_pretrained(Wav2Vec2ForPreTraining, model.init_from)
    else:
        built = Wav2Vec2ForPreTraining(model_config(model, masking))
    return trainable(built)


class FinitePerplexityQuantizer(Wav2Vec2GumbelVectorQuantizer):
    """transformers' Gumbel quantizer with the codevector perplexity as fairseq computes it.

    transformers 5 computes exp(-Σ p·log p) with `torch.xlogy(p, p)`, whose gradient is NaN wherever a
    codevector's marginal probability over the masked frames is exactly 0. The base and large presets' float32
    softmax gives such zeros from the first batch (their logits span hundreds), so every gradient was NaN and
    the guards stopped the run. fairseq's exp(-Σ p·log(p + 1e-7)) has the same value to 1e-6 and a finite
    gradient. Same parameters: checkpoints are unchanged.
    """

    @staticmethod
    def _compute_perplexity(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            keep = mask.flatten()[:, None, None].expand(probs.shape)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            marginal = probs.sum(dim=0) / mask.sum()
        else:
            marginal = probs.mean(dim=0)
        return torch.exp(-torch.sum(marginal * torch.log(marginal + 1e-7), dim=-1)).sum()


def trainable(model: Wav2Vec2ForPreTraining) -> Wav2Vec2ForPreTraining:
    """`model` with what training needs of it beyond transformers: a finite perplexity gradient, and an answer
    to Accelerate's FSDP2 asking for input embeddings (a speech model has none; the default raises)."""
    model.quantizer.__class__ = FinitePerplexityQuantizer
    model.get_input_embeddings = _no_input_embeddings  # type: ignore[method-assign,assignment]
    return model


def _no_input_embeddings() -> None:
    return None


def _from_pretrained(kind: Any, folder: str) -> Any:
    try:
        return kind.from_pretrained(folder)
    except OSError as error:
        raise W2VError(f"--init-from {folder}: not a transformers model folder ({error})") from error
