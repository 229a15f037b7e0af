"""Metadata files and settings: read what users write, refuse what would mix incompatible shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Corpus
from w2v.errors import ManifestError, W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.metadata import load_metadata
from w2v.prepare.pipeline import prepare


def test_csv_metadata_rows_are_keyed_by_resolved_path(tmp_path: Path) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text("path,text,speaker,extra\nclips/a.wav,hello there,spk1,ignored\nb.wav,,spk2,\n")
    table = load_metadata(csv)
    assert table[str((tmp_path / "clips" / "a.wav").resolve())] == {
        "text": "hello there", "speaker": "spk1", "label": None
    }  # fmt: skip
    assert table[str((tmp_path / "b.wav").resolve())]["text"] is None


def test_metadata_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"path": "a.wav"}\n{"text": "no path"}\n')
    with pytest.raises(W2VError, match=r"meta.jsonl:2: row has no 'path'"):
        load_metadata(bad)


def test_settings_are_checked_with_one_line_errors() -> None:
    with pytest.raises(W2VError, match="min_seconds <= max_seconds"):
        PrepareConfig(min_seconds=30.0, max_seconds=20.0)


@pytest.mark.slow
def test_a_folder_prepared_at_another_rate_is_not_mixed(corpus: Corpus, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copy(corpus.path("speech.flac"), src)
    prepare([str(src)], tmp_path / "out", PrepareConfig(), workers=1)
    with pytest.raises(ManifestError, match=r"other settings \(sample_rate: 16000 -> 8000\); use a new --out"):
        prepare([str(src)], tmp_path / "out", PrepareConfig(sample_rate=8000), workers=1)
