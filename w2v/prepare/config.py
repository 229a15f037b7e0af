"""The settings of one prepare-corpus run: a frozen dataclass whose defaults are the recommended values."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from w2v.errors import W2VError
from w2v.quality_filters import QualityThresholds
from w2v.vad import DETECTORS

# Settings that change only how utterances are packed into shards, not which utterances there are.
PACKING_FIELDS = frozenset({"shard_mb", "num_buckets", "chunk_mb", "files_per_chunk"})


@dataclass(frozen=True)
class PrepareConfig:
    """What prepare makes of each source; every field changes the shards, so all are in the fingerprint."""

    sample_rate: int = 16_000
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    num_buckets: int = 8
    shard_mb: float = 256.0
    # A decode task (the unit of work and retry): about this many source bytes, at most this many files.
    chunk_mb: float = 512.0
    files_per_chunk: int = 10_000
    # Cuts of long recordings land at the quietest frame within half this distance of an even split.
    search_seconds: float = 2.0
    resample_quality: str = "HQ"
    # Per-utterance quality measurements (shard columns) and the filters applied to them.
    measure_quality: bool = True
    vad: str = "energy"
    quality: QualityThresholds = field(default_factory=QualityThresholds)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise W2VError(f"sample_rate must be positive, got {self.sample_rate}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise W2VError(
                f"need 0 < min_seconds <= max_seconds, got min_seconds={self.min_seconds}, "
                f"max_seconds={self.max_seconds}"
            )
        if self.num_buckets < 1:
            raise W2VError(f"num_buckets must be at least 1, got {self.num_buckets}")
        if self.shard_mb <= 0:
            raise W2VError(f"shard_mb must be positive, got {self.shard_mb}")
        if self.chunk_mb <= 0:
            raise W2VError(f"chunk_mb must be positive, got {self.chunk_mb}")
        if self.files_per_chunk < 1:
            raise W2VError(f"files_per_chunk must be at least 1, got {self.files_per_chunk}")
        if self.vad not in DETECTORS:
            raise W2VError(f"vad must be one of {', '.join(DETECTORS)}, got {self.vad!r}")
        if not self.measure_quality and self.quality != QualityThresholds(None, None, None, None):
            raise W2VError("quality filters need the measurements: turn the filters off, or measure_quality on")
        if self.resample_quality not in {"QQ", "LQ", "MQ", "HQ", "VHQ"}:
            raise W2VError(f"resample_quality must be one of QQ LQ MQ HQ VHQ, got {self.resample_quality!r}")

    @property
    def min_samples(self) -> int:
        return round(self.min_seconds * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("quality"), dict):
            values["quality"] = QualityThresholds(**values["quality"])
        return cls(**values)

    def decoding_settings(self) -> dict[str, Any]:
        """The fields that change what a source yields (all but how shards are packed)."""
        return {k: v for k, v in self.to_dict().items() if k not in PACKING_FIELDS}

    def decode_fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.decoding_settings(), sort_keys=True).encode()).hexdigest()[:16]
