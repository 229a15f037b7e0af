"""Listing sources: folders, globs, list files; fingerprints; one-line errors for what cannot be listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from w2v.errors import SourceError
from w2v.storage import list_sources


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_is_searched_recursively_for_audio_only(tmp_path: Path) -> None:
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "deep" / "b.FLAC")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.wav")
    names = [Path(s.uri).name for s in list_sources([str(tmp_path)])]
    assert names == ["a.wav", "b.FLAC"]


def test_globs_list_files_and_repeats_give_unique_sorted_sources(tmp_path: Path) -> None:
    a = _touch(tmp_path / "x" / "a.mp3", b"abc")
    b = _touch(tmp_path / "y" / "b.ogg")
    listing = _touch(tmp_path / "files.txt", b"# my corpus\nx/a.mp3\n\ny/b.ogg  # second\n")
    sources = list_sources([str(tmp_path / "**" / "*.mp3"), str(listing), str(a)])
    assert [s.uri for s in sources] == [str(a.resolve()), str(b.resolve())]
    assert sources[0].size == 3 and sources[0].mtime == a.stat().st_mtime


def test_what_cannot_be_listed_is_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nowhere: no such file"):
        list_sources([str(tmp_path / "nowhere")])
    listing = _touch(tmp_path / "files.txt", b"gone.wav\n")
    with pytest.raises(SourceError, match=r"files.txt:1: gone.wav: no such file"):
        list_sources([str(listing)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no audio files found"):
        list_sources([str(empty)])
