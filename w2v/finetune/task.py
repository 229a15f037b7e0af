"""What a fine-tuning task learns from: labelled corpora, the task's model on the pretrained weights, and the
loss of a batch against its targets (token ids for CTC, a class id per utterance otherwise)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification

from w2v.data.collate import Batch
from w2v.data.corpus import ShardCorpus
from w2v.errors import W2VError
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.labels import build_tokenizer, class_ids, encode_texts, normalize_text, read_column

TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class Labelled:
    """A corpus of labelled utterances and their targets (token ids for CTC, class ids otherwise)."""

    corpus: ShardCorpus
    texts: list[str]  # CTC references ("" otherwise)
    targets: list[Any]


@dataclass(frozen=True)
class TaskData:
    train: list[Labelled]
    valid: list[Labelled]
    tokenizer: Wav2Vec2CTCTokenizer | None  # CTC's character vocabulary
    classes: list[str]  # the other tasks' class names, sorted


def label_corpora(
    config: FinetuneConfig,
    train: Sequence[ShardCorpus],
    valid: Sequence[ShardCorpus],
    run_dir: Path,
    accelerator: Accelerator,
) -> TaskData:
    """The corpora's utterances that have a label, with their targets. CTC's vocabulary is built from the
    training transcripts (once, in RUN/tokenizer: a resumed run keeps it). Raises W2VError when the label
    column is missing or (classification) has fewer than two values."""
    column = config.label_column
    raw_train = [read_column(c, column) for c in train]
    tokenizer: Wav2Vec2CTCTokenizer | None = None
    classes: list[str] = []
    if config.task == "ctc":
        folder = run_dir / TOKENIZER
        if not (folder / "vocab.json").is_file():
            texts = [t for values in raw_train for t in values if t]
            if accelerator.is_main_process:
                build_tokenizer(texts, folder).save_pretrained(str(folder))
            accelerator.wait_for_everyone()
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(folder))
    else:
        classes = sorted({v for values in raw_train for v in values if v is not None})
        if len(classes) < 2:
            raise W2VError(f"the training shards' {column!r} column has {len(classes)} distinct values; need 2+")
    train_sets = [_labelled(c, values, config, tokenizer, classes) for c, values in zip(train, raw_train, strict=True)]
    valid_sets = [_labelled(c, read_column(c, column), config, tokenizer, classes) for c in valid]
    if not any(len(s.corpus) for s in train_sets):
        raise W2VError(f"no training utterance has a {column!r} value; prepare the shards with --metadata")
    return TaskData(train_sets, valid_sets, tokenizer, classes)


def _labelled(
    corpus: ShardCorpus,
    values: list[str | None],
    config: FinetuneConfig,
    tokenizer: Wav2Vec2CTCTokenizer | None,
    classes: list[str],
) -> Labelled:
    if config.task == "ctc":
        keep = [k for k, v in enumerate(values) if v and normalize_text(v)]
        texts = [str(values[k]) for k in keep]
        assert tokenizer is not None
        targets: list[Any] = encode_texts(tokenizer, texts)
    else:
        ids = class_ids(values, classes)
        keep = [k for k in range(len(values)) if ids[k] >= 0]
        texts, targets = ["" for _ in keep], [int(ids[k]) for k in keep]
    return Labelled(corpus.subset(np.array(keep, dtype=np.int64)), texts, targets)


def task_model(config: FinetuneConfig, pretrained: Path, data: TaskData) -> Any:
    """The task's transformers model on the pretrained weights (with `config.random_init`, on fresh weights of
    the same architecture, drawn from torch's current seed), with a new head and SpecAugment masking.
    Raises W2VError when `pretrained` is not a model folder."""
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
            tokenizer = data.tokenizer
            assert tokenizer is not None
            return _load(Wav2Vec2ForCTC, pretrained, config.random_init, vocab_size=len(tokenizer),
                         pad_token_id=tokenizer.pad_token_id, ctc_loss_reduction="mean", ctc_zero_infinity=True,
                         **common)  # fmt: skip
        classes = data.classes
        return _load(Wav2Vec2ForSequenceClassification, pretrained, config.random_init, num_labels=len(classes),
                     label2id={c: k for k, c in enumerate(classes)}, id2label=dict(enumerate(classes)),
                     **common)  # fmt: skip
    except OSError as error:
        raise W2VError(f"{pretrained}: not a model folder ({error}); pass CHECKPOINT/model") from error
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def _load(kind: Any, pretrained: Path, random_init: bool, **settings: Any) -> Any:
    if not random_init:
        return kind.from_pretrained(pretrained, **settings)
    return kind(Wav2Vec2Config.from_pretrained(pretrained, **settings))


def batch_targets(batch: Batch, labelled: Labelled, task: str, device: torch.device) -> torch.Tensor:
    """The batch's targets: CTC's token ids padded with -100 (ignored), or one class id per row."""
    if task == "ctc":
        sequences = [labelled.targets[i] for i in batch.indices]
        width = max(len(s) for s in sequences)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        for k, sequence in enumerate(sequences):
            labels[k, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return labels.to(device)
    return torch.tensor([labelled.targets[i] for i in batch.indices], dtype=torch.long, device=device)


def task_loss(model: Any, batch: Batch, labelled: Labelled, task: str) -> torch.Tensor:
    """The task's loss on a batch (the mean over its utterances), as the model's head computes it."""
    labels = batch_targets(batch, labelled, task, batch.input_values.device)
    outputs = model(batch.input_values, attention_mask=batch.attention_mask, labels=labels)
    loss: torch.Tensor = outputs.loss
    return loss
