"""`w2v shards filter`: a stricter copy from stored measurements, rewriting only the shards that change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from w2v.cli import app
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.quality_filters import QualityThresholds
from w2v.shards.manifest import read_manifest
from w2v.shards.verify import verify

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_filter_writes_a_verified_copy_without_the_failing_utterances(quality_cases: Path, tmp_path: Path) -> None:
    off = PrepareConfig(quality=QualityThresholds(None, None, None, None), num_buckets=2)
    source = prepare([str(quality_cases)], tmp_path / "all", off, workers=2)
    assert source.counts()["utterances"] == 5

    result = runner.invoke(
        app, ["shards", "filter", str(tmp_path / "all"), "--out", str(tmp_path / "clean"), "--min-speech-share", "0.1"]
    )
    assert result.exit_code == 0, result.output
    filtered = read_manifest(tmp_path / "clean")
    assert verify(tmp_path / "clean") == []
    kept = {Path(s.uri).name for s in filtered.kept_sources}
    assert "noise.wav" not in kept and "tone.wav" not in kept and "clean.wav" in kept
    assert {s.reason for s in filtered.rejected_sources} == {"no_speech"}
    assert filtered.config["quality"]["min_speech_share"] == 0.1
    totals = filtered.seconds()
    assert totals["kept"] + totals["filtered"] + totals["rejected"] + totals["dropped_short"] == pytest.approx(
        totals["decoded"]
    )
    # Shards that lost no row are the same files (same checksum); the others were rewritten.
    before = {s.path: s.sha256 for s in source.shards}
    after = {s.path: s.sha256 for s in filtered.shards}
    assert all(before[p] == h for p, h in after.items() if p in before)
    rejects = [json.loads(line) for line in (tmp_path / "clean" / "rejects.jsonl").read_text().splitlines()]
    assert {Path(r["source"]).name for r in rejects} == {"noise.wav", "tone.wav"}
    assert verify(tmp_path / "all") == []  # the source folder is untouched


def test_filter_needs_a_filter_and_a_new_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["shards", "filter", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "at least one filter" in result.output
    bad = runner.invoke(app, ["shards", "filter", str(tmp_path), "--out", str(tmp_path), "--min-snr-db", "nope"])
    assert bad.exit_code == 2 and "expected a number or 'off'" in bad.output
