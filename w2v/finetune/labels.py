"""Labels for fine-tuning: a shard column per utterance, a character vocabulary for CTC, class ids otherwise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from w2v.data.corpus import ShardCorpus
from w2v.errors import W2VError

PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"


def read_column(corpus: ShardCorpus, name: str) -> list[str | None]:
    """Column `name` (text, speaker, label) of every utterance of `corpus`; an error if no shard has it."""
    values = corpus.column(name)
    if not any(v is not None for v in values):
        raise W2VError(f"{corpus.folder}: no utterance has a {name!r} value; prepare the shards with --metadata")
    return values


def normalize_text(text: str) -> str:
    """Transcripts as CTC learns them: lower case, words joined by the word delimiter."""
    return WORD_DELIMITER.join(text.lower().split())


def build_tokenizer(texts: Sequence[str], folder: Path) -> Wav2Vec2CTCTokenizer:
    """A character tokenizer over the training transcripts (plus padding/blank and unknown), saved in `folder`."""
    characters = sorted({c for text in texts for c in normalize_text(text)} - {WORD_DELIMITER})
    if not characters:
        raise W2VError("no transcripts in the training shards' text column: CTC needs them")
    vocabulary = {PAD: 0, UNK: 1, WORD_DELIMITER: 2, **{c: k + 3 for k, c in enumerate(characters)}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False, indent=1))
    # No sentence start/end tokens: CTC has no use for them, and they would grow the output layer.
    tokenizer = Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"),
        unk_token=UNK,
        pad_token=PAD,
        word_delimiter_token=WORD_DELIMITER,
        bos_token=None,
        eos_token=None,
    )
    return tokenizer


def ctc_processor(tokenizer: Wav2Vec2CTCTokenizer, sample_rate: int) -> Wav2Vec2Processor:
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def encode_texts(tokenizer: Wav2Vec2CTCTokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each transcript (spaces as the word delimiter)."""
    encoded: list[list[int]] = [tokenizer(normalize_text(t).replace(WORD_DELIMITER, " ")).input_ids for t in texts]
    return encoded


def class_ids(values: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """Class index of each value (-1 where unset or not a known class)."""
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
