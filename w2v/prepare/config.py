"""The settings of one prepare-corpus run: a frozen dataclass whose defaults are the recommended values."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from w2v.errors import W2VError


@dataclass(frozen=True)
class PrepareConfig:
    """What prepare makes of each source; every field changes the shards, so all are in the fingerprint."""

    sample_rate: int = 16_000
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    num_buckets: int = 8
    shard_mb: float = 256.0
    files_per_chunk: int = 16
    # Cuts of long recordings land at the quietest frame within half this distance of an even split.
    search_seconds: float = 2.0
    resample_quality: str = "HQ"

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
        if self.files_per_chunk < 1:
            raise W2VError(f"files_per_chunk must be at least 1, got {self.files_per_chunk}")
        if self.resample_quality not in {"QQ", "LQ", "MQ", "HQ", "VHQ"}:
            raise W2VError(f"resample_quality must be one of QQ LQ MQ HQ VHQ, got {self.resample_quality!r}")

    @property
    def min_samples(self) -> int:
        return round(self.min_seconds * self.sample_rate)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def decode_fingerprint(self) -> str:
        """Hash of the fields that change what decoding a source yields (not how shards are packed)."""
        fields = {
            k: v
            for k, v in self.to_dict().items()
            if k in {"sample_rate", "min_seconds", "max_seconds", "search_seconds", "resample_quality"}
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
