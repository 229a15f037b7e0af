"""Local shard folders are checked against their manifest before use, and an unchanged folder is hashed once."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import w2v.shards.verify
from tests.data.shard_folders import write_shard_folder
from w2v.data.integrity import check_local_shards, record_path
from w2v.data.mixture import open_corpora
from w2v.data.staging import default_records_dir, stage_shards
from w2v.errors import ShardError
from w2v.shards.manifest import read_manifest

LENGTHS = [8000 + 97 * k for k in range(40)]


@pytest.fixture(autouse=True)
def records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))
    return default_records_dir()


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The paths the shard check hashes, in the order it hashes them."""
    seen: list[Path] = []
    real = w2v.shards.verify.sha256_file

    def spy(path: Path, block_bytes: int = 8 << 20) -> str:
        seen.append(Path(path))
        return real(path, block_bytes)

    monkeypatch.setattr(w2v.shards.verify, "sha256_file", spy)
    yield seen


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_shard_folder(tmp_path / "shards", LENGTHS, rows_per_shard=10)


def _flip_middle_byte(path: Path, keep_mtime: bool) -> None:
    before = path.stat()
    time.sleep(0.05)  # past the file system's timestamp tick: a change within it is invisible to any stat
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


def test_an_unchanged_folder_is_hashed_once(folder: Path, hashed: list[Path], records: Path) -> None:
    shards = [folder / e.path for e in read_manifest(folder).shards]
    first = stage_shards(str(folder), folder.parent / "unused")
    assert sorted(hashed) == sorted(shards) and first.hashed_bytes == sum(p.stat().st_size for p in shards)
    assert record_path(folder, records).is_file()
    again = stage_shards(str(folder), folder.parent / "unused")
    corpora, _ = open_corpora([f"{folder}/manifest.json:0.5"], folder.parent / "unused")
    assert len(hashed) == len(shards) and again.hashed_bytes == 0 and len(corpora[0]) == len(LENGTHS)
    assert not (folder.parent / "unused").exists()  # a local folder is checked in place, never copied


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changed", "mtime-put-back"])
def test_a_flipped_byte_after_a_check_is_caught_by_name(folder: Path, hashed: list[Path], keep_mtime: bool) -> None:
    check_local_shards(folder, default_records_dir())
    bad = folder / read_manifest(folder).shards[2].path
    _flip_middle_byte(bad, keep_mtime)
    with pytest.raises(ShardError) as caught:
        open_corpora([str(folder)], folder.parent / "cache")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: sha256 ")
    assert f"run w2v shards verify {folder}" in message
    assert hashed[-1] == bad and hashed.count(bad) == 2  # only the changed shard is hashed again
    with pytest.raises(ShardError):  # a shard that failed is never remembered as checked
        check_local_shards(folder, default_records_dir())


def test_a_truncated_shard_is_caught_without_hashing_it(folder: Path, hashed: list[Path]) -> None:
    entries = read_manifest(folder).shards
    short = folder / entries[1].path
    short.write_bytes(short.read_bytes()[:-100])
    with pytest.raises(ShardError, match=rf"^{re.escape(str(short))}: {entries[1].bytes - 100} bytes, manifest says"):
        check_local_shards(folder, default_records_dir())
    assert short not in hashed and len(hashed) == len(entries) - 1


def test_a_missing_shard_and_several_bad_ones_are_counted_in_one_line(folder: Path) -> None:
    entries = read_manifest(folder).shards
    (folder / entries[0].path).unlink()
    for entry in entries[2:]:
        _flip_middle_byte(folder / entry.path, keep_mtime=False)
    with pytest.raises(ShardError) as caught:
        check_local_shards(folder, default_records_dir())
    message = str(caught.value)
    assert message.startswith(f"{folder / entries[0].path}: missing (and {len(entries) - 2} more shards);")
    assert "\n" not in message


def test_no_verify_shards_opens_a_damaged_folder_unchecked(folder: Path, hashed: list[Path]) -> None:
    _flip_middle_byte(folder / read_manifest(folder).shards[0].path, keep_mtime=False)
    corpora, _ = open_corpora([str(folder)], folder.parent / "cache", verify=False)
    assert len(corpora[0]) == len(LENGTHS) and hashed == []


def test_ranks_starting_together_hash_each_shard_once(folder: Path, hashed: list[Path]) -> None:
    errors: list[BaseException] = []

    def rank() -> None:
        try:
            check_local_shards(folder, default_records_dir())
        except BaseException as error:
            errors.append(error)

    ranks = [threading.Thread(target=rank) for _ in range(4)]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join()
    assert errors == [] and len(hashed) == len(read_manifest(folder).shards)


def test_without_a_writable_record_the_check_still_runs(folder: Path, hashed: list[Path], tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for _ in range(2):
        assert check_local_shards(folder, blocked / "verified").hashed == len(read_manifest(folder).shards)
    assert len(hashed) == 2 * len(read_manifest(folder).shards)
    _flip_middle_byte(folder / read_manifest(folder).shards[0].path, keep_mtime=True)
    with pytest.raises(ShardError):
        check_local_shards(folder, blocked / "verified")


def test_a_changed_manifest_checks_the_shards_again(folder: Path, hashed: list[Path]) -> None:
    check_local_shards(folder, default_records_dir())
    text = (folder / "manifest.json").read_text()
    entry = read_manifest(folder).shards[0]
    (folder / "manifest.json").write_text(text.replace(entry.sha256, "0" * 64))
    with pytest.raises(
        ShardError, match=rf"^{re.escape(str(folder / entry.path))}: sha256 .*manifest says 000000000000"
    ):
        check_local_shards(folder, default_records_dir())
    assert hashed.count(folder / entry.path) == 2
