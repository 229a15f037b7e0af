"""Quality filters: thresholds on the measurements, and which one an utterance fails first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from w2v.quality import Quality


@dataclass(frozen=True)
class QualityThresholds:
    """Each threshold is None when turned off. Defaults reject only audio nobody would train on."""

    # More than 1 % of samples in flat runs at the peak is audible distortion.
    max_clipped_share: float | None = 0.01
    # Below 3 dB the noise is about as loud as the speech.
    min_snr_db: float | None = 3.0
    # Less than a tenth of the frames with speech: music, noise, or silence with a cough.
    min_speech_share: float | None = 0.1
    # Speech averages to ~0; an offset of a tenth of full scale is broken hardware.
    max_dc_offset: float | None = 0.1


@dataclass(frozen=True)
class Failure:
    reason: str
    value: float
    threshold: float


def every_piece_failed(uri: str, pieces: Sequence[Mapping[str, Any]]) -> str:
    """The one-line error of a source whose every piece failed a filter."""
    reasons = ", ".join(f"{p['reason']} ({p['value']:.3g} vs {p['threshold']:.3g})" for p in pieces)
    return f"{uri}: every piece fails a quality filter: {reasons}"


def first_failure(measured: Quality, thresholds: QualityThresholds) -> Failure | None:
    """The first filter (in the order clipped, dc_offset, no_speech, low_snr) that `measured` fails."""
    t = thresholds
    checks = [
        ("clipped", measured.clipped_share, t.max_clipped_share, measured.clipped_share > (t.max_clipped_share or 0)),
        ("dc_offset", measured.dc_offset, t.max_dc_offset, abs(measured.dc_offset) > (t.max_dc_offset or 0)),
        ("no_speech", measured.speech_share, t.min_speech_share, measured.speech_share < (t.min_speech_share or 0)),
        ("low_snr", measured.snr_db, t.min_snr_db, measured.snr_db < (t.min_snr_db or 0)),
    ]
    for reason, value, threshold, fails in checks:
        if threshold is not None and fails:
            return Failure(reason, value, threshold)
    return None
