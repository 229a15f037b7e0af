"""`w2v shards verify` and `inspect` on a real prepared folder, and on one damaged on purpose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import Prepared
from w2v.cli import app
from w2v.shards.manifest import MANIFEST_NAME
from w2v.shards.verify import verify

pytestmark = pytest.mark.slow
runner = CliRunner()


def _copy(prepared: Prepared, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(prepared.out, copy)
    return copy


def test_a_fresh_folder_verifies_clean(prepared: Prepared) -> None:
    assert verify(prepared.out) == []
    result = runner.invoke(app, ["shards", "verify", str(prepared.out)])
    assert result.exit_code == 0, result.output


def test_verify_catches_a_flipped_byte(prepared: Prepared, tmp_path: Path) -> None:
    folder = _copy(prepared, tmp_path)
    shard = folder / prepared.manifest.shards[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(folder)
    assert len(problems) == 1 and shard.name in problems[0] and "sha256" in problems[0]
    result = runner.invoke(app, ["shards", "verify", str(folder)])
    assert result.exit_code == 1


def test_verify_catches_a_missing_shard_and_a_bad_manifest(prepared: Prepared, tmp_path: Path) -> None:
    folder = _copy(prepared, tmp_path)
    (folder / prepared.manifest.shards[-1].path).unlink()
    assert any("missing" in p for p in verify(folder))
    (folder / MANIFEST_NAME).write_text("{not json")
    (problem,) = verify(folder)
    assert "not valid JSON" in problem


def test_a_manifest_of_another_format_version_is_refused_with_advice(prepared: Prepared, tmp_path: Path) -> None:
    folder = _copy(prepared, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    (problem,) = verify(folder)
    assert "version 99" in problem and "w2v prepare" in problem


def test_inspect_shows_quality_and_writes_a_plot(prepared: Prepared, tmp_path: Path) -> None:
    plot = tmp_path / "quality.png"
    result = runner.invoke(app, ["shards", "inspect", str(prepared.out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "Quality of kept utterances" in result.stdout and "snr_db" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads(runner.invoke(app, ["shards", "inspect", str(prepared.out), "--json"]).stdout)
    snr = stats["quality_histograms"]["snr_db"]
    assert sum(snr["counts"]) == snr["measured"] == prepared.manifest.counts()["utterances"]


def test_inspect_reports_hours_buckets_histogram_and_rejects(prepared: Prepared) -> None:
    result = runner.invoke(app, ["shards", "inspect", str(prepared.out), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    counts = prepared.manifest.counts()
    assert stats["utterances"] == counts["utterances"]
    assert stats["hours"] == pytest.approx(prepared.manifest.seconds()["in_shards"] / 3600)
    assert sum(stats["histogram_counts"]) == counts["utterances"]
    assert sum(b["utterances"] for b in stats["buckets"]) == counts["utterances"]
    assert stats["rejected"] == counts["rejected"]
    table = runner.invoke(app, ["shards", "inspect", str(prepared.out)])
    assert table.exit_code == 0 and "Length buckets" in table.stdout and "decode_error" in table.stdout
