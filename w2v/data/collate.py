"""Turn one planned micro-batch into model input: int16 rows normalized into one float32 array, cropped or padded.

`crop`: every row is a random window of the batch's shortest row (capped at max_sample_size, rounded down
to `crop_to_multiple_of`), so nothing is padded and no attention mask is needed (fairseq's pretraining
default). `pad`: rows longer than
max_sample_size are randomly cropped to it, the rest padded with zeros to the longest, rounded up to
`pad_to_multiple_of`, with an attention mask. Each batch counts what it lost: audio cropped away, padding.
Crop offsets come from (seed, stream position), so a resumed run reads exactly the same windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from w2v.audio import INT16_SCALE, NORM_EPS
from w2v.data.corpus import ShardCorpus
from w2v.data.plan import BatchConfig


@dataclass(frozen=True)
class Batch:
    """Model input for one micro-batch, and where it came from in the stream."""

    input_values: torch.Tensor  # (rows, samples) float32, zero mean and unit variance per utterance
    attention_mask: torch.Tensor | None  # (rows, samples) int32, 1 on audio; None in crop mode (no padding)
    num_samples: torch.Tensor  # (rows,) int64: samples of audio in each row
    position: int = 0
    corpus: int = 0
    epoch: int = 0
    state_after: dict[str, Any] = field(default_factory=dict)  # the stream's state after this micro-step
    utterance_samples: int = 0  # audio of the utterances drawn, before cropping
    cropped_samples: int = 0  # of which not delivered
    padded_samples: int = 0  # zeros added
    piece: int = 0  # which part of its planned micro-batch (see make_loader's split)
    pieces: int = 1
    indices: tuple[int, ...] = ()  # the utterances of each row, in their corpus (for labels)

    @property
    def audio_samples(self) -> int:
        return self.utterance_samples - self.cropped_samples

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-locked tensors copy to the GPU asynchronously."""
        mask = self.attention_mask.pin_memory() if self.attention_mask is not None else None
        return replace(self, input_values=self.input_values.pin_memory(), attention_mask=mask)

    def to(self, device: torch.device | str) -> Batch:
        mask = self.attention_mask.to(device, non_blocking=True) if self.attention_mask is not None else None
        return replace(
            self,
            input_values=self.input_values.to(device, non_blocking=True),
            attention_mask=mask,
            num_samples=self.num_samples.to(device, non_blocking=True),
        )


def batch_width(capped: np.ndarray, config: BatchConfig) -> int:
    """Samples per row of a batch of utterances `capped` long (at most max_sample_size): crop mode, the
    shortest rounded down to `crop_to_multiple_of` (fewer distinct shapes: GPU kernels set up once per
    shape) unless shorter than that; pad mode, the longest rounded up to `pad_to_multiple_of`."""
    if config.mode == "crop":
        width = int(capped.min())
        return width - width % config.crop_to_multiple_of if width >= config.crop_to_multiple_of else width
    return int(math.ceil(int(capped.max()) / config.pad_to_multiple_of) * config.pad_to_multiple_of)


def collate(corpus: ShardCorpus, indices: np.ndarray, config: BatchConfig, rng: np.random.Generator) -> Batch:
    """Read, window and normalize the utterances `indices` of `corpus` into one Batch."""
    lengths = corpus.num_samples[indices]
    capped = np.minimum(lengths, config.max_sample_size)
    width = batch_width(capped, config)
    rows = np.full(indices.size, width, dtype=np.int64) if config.mode == "crop" else capped
    starts = (rng.random(indices.size) * (lengths - rows + 1)).astype(np.int64)
    values = np.zeros((indices.size, width), dtype=np.float32)
    for k, index in enumerate(indices.tolist()):
        pcm = corpus.audio(index)[starts[k] : starts[k] + rows[k]]
        _normalize_into(values[k, : rows[k]], pcm, float(corpus.mean[index]), float(corpus.std[index]))
    mask = None
    if config.mode == "pad":
        mask_array = (np.arange(width)[None, :] < rows[:, None]).astype(np.int32)
        mask = torch.from_numpy(mask_array)
    return Batch(
        input_values=torch.from_numpy(values),
        attention_mask=mask,
        num_samples=torch.from_numpy(rows),
        utterance_samples=int(lengths.sum()),
        cropped_samples=int((lengths - rows).sum()),
        padded_samples=int(indices.size * width - rows.sum()),
        indices=tuple(indices.tolist()),
    )


def _normalize_into(out: np.ndarray, pcm: np.ndarray, mean: float, std: float) -> None:
    """out = (pcm / 32768 - mean) / sqrt(std² + eps), as Wav2Vec2FeatureExtractor normalizes, in two passes."""
    scale = 1.0 / (INT16_SCALE * math.sqrt(std * std + NORM_EPS))
    np.multiply(pcm, np.float32(scale), out=out, casting="unsafe")
    out -= np.float32(mean * INT16_SCALE * scale)
