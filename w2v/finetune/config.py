"""The configuration of a fine-tuning run: per-task defaults from the design document's table, overridable.

| task     | lr   | epochs | frozen transformer layers | label column |
|----------|------|--------|---------------------------|--------------|
| ctc      | 1e-4 | 5      | 1/3                       | text         |
| classify | 5e-5 | 10     | 1/2                       | label        |
| speaker  | 2e-4 | 3      | all (only the head learns)| speaker      |

Batches are planned by duration like pretraining's (the table's batch sizes of 16–128 utterances become a
duration budget), padded, with SpecAugment-style time and channel masking in the model during training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from w2v.data.plan import BatchConfig
from w2v.errors import W2VError
from w2v.run.config import StepGuards
from w2v.train.config import apply_overrides, build_config

TASKS = ("ctc", "classify", "speaker")
FINETUNE_BATCH: dict[str, Any] = {"max_batch_seconds": 120.0, "mode": "pad", "max_sample_seconds": 60.0}
LABEL_COLUMNS = {"ctc": "text", "classify": "label", "speaker": "speaker"}


@dataclass(frozen=True)
class FreezeConfig:
    """What does not learn: the convolutional feature encoder, the first `layers` transformer layers (a
    fraction of them if below 1, else a count), or everything but the head (`head_only`)."""

    feature_encoder: bool = True
    layers: float = 0.0
    head_only: bool = False


@dataclass(frozen=True)
class TriStageConfig:
    """Learning rate: warm up from `initial_scale`·lr, hold lr, then decay exponentially to `final_scale`·lr;
    the stages take these shares of the run (fairseq's tri-stage schedule for wav2vec 2.0 fine-tuning)."""

    warmup_share: float = 0.1
    hold_share: float = 0.4
    decay_share: float = 0.5
    initial_scale: float = 0.01
    final_scale: float = 0.05


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Masks applied to the feature encoder's output while fine-tuning (wav2vec 2.0's fine-tuning values)."""

    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 64


@dataclass(frozen=True)
class FinetuneConfig:
    task: str = "ctc"
    seed: int = 0
    # Start from the pretrained folder's architecture with fresh weights (drawn from `seed`) instead of its
    # weights: the anchor that shows what pretraining bought, on the same data, budget and head.
    random_init: bool = False
    lr: float = 1e-4
    epochs: float = 5.0
    max_steps: int | None = None  # overrides epochs when given
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int | None = None  # None: at the end of every epoch
    checkpoint_every: int | None = None  # None: with every evaluation
    keep_last: int = 2
    max_eval_batches: int | None = None
    # Whole utterances (no crop: it would cut labels off), padded; prepare keeps them under 20 s by default.
    batch: BatchConfig = field(default_factory=lambda: BatchConfig(**FINETUNE_BATCH))
    freeze: FreezeConfig = field(default_factory=lambda: FreezeConfig(layers=1 / 3))
    schedule: TriStageConfig = field(default_factory=TriStageConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    # Non-finite updates skipped; after max_consecutive_skips in a row, back to the last checkpoint.
    guards: StepGuards = field(default_factory=StepGuards)
    # Any Wav2Vec2Config field for the fine-tuned model (e.g. {"final_dropout": 0.1, "layerdrop": 0.05}).
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise W2VError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if not self.lr > 0 or not self.epochs > 0:
            raise W2VError("fine-tuning needs a positive lr and number of epochs")
        if self.batch.mode != "pad":
            raise W2VError("fine-tuning reads whole utterances: batch.mode must be pad (a crop loses labels)")

    @property
    def label_column(self) -> str:
        return LABEL_COLUMNS[self.task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_task(cls, task: str, values: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Any:
        """The task's defaults, then `values` (a YAML mapping), then `--set key=value` overrides."""
        merged = apply_overrides({**TASK_DEFAULTS.get(task, {}), **(values or {}), "task": task}, overrides or [])
        # Fine-tuning's own batch defaults under whatever batch keys were given.
        merged["batch"] = {**FINETUNE_BATCH, **merged.get("batch", {})}
        return build_config(cls, merged, "")

    @classmethod
    def from_yaml(cls, task: str, path: Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise W2VError(f"{path}: cannot read the fine-tuning config ({error})") from error
        config: FinetuneConfig = cls.for_task(task, values, overrides)
        return config


TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "ctc": {"lr": 1e-4, "epochs": 5, "freeze": {"layers": 1 / 3}},
    "classify": {"lr": 5e-5, "epochs": 10, "freeze": {"layers": 0.5}},
    "speaker": {"lr": 2e-4, "epochs": 3, "freeze": {"head_only": True}},
}
