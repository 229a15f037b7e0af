"""Checkpoints: written whole into a temporary folder, then renamed; the last K kept; the newest found on resume.

RUN/checkpoints/step-00001000/
  model/          save_pretrained (safetensors) + preprocessor_config.json: loads with from_pretrained
  accelerate/     Accelerator.save_state: model, optimizer, scheduler, loss scaler, RNG states
  trainer.json    step, the loader's stream state, the run's config, the last metrics (written last)

The two folders' model.safetensors are byte for byte the same file when one process saved them: the second
becomes a hard link to the first, so a checkpoint holds its weights once on disk.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import Wav2Vec2FeatureExtractor

from w2v.atomic import fsync_dir, write_text_atomic
from w2v.errors import W2VError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
BEST = "best"
TRAINER_STATE = "trainer.json"


@dataclass(frozen=True)
class TrainerState:
    step: int
    loader_state: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    # The loop's own memory: best validation loss so far and evaluations since (early stopping).
    tracking: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def feature_extractor(sample_rate: int, attention_mask: bool) -> Wav2Vec2FeatureExtractor:
    """The preprocessing our loader applies, as a transformers feature extractor (zero mean, unit variance)."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=sample_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=attention_mask,
    )


def save_checkpoint(
    accelerator: Accelerator,
    model: Any,
    run_dir: Path,
    state: TrainerState,
    sample_rate: int,
    keep_last: int,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint (every rank takes part in saving the Accelerate state); returns its folder."""
    folder = run_dir / CHECKPOINTS
    final = folder / checkpoint_name(state.step)
    temporary = folder / f".tmp-{checkpoint_name(state.step)}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary / "accelerate"))
    weights = accelerator.get_state_dict(model)  # every rank: FSDP gathers the shards here
    if accelerator.is_main_process:
        _save_model(accelerator.unwrap_model(model), weights, temporary / "model", sample_rate)
        if save_extra is not None:  # e.g. a fine-tuned model's tokenizer, beside its weights
            save_extra(temporary / "model")
        share_identical_file(temporary / "model" / WEIGHTS, temporary / "accelerate" / WEIGHTS)
        write_text_atomic(temporary / TRAINER_STATE, state.to_json() + "\n")
        if final.exists():  # the same step saved again after a resume: the new one replaces it
            shutil.rmtree(final)
        os.replace(temporary, final)
        fsync_dir(folder)
        for old in stale_checkpoints(complete_checkpoints(run_dir), final, keep_last):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def stale_checkpoints(found: list[Path], saved: Path, keep_last: int) -> list[Path]:
    """Of `found` (oldest first), those to delete once `saved` is written: all but the last `keep_last` up
    to it, and every newer one (left by a history this run replaced: it started over or resumed from an
    older checkpoint; `--resume auto` must not go back to them)."""
    up_to = [path for path in found if path.name <= saved.name]
    return up_to[:-keep_last] + [path for path in found if path.name > saved.name]


def share_identical_file(original: Path, copy: Path) -> bool:
    """Make `copy` a hard link to `original` when both exist with the same bytes; whether it now is one."""
    try:
        if not (original.is_file() and copy.is_file()) or not filecmp.cmp(original, copy, shallow=False):
            return False
        link = copy.with_name(f".link-{copy.name}")
        link.unlink(missing_ok=True)
        os.link(original, link)
        os.replace(link, copy)
    except OSError as error:  # a file system without hard links: keep both copies
        logger.debug("%s and %s stay two copies: %s", original, copy, error)
        return False
    return True


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a temporary folder a crash left behind is not one)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from, or None: `auto` the newest complete one (None when there is none),
    `never` None, otherwise the folder given. Raises W2VError when that folder is not a complete checkpoint."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise W2VError(f"--resume {resume}: not a complete checkpoint (no {TRAINER_STATE}); try --resume auto")
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainerState:
    """Restore the Accelerate state (weights, optimizer, scheduler, scaler, RNG) and return the trainer state.
    Raises W2VError when the checkpoint's trainer.json cannot be read."""
    try:
        data = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError) as error:
        raise W2VError(f"{path}: unreadable {TRAINER_STATE} ({error}); resume from another checkpoint") from error
    accelerator.load_state(str(path / "accelerate"))
    return TrainerState(
        int(data["step"]),
        dict(data["loader_state"]),
        dict(data["config"]),
        dict(data["metrics"]),
        dict(data.get("tracking", {})),
    )


def save_best(
    accelerator: Accelerator,
    model: Any,
    run_dir: Path,
    state: TrainerState,
    sample_rate: int,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """RUN/best: the model with the lowest validation loss so far (a from_pretrained folder), replaced whole."""
    best = run_dir / BEST
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = run_dir / f".tmp-{BEST}"
        shutil.rmtree(temporary, ignore_errors=True)
        _save_model(accelerator.unwrap_model(model), weights, temporary / "model", sample_rate)
        if save_extra is not None:
            save_extra(temporary / "model")
        write_text_atomic(temporary / TRAINER_STATE, state.to_json() + "\n")
        previous = run_dir / f".old-{BEST}"
        shutil.rmtree(previous, ignore_errors=True)
        if best.exists():
            os.replace(best, previous)
        os.replace(temporary, best)
        shutil.rmtree(previous, ignore_errors=True)
        fsync_dir(run_dir)
    accelerator.wait_for_everyone()
    return best


def _save_model(model: Any, weights: dict[str, Any], folder: Path, sample_rate: int) -> None:
    """A from_pretrained folder: the weights (safetensors), the config, and the feature extractor's config."""
    model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
    feature_extractor(sample_rate, model.config.feat_extract_norm == "layer").save_pretrained(folder)
