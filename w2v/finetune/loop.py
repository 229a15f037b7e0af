"""Fine-tuning, top to bottom: labels, model, freezing, then the pretraining loop's building blocks (batch
plan and stream, checkpoints, metrics log, resume) with the task's loss and evaluation.

Runs as one process or under `accelerate launch`. Utterances without a label are left out.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification

from w2v.data.collate import Batch, collate
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import open_corpora
from w2v.data.plan import plan_batches
from w2v.data.stream import StreamState
from w2v.errors import W2VError
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.freeze import apply_freeze
from w2v.finetune.labels import (
    build_tokenizer,
    class_ids,
    ctc_processor,
    encode_texts,
    normalize_text,
    read_column,
)
from w2v.finetune.metrics import classification_scores, equal_error_rate, error_rates
from w2v.train.checkpoint import TrainerState, load_checkpoint, resolve_resume, save_best, save_checkpoint
from w2v.train.metrics import MetricsLog
from w2v.train.schedule import tri_stage_factor

logger = logging.getLogger("w2v.finetune")
TOKENIZER = "tokenizer"
EVAL_SALT = 991


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    steps: int
    last_checkpoint: Path | None
    best: Path | None
    evaluation: dict[str, float]


@dataclass(frozen=True)
class _Labelled:
    """A corpus of labelled utterances and their targets (token ids for CTC, class ids otherwise)."""

    corpus: ShardCorpus
    texts: list[str]  # CTC references ("" otherwise)
    targets: list[Any]


def finetune(
    config: FinetuneConfig,
    pretrained: Path,
    train: Sequence[str],
    valid: Sequence[str],
    run_dir: Path,
    *,
    resume: str = "auto",
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    loader: LoaderConfig | None = None,
    verify_shards: bool = True,
) -> FinetuneResult:
    run_dir = Path(run_dir)
    transformers.utils.logging.disable_progress_bar()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    cache = cache_dir or run_dir / "shard-cache"
    with accelerator.main_process_first():
        train_corpora, _ = open_corpora(list(train), cache, storage_options, verify=verify_shards)
        valid_corpora, _ = open_corpora(list(valid), cache, storage_options, verify=verify_shards)
    sample_rate = config.batch.sample_rate

    # --- labels ------------------------------------------------------------------------------------------
    column = config.label_column
    raw_train = [read_column(c, column) for c in train_corpora]
    tokenizer: Wav2Vec2CTCTokenizer | None = None
    classes: list[str] = []
    if config.task == "ctc":
        tokenizer_dir = run_dir / TOKENIZER
        if (tokenizer_dir / "vocab.json").is_file():  # a resumed run keeps its vocabulary
            tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(tokenizer_dir))
        else:
            texts = [t for values in raw_train for t in values if t]
            if accelerator.is_main_process:
                build_tokenizer(texts, tokenizer_dir).save_pretrained(str(tokenizer_dir))
            accelerator.wait_for_everyone()
            tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        classes = sorted({v for values in raw_train for v in values if v is not None})
        if len(classes) < 2:
            raise W2VError(f"the training shards' {column!r} column has {len(classes)} distinct values; need 2+")
    train_sets = [
        _labelled(c, values, config, tokenizer, classes) for c, values in zip(train_corpora, raw_train, strict=True)
    ]
    valid_sets = [_labelled(c, read_column(c, column), config, tokenizer, classes) for c in valid_corpora]
    if not any(len(s.corpus) for s in train_sets):
        raise W2VError(f"no training utterance has a {column!r} value; prepare the shards with --metadata")

    # --- model -------------------------------------------------------------------------------------------
    set_seed(config.seed)
    model = _task_model(config, pretrained, tokenizer, classes)
    frozen = apply_freeze(model, config.freeze.feature_encoder, config.freeze.layers, config.freeze.head_only)
    logger.info(
        "%s: %d transformer layers frozen; %d parameters learn, %d frozen",
        config.task,
        frozen.layers,
        frozen.trainable_parameters,
        frozen.frozen_parameters,
    )
    steps_per_epoch = sum(len(plan_batches(s.corpus.num_samples, config.batch, config.seed, 0)) for s in train_sets)
    steps_per_epoch = max(1, steps_per_epoch // (config.gradient_accumulation * accelerator.num_processes))
    max_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint_every or eval_every
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = config.schedule
    factor = functools.partial(
        tri_stage_factor,
        max_steps=max_steps,
        warmup_share=schedule.warmup_share,
        hold_share=schedule.hold_share,
        initial_scale=schedule.initial_scale,
        final_scale=schedule.final_scale,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def save_extra(folder: Path) -> None:
        if tokenizer is not None:
            ctc_processor(tokenizer, sample_rate).save_pretrained(str(folder))

    # --- resume ------------------------------------------------------------------------------------------
    step, loader_state = 0, None
    tracking: dict[str, Any] = {"best": None}
    evaluation: dict[str, float] = {}  # the newest, also when a finished run is resumed and trains no more
    checkpoint = resolve_resume(run_dir, resume)
    if checkpoint is not None:
        restored = load_checkpoint(accelerator, checkpoint)
        step, loader_state = restored.step, StreamState.from_dict(restored.loader_state)
        tracking.update(restored.tracking)
        evaluation = dict(restored.metrics)
    metrics = MetricsLog(run_dir, step if checkpoint is not None else None) if accelerator.is_main_process else None
    batches: Iterator[Batch] = iter(
        make_loader(
            [s.corpus for s in train_sets],
            config.batch,
            config.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            state=loader_state,
            loader=loader or LoaderConfig(),
        )
    )

    # --- loop --------------------------------------------------------------------------------------------
    last_checkpoint, best_dir = checkpoint, None
    losses: list[float] = []
    higher_is_better = config.task != "ctc"
    while step < max_steps:
        model.train()
        state_after: dict[str, Any] = {}
        for micro in range(config.gradient_accumulation):
            batch = next(batches)
            state_after = batch.state_after
            with accelerator.no_sync(model) if micro < config.gradient_accumulation - 1 else _nothing():
                loss = _loss(model, batch.to(accelerator.device), train_sets[batch.corpus], config, tokenizer)
                accelerator.backward(loss / config.gradient_accumulation)
            losses.append(float(loss.detach()))
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if metrics is not None and (step % config.log_every == 0 or step == max_steps):
            metrics.write({"step": step, "loss": float(np.mean(losses)), "lr": float(scheduler.get_last_lr()[0])})
            losses = []
        if step % eval_every == 0 or step == max_steps:
            evaluation = _evaluate(accelerator, model, valid_sets, config, tokenizer)
            key = "val_accuracy" if higher_is_better else "val_wer"
            score = evaluation.get(key, float("nan"))
            best = tracking["best"]
            improved = np.isfinite(score) and (best is None or (score > best if higher_is_better else score < best))
            state = TrainerState(step, state_after, config.to_dict(), evaluation, dict(tracking))
            if improved:
                tracking.update(best=score, best_step=step)
                state = TrainerState(step, state_after, config.to_dict(), evaluation, dict(tracking))
                best_dir = save_best(accelerator, model, run_dir, state, sample_rate, save_extra)
            if metrics is not None:
                metrics.write({"step": step, **evaluation})
        if step % checkpoint_every == 0 or step == max_steps:
            state = TrainerState(step, state_after, config.to_dict(), evaluation, dict(tracking))
            last_checkpoint = save_checkpoint(
                accelerator, model, run_dir, state, sample_rate, config.keep_last, save_extra
            )
    if metrics is not None:
        metrics.close()
    accelerator.wait_for_everyone()
    best_path = run_dir / "best"
    return FinetuneResult(run_dir, step, last_checkpoint, best_dir or (best_path if best_path.is_dir() else None),
                          evaluation)  # fmt: skip


def _labelled(
    corpus: ShardCorpus,
    values: list[str | None],
    config: FinetuneConfig,
    tokenizer: Wav2Vec2CTCTokenizer | None,
    classes: list[str],
) -> _Labelled:
    if config.task == "ctc":
        keep = [k for k, v in enumerate(values) if v and normalize_text(v)]
        texts = [str(values[k]) for k in keep]
        assert tokenizer is not None
        targets: list[Any] = encode_texts(tokenizer, texts)
    else:
        ids = class_ids(values, classes)
        keep = [k for k in range(len(values)) if ids[k] >= 0]
        texts, targets = ["" for _ in keep], [int(ids[k]) for k in keep]
    return _Labelled(corpus.subset(np.array(keep, dtype=np.int64)), texts, targets)


def _task_model(
    config: FinetuneConfig, pretrained: Path, tokenizer: Wav2Vec2CTCTokenizer | None, classes: list[str]
) -> Any:
    spec = config.specaugment
    common = {
        "mask_time_prob": spec.mask_time_prob,
        "mask_time_length": spec.mask_time_length,
        "mask_feature_prob": spec.mask_feature_prob,
        "mask_feature_length": spec.mask_feature_length,
        **config.model_overrides,
    }
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # its load report lists the heads it adds: expected
    try:
        if config.task == "ctc":
            assert tokenizer is not None
            return Wav2Vec2ForCTC.from_pretrained(
                pretrained,
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                ctc_loss_reduction="mean",
                ctc_zero_infinity=True,
                **common,
            )
        return Wav2Vec2ForSequenceClassification.from_pretrained(
            pretrained,
            num_labels=len(classes),
            label2id={c: k for k, c in enumerate(classes)},
            id2label=dict(enumerate(classes)),
            **common,
        )
    except OSError as error:
        raise W2VError(f"{pretrained}: not a model folder ({error}); pass CHECKPOINT/model") from error
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def _targets(batch: Batch, labelled: _Labelled, task: str, device: torch.device) -> torch.Tensor:
    if task == "ctc":
        sequences = [labelled.targets[i] for i in batch.indices]
        width = max(len(s) for s in sequences)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        for k, sequence in enumerate(sequences):
            labels[k, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return labels.to(device)
    return torch.tensor([labelled.targets[i] for i in batch.indices], dtype=torch.long, device=device)


def _loss(model: Any, batch: Batch, labelled: _Labelled, config: FinetuneConfig, tokenizer: Any) -> torch.Tensor:
    labels = _targets(batch, labelled, config.task, batch.input_values.device)
    outputs = model(batch.input_values, attention_mask=batch.attention_mask, labels=labels)
    loss: torch.Tensor = outputs.loss
    return loss


@torch.no_grad()
def _evaluate(
    accelerator: Accelerator,
    model: Any,
    sets: list[_Labelled],
    config: FinetuneConfig,
    tokenizer: Wav2Vec2CTCTokenizer | None,
) -> dict[str, float]:
    """The task's metrics over every held-out utterance (rank 0 scores what all ranks gathered)."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    references: list[str] = []
    hypotheses: list[str] = []
    truth: list[int] = []
    predicted: list[int] = []
    losses: list[float] = []
    embeddings: list[list[float]] = []
    work = [(s, b) for s in sets for b in plan_batches(s.corpus.num_samples, config.batch, config.seed, EVAL_SALT)]
    work = work[: config.max_eval_batches] if config.max_eval_batches is not None else work
    for position, (labelled, indices) in enumerate(work):
        if position % accelerator.num_processes != accelerator.process_index:
            continue
        batch = collate(labelled.corpus, indices, config.batch, np.random.default_rng([config.seed, position]))
        batch = batch.to(accelerator.device)
        labels = _targets(batch, labelled, config.task, accelerator.device)
        speaker = config.task == "speaker"
        outputs = unwrapped(
            batch.input_values, attention_mask=batch.attention_mask, labels=labels, output_hidden_states=speaker
        )
        losses.append(float(outputs.loss))
        if speaker:
            embeddings += _pooled(unwrapped, outputs.hidden_states[-1], batch.attention_mask).cpu().tolist()
        if config.task == "ctc":
            assert tokenizer is not None
            ids = outputs.logits.argmax(dim=-1).cpu().numpy()
            hypotheses += [h.lower() for h in tokenizer.batch_decode(ids)]
            references += [labelled.texts[i].lower() for i in batch.indices]
        else:
            predicted += outputs.logits.argmax(dim=-1).cpu().tolist()
            truth += labels.cpu().tolist()
    gathered = gather_object([(references, hypotheses, truth, predicted, losses, embeddings)])
    references, hypotheses, truth, predicted, losses, embeddings = ([], [], [], [], [], [])
    for part in gathered:
        references += part[0]
        hypotheses += part[1]
        truth += part[2]
        predicted += part[3]
        losses += part[4]
        embeddings += part[5]
    result: dict[str, float] = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    if config.task == "ctc":
        result.update({f"val_{k}": v for k, v in error_rates(references, hypotheses).items()})
    else:
        scores = classification_scores(np.array(truth), np.array(predicted))
        result.update({f"val_{k}": v for k, v in scores.items()})
    if config.task == "speaker":
        same, cosine = verification_trials(np.array(embeddings), np.array(truth), config.seed)
        result["val_eer"] = equal_error_rate(same, cosine)
        result["val_trials"] = float(same.size)
    result["val_utterances"] = float(len(references) if config.task == "ctc" else len(truth))
    return result


def _pooled(model: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
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


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def read_label_names(model_dir: Path) -> dict[int, str]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {int(k): v for k, v in config.get("id2label", {}).items()}
