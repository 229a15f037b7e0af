"""A fine-tuned model's metrics on held-out utterances: WER/CER (CTC), accuracy and macro-F1 (classification),
and the equal error rate of verification trials (speaker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from w2v.data.collate import collate
from w2v.data.plan import plan_batches
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.metrics import classification_scores, equal_error_rate, error_rates
from w2v.finetune.task import Labelled, TaskData, batch_targets

EVAL_SALT = 991


@torch.no_grad()
def evaluate_task(accelerator: Accelerator, model: Any, data: TaskData, config: FinetuneConfig) -> dict[str, float]:
    """The task's metrics over every held-out utterance (rank 0 scores what all ranks gathered), as val_*."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    seen = _Seen()
    work = [
        (s, b) for s in data.valid for b in plan_batches(s.corpus.num_samples, config.batch, config.seed, EVAL_SALT)
    ]
    work = work[: config.max_eval_batches] if config.max_eval_batches is not None else work
    for position, (labelled, indices) in enumerate(work):
        if position % accelerator.num_processes == accelerator.process_index:
            batch = collate(labelled.corpus, indices, config.batch, np.random.default_rng([config.seed, position]))
            seen.add(unwrapped, batch.to(accelerator.device), labelled, data, config.task)
    if accelerator.num_processes > 1:
        parts = gather_object([seen])
        seen = parts[0]
        for part in parts[1:]:
            seen.extend(part)
    return seen.scores(config)


class _Seen:
    """What evaluation saw: references and hypotheses (CTC), true and predicted classes, losses, embeddings."""

    def __init__(self) -> None:
        self.references: list[str] = []
        self.hypotheses: list[str] = []
        self.truth: list[int] = []
        self.predicted: list[int] = []
        self.losses: list[float] = []
        self.embeddings: list[list[float]] = []

    def add(self, model: Any, batch: Any, labelled: Labelled, data: TaskData, task: str) -> None:
        labels = batch_targets(batch, labelled, task, batch.input_values.device)
        speaker = task == "speaker"
        outputs = model(batch.input_values, attention_mask=batch.attention_mask, labels=labels,
                        output_hidden_states=speaker)  # fmt: skip
        self.losses.append(float(outputs.loss))
        if speaker:
            self.embeddings += pooled(model, outputs.hidden_states[-1], batch.attention_mask).cpu().tolist()
        if task == "ctc":
            assert data.tokenizer is not None
            ids = outputs.logits.argmax(dim=-1).cpu().numpy()
            self.hypotheses += [h.lower() for h in data.tokenizer.batch_decode(ids)]
            self.references += [labelled.texts[i].lower() for i in batch.indices]
        else:
            self.predicted += outputs.logits.argmax(dim=-1).cpu().tolist()
            self.truth += labels.cpu().tolist()

    def extend(self, other: _Seen) -> None:
        for name, values in vars(other).items():
            getattr(self, name).extend(values)

    def scores(self, config: FinetuneConfig) -> dict[str, float]:
        result = {"val_loss": float(np.mean(self.losses)) if self.losses else float("nan")}
        if config.task == "ctc":
            result.update({f"val_{k}": v for k, v in error_rates(self.references, self.hypotheses).items()})
        else:
            scores = classification_scores(np.array(self.truth), np.array(self.predicted))
            result.update({f"val_{k}": v for k, v in scores.items()})
        if config.task == "speaker":
            same, cosine = verification_trials(np.array(self.embeddings), np.array(self.truth), config.seed)
            result["val_eer"] = equal_error_rate(same, cosine)
            result["val_trials"] = float(same.size)
        result["val_utterances"] = float(len(self.references) if config.task == "ctc" else len(self.truth))
        return result


def pooled(model: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Each utterance's frames averaged (padding left out): its embedding for speaker verification."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    frames = model._get_feature_vector_attention_mask(hidden.shape[1], attention_mask).to(hidden.dtype)
    return (hidden * frames[:, :, None]).sum(dim=1) / frames.sum(dim=1, keepdim=True).clamp(min=1)


def verification_trials(
    embeddings: np.ndarray, speakers: np.ndarray, seed: int, max_trials: int = 20_000
) -> tuple[np.ndarray, np.ndarray]:
    """Trial pairs of held-out utterances (all of them, or `max_trials` drawn with `seed`): whether both are
    the same speaker, and the cosine of their embeddings."""
    count = len(speakers)
    first, second = np.triu_indices(count, k=1)
    if first.size > max_trials:
        chosen = np.random.default_rng(seed).choice(first.size, max_trials, replace=False)
        first, second = first[chosen], second[chosen]
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    cosine = np.einsum("ij,ij->i", unit[first], unit[second]) if first.size else np.zeros(0)
    return speakers[first] == speakers[second], cosine


def read_label_names(model_dir: Path) -> dict[int, str]:
    """A fine-tuned classifier's class names by id, from its config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {int(k): v for k, v in config.get("id2label", {}).items()}
