"""Listing sources: folders, globs, list files; fingerprints; parts listed side by side give what one walk
gives; one-line errors for what cannot be listed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from w2v.errors import SourceError
from w2v.listing import ListingPart, list_part, list_sources, merge_listings, split_sources


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


def _tree(root: Path) -> set[Path]:
    """Audio three levels deep, beside files at every level, as a corpus of speaker/chapter/file is laid out."""
    made = {_touch(root / "top.wav")}
    for speaker in range(3):
        made.add(_touch(root / f"s{speaker}" / "intro.flac"))
        for chapter in range(2):
            for k in range(2):
                made.add(_touch(root / f"s{speaker}" / f"c{chapter}" / f"{k}.wav"))
    _touch(root / "s1" / "c0" / "notes.txt")
    return made


def test_a_folder_listed_in_parts_gives_what_one_walk_gives(tmp_path: Path) -> None:
    made = _tree(tmp_path / "corpus")
    whole = [ListingPart("corpus", str((tmp_path / "corpus").resolve()), "tree")]
    parts = split_sources([str(tmp_path / "corpus")], parts=8)
    assert len(parts) >= 8 and {p.kind for p in parts} == {"top", "tree"}
    assert all(p.arg == str(tmp_path / "corpus") for p in parts)
    in_parts = [list_part(p) for p in parts]
    assert sum(len(found) for found in in_parts) == len(made)  # no file is listed by two parts
    assert merge_listings([str(tmp_path / "corpus")], parts, in_parts) == merge_listings(
        ["corpus"], whole, [list_part(whole[0])]
    )
    assert {s.uri for s in list_sources([str(tmp_path / "corpus")])} == {str(p.resolve()) for p in made}


def test_a_linked_file_is_listed_as_its_target_and_a_linked_folder_is_not_followed(tmp_path: Path) -> None:
    real = _touch(tmp_path / "elsewhere" / "real.wav", b"abcd")
    corpus = tmp_path / "corpus"
    _touch(corpus / "own.wav")
    os.symlink(real, corpus / "link.wav")
    os.symlink(tmp_path / "elsewhere", corpus / "linked-folder")
    sources = list_sources([str(corpus)])
    assert [s.uri for s in sources] == [str((corpus / "own.wav").resolve()), str(real.resolve())]
    assert sources[1].size == 4


def test_a_folder_that_cannot_be_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / "corpus" / "locked" / "a.wav")
    scandir = os.scandir

    def refuse(path: str) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(SourceError, match=r"locked: cannot list \(.*Permission denied"):
        list_sources([str(tmp_path / "corpus")])
