"""The quality-filter options that `w2v prepare` and `w2v shards filter` share: a number, or 'off'."""

from __future__ import annotations

from typing import TYPE_CHECKING

from w2v.cli.root import fail

if TYPE_CHECKING:
    from w2v.quality_filters import QualityThresholds


def parse_threshold(name: str, value: str | None) -> float | None:
    if value is None or value.strip().lower() in {"off", "none", ""}:
        return None
    try:
        return float(value)
    except ValueError:
        fail(f"--{name.replace('_', '-')}: expected a number or 'off', got {value!r}")


def parse_thresholds(
    max_clipped_share: str | None, min_snr_db: str | None, min_speech_share: str | None, max_dc_offset: str | None
) -> QualityThresholds:
    # Here, not at the top: w2v.quality_filters imports scipy (through w2v.quality), ~1 s of every `w2v --help`.
    from w2v.quality_filters import QualityThresholds

    return QualityThresholds(
        max_clipped_share=parse_threshold("max_clipped_share", max_clipped_share),
        min_snr_db=parse_threshold("min_snr_db", min_snr_db),
        min_speech_share=parse_threshold("min_speech_share", min_speech_share),
        max_dc_offset=parse_threshold("max_dc_offset", max_dc_offset),
    )
