"""Quality filters in prepare: known bad cases are rejected with their reason and measured value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.quality_filters import QualityThresholds
from w2v.shards.reader import open_table
from w2v.shards.schema import QUALITY_COLUMNS
from w2v.shards.verify import verify

pytestmark = pytest.mark.slow
RATE = 16_000


EXPECTED = {"clipped.wav": "clipped", "dc_offset.wav": "dc_offset", "noise.wav": "no_speech", "tone.wav": "no_speech"}


@pytest.mark.parametrize("vad", ["energy", "silero"])
def test_known_bad_audio_is_rejected_with_its_reason_and_clean_speech_is_kept(
    quality_cases: Path, tmp_path: Path, vad: str
) -> None:
    manifest = prepare([str(quality_cases)], tmp_path / "out", PrepareConfig(vad=vad), workers=2)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {Path(r["source"]).name: r["reason"] for r in rejects} == EXPECTED
    assert {Path(s.uri).name for s in manifest.kept_sources} == {"clean.wav"}
    # Every reject carries the measurement that failed and the threshold it failed.
    for source in manifest.rejected_sources:
        assert "fails a quality filter" in (source.error or "")
    (row,) = open_table(tmp_path / "out").to_pylist()
    assert all(row[c] is not None for c in QUALITY_COLUMNS)
    assert row["speech_share"] > 0.5 and row["snr_db"] > 30


def test_filters_can_be_turned_off_and_pieces_are_filtered_one_by_one(quality_cases: Path, tmp_path: Path) -> None:
    off = PrepareConfig(quality=QualityThresholds(None, None, None, None))
    manifest = prepare([str(quality_cases)], tmp_path / "off", off, workers=2)
    assert len(manifest.kept_sources) == 5 and verify(tmp_path / "off") == []

    # A recording that is half clean speech, half tone: only the tone's piece goes.
    speech = sf.read(quality_cases / "clean.wav", dtype="float32")[0]
    tone = sf.read(quality_cases / "tone.wav", dtype="float32")[0]
    mixed_dir = tmp_path / "mixed"
    mixed_dir.mkdir()
    sf.write(mixed_dir / "mixed.wav", np.concatenate([speech, tone, tone]), RATE, subtype="PCM_16")
    config = PrepareConfig(max_seconds=float(speech.shape[0]) / RATE + 0.5, min_seconds=1.0)
    mixed = prepare([str(mixed_dir)], tmp_path / "mixed-out", config, workers=1)
    (source,) = mixed.sources.values()
    assert source.status == "kept" and len(source.utterances) >= 1
    assert [f["reason"] for f in source.filtered] and all(f["reason"] == "no_speech" for f in source.filtered)
    totals = mixed.seconds()
    assert totals["kept"] + totals["filtered"] + totals["dropped_short"] == pytest.approx(totals["decoded"])
    rejects = [json.loads(line) for line in (tmp_path / "mixed-out" / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {f["id"] for f in source.filtered}
    histogram = mixed.quality_histograms["speech_share"]
    assert sum(histogram["counts"]) == histogram["measured"] == len(source.utterances)


def test_measurements_can_be_turned_off(quality_cases: Path, tmp_path: Path) -> None:
    config = PrepareConfig(measure_quality=False, quality=QualityThresholds(None, None, None, None))
    prepare([str(quality_cases / "clean.wav")], tmp_path / "out", config, workers=1)
    table = pa.concat_tables([open_table(tmp_path / "out")])
    assert table.column("snr_db").null_count == table.num_rows
