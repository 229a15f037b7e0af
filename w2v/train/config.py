"""The configuration of a pretraining run: frozen dataclasses whose defaults are the recommended values.

Loaded from YAML (sections named like the fields: `batch:`, `masking:`, `optim:`, ...), saved next to every
checkpoint, overridden from the command line with dotted keys (`--set optim.lr=5e-4`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from w2v.data.plan import BatchConfig
from w2v.errors import W2VError
from w2v.run.config import StepGuards

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "base"  # tiny | base | large (w2v.train.presets)
    init_from: str | None = None  # a transformers model folder to continue pretraining from
    # Any Wav2Vec2Config field, over the preset (e.g. {"num_hidden_layers": 6}).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskingConfig:
    """Span masking and negatives (wav2vec 2.0 BASE values; the seed's table suggests 0.05–0.65 for prob)."""

    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    num_negatives: int = 100


@dataclass(frozen=True)
class GumbelConfig:
    """Codevector temperature: max(max_temperature · decay^step, min_temperature)."""

    max_temperature: float = 2.0
    min_temperature: float = 0.5
    decay: float = 0.999995


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup then decay (fairseq BASE: lr 5e-4, betas 0.9/0.98, eps 1e-6, wd 0.01, 32k warmup)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 32_000
    schedule: str = "linear"  # linear | cosine | constant, after warmup, to 0 at max_steps
    max_grad_norm: float | None = 10.0


@dataclass(frozen=True)
class GuardConfig(StepGuards):
    """When a run rolls back to its last checkpoint with a lower learning rate (the harness's step guards),
    and when pretraining's health warnings speak."""

    perplexity_floor_share: float = 0.1  # warn below this share of the codevectors in use
    mask_share_tolerance: float = 0.5  # warn when the masked share is this far (relative) from expected
    chance_margin: float = 0.01  # warn when the contrastive loss is within this share of chance, ln(K + 1)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    max_steps: int = 400_000
    gradient_accumulation: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16 (through Accelerate)
    gradient_checkpointing: bool = False
    compile: bool = False
    # Bitwise-reproducible runs (e.g. a resumed run equal to an uninterrupted one): torch's deterministic
    # kernels, at some cost in speed (the gather of negatives' backward is the one that differs here).
    deterministic: bool = False
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_last: int = 3
    max_hours: float | None = None
    # Validation on held-out recordings (chosen by a hash of their source, so a growing corpus keeps them).
    val_share: float = 0.01
    eval_every: int = 1_000
    max_val_batches: int | None = 200
    early_stopping_patience: int | None = None  # evaluations without a new best before stopping
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    gumbel: GumbelConfig = field(default_factory=GumbelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    guards: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if self.optim.schedule not in SCHEDULES:
            raise W2VError(f"optim.schedule {self.optim.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.mixed_precision not in PRECISIONS:
            raise W2VError(f"mixed_precision {self.mixed_precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not 0 <= self.val_share < 1:
            raise W2VError(f"val_share must be in [0, 1), got {self.val_share}")
        for name in ("max_steps", "gradient_accumulation", "log_every", "checkpoint_every", "keep_last", "eval_every"):
            if getattr(self, name) < 1:
                raise W2VError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return build_config(cls, values, "")

    @classmethod
    def from_yaml(cls, path: Path, overrides: list[str] | None = None) -> TrainConfig:
        path = resolve_config_path(path)
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise W2VError(f"{path}: cannot read the training config ({error})") from error
        if not isinstance(values, dict):
            raise W2VError(f"{path}: a training config is a mapping of sections, like `optim: {{lr: 5e-4}}`")
        return cls.from_dict(apply_overrides(values, overrides or []))


SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file as given, else one shipped in configs/ by name or path (`base`, `configs/tiny.yaml`), so
    deployments and scheduled runs find them whatever folder they start in."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    for candidate in (SHIPPED_CONFIGS / given.name, SHIPPED_CONFIGS / f"{given.name}.yaml"):
        if candidate.is_file() and given.parent in (Path("."), Path("configs")):
            return candidate
    return given


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a nested dict; returns a new dict."""
    result = _deep_copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise W2VError(f"--set {item}: expected KEY=VALUE, like optim.lr=5e-4")
        *path, last = key.split(".")
        target = result
        for part in path:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise W2VError(f"--set {item}: {part} is not a section")
        target[last] = yaml.safe_load(raw)
    return result


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def _coerce(annotation: str, value: Any, name: str) -> Any:
    """Numbers written as YAML strings: PyYAML reads `5e-4` (no dot) as text, a trap in every config."""
    if value is None or isinstance(value, bool):
        return value
    try:
        if "float" in annotation and isinstance(value, (int, str)):
            return float(value)
        if annotation.startswith("int") and isinstance(value, str):
            return int(value)
    except ValueError:
        raise W2VError(f"training config: {name} must be a number, got {value!r}") from None
    return value


def build_config(cls: Any, values: dict[str, Any], where: str) -> Any:
    """A (nested) frozen config dataclass from a mapping: unknown keys named, YAML's number strings read."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise W2VError(f"training config{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = build_config(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _coerce(str(known[name].type), value, f"{where}.{name}".lstrip("."))
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise W2VError(f"training config{where}: {error}") from error
