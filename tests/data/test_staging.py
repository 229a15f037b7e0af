"""Shards on S3 (moto's server on 127.0.0.1) staged into a local cache: checked, resumable, refused when damaged."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

import w2v.shards.verify
from tests.data.shard_folders import write_shard_folder
from tests.servers import S3Server, moto_s3_server
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import open_corpora
from w2v.data.plan import BatchConfig
from w2v.data.staging import default_cache_dir, stage_shards
from w2v.errors import ShardError
from w2v.shards import shard_list
from w2v.shards.manifest import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.network]
LENGTHS = [8000 + 311 * k for k in range(60)]


@pytest.fixture(autouse=True)
def user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "user-cache"))  # records of checked shards go there


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3_server() as server:
        yield server


def _upload(s3: S3Server, folder: Path, bucket: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir(bucket)
    for path in folder.iterdir():
        fs.put(str(path), f"{bucket}/corpus/{path.name}")
    return fs


def test_staged_shards_match_the_manifest_and_a_second_staging_fetches_nothing(s3: S3Server, tmp_path: Path) -> None:
    folder = write_shard_folder(tmp_path / "local", LENGTHS, rows_per_shard=20)
    _upload(s3, folder, "staged")
    cache = tmp_path / "cache"
    staged = stage_shards("s3://staged/corpus", cache, s3.storage_options)
    total = sum(entry.bytes for entry in read_manifest(folder).shards)
    assert staged.shards == 3 and staged.fetched_bytes == total
    for entry in read_manifest(folder).shards:
        assert (staged.folder / entry.path).read_bytes() == (folder / entry.path).read_bytes()
    assert stage_shards("s3://staged/corpus/", cache, s3.storage_options).fetched_bytes == 0

    corpora, weights = open_corpora(["s3://staged/corpus/manifest.json:2"], cache, s3.storage_options)
    assert weights == [2.0] and corpora[0].num_samples.tolist() == LENGTHS
    loader = make_loader(corpora, BatchConfig(max_batch_seconds=5.0), seed=0, loader=LoaderConfig(num_workers=0))
    assert sum(b.num_samples.numel() for b in itertools.islice(loader, 5)) > 0


def test_an_interrupted_staging_resumes_where_it_stopped(s3: S3Server, tmp_path: Path) -> None:
    folder = write_shard_folder(tmp_path / "local", LENGTHS, rows_per_shard=30)
    _upload(s3, folder, "resumed")
    entries = read_manifest(folder).shards
    cache = tmp_path / "cache"
    # What a killed staging leaves: the first shard whole, half of the second in its .part file.
    first = stage_shards("s3://resumed/corpus", cache, s3.storage_options)
    for path in first.folder.iterdir():
        path.unlink()
    (first.folder / entries[0].path).write_bytes((folder / entries[0].path).read_bytes())
    (first.folder / (entries[0].path + ".sha256")).write_text(entries[0].sha256 + "\n")
    half = (folder / entries[1].path).read_bytes()[: entries[1].bytes // 2]
    (first.folder / (entries[1].path + ".part")).write_bytes(half)

    again = stage_shards("s3://resumed/corpus", cache, s3.storage_options)
    assert again.fetched_bytes == entries[1].bytes - len(half)
    assert ShardCorpus(again.folder).num_samples.tolist() == LENGTHS


def test_a_damaged_remote_shard_is_fetched_again_then_refused(s3: S3Server, tmp_path: Path) -> None:
    folder = write_shard_folder(tmp_path / "local", LENGTHS, rows_per_shard=30)
    fs = _upload(s3, folder, "damaged")
    entry = read_manifest(folder).shards[1]
    damaged = bytearray((folder / entry.path).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    fs.pipe(f"damaged/corpus/{entry.path}", bytes(damaged))
    cache = tmp_path / "cache"
    with pytest.raises(ShardError, match=rf"s3://damaged/corpus/{entry.path}: sha256 .* after fetching it twice"):
        stage_shards("s3://damaged/corpus", cache, s3.storage_options)
    staged = next(cache.iterdir())
    assert not (staged / "manifest.json").exists()  # an incomplete cache never looks complete
    assert not list(staged.glob("*.part"))


def test_the_default_cache_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("W2V_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "w2v" / "shards"
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_staged_shards_are_not_hashed_again_and_a_cache_damaged_at_rest_is_fetched_again(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_shard_folder(tmp_path / "local", LENGTHS, rows_per_shard=20)
    _upload(s3, folder, "at-rest")
    cache = tmp_path / "cache"
    hashed: list[Path] = []
    real = w2v.shards.verify.sha256_file

    def spy(path: Path, block_bytes: int = 8 << 20) -> str:
        hashed.append(Path(path))
        return real(path, block_bytes)

    monkeypatch.setattr(w2v.shards.verify, "sha256_file", spy)

    staged = stage_shards("s3://at-rest/corpus", cache, s3.storage_options)
    assert staged.hashed_bytes == 0 and stage_shards(str(staged.folder), cache).hashed_bytes == 0  # as the flow
    assert hashed == []  # hashed once, on arrival

    entry = read_manifest(folder).shards[1]
    damaged = bytearray((staged.folder / entry.path).read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    time.sleep(0.05)  # past the file system's timestamp tick
    (staged.folder / entry.path).write_bytes(bytes(damaged))
    with pytest.raises(ShardError, match=r"run w2v shards verify"):
        stage_shards(str(staged.folder), cache)
    again = stage_shards("s3://at-rest/corpus", cache, s3.storage_options)
    assert again.fetched_bytes == entry.bytes
    assert (again.folder / entry.path).read_bytes() == (folder / entry.path).read_bytes()
    assert stage_shards(str(again.folder), cache).hashed_bytes == 0


def test_a_folder_whose_shards_are_listed_in_a_table_stages_and_opens(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_list, "SHARDS_INLINE", 2)
    folder = write_shard_folder(tmp_path / "local", LENGTHS, rows_per_shard=20)
    listed = read_manifest(folder)
    assert len(listed.shard_tables) == 1 and len(listed.shards) == 3
    _upload(s3, folder, "listed")
    staged = stage_shards("s3://listed/corpus", tmp_path / "cache", s3.storage_options)
    assert staged.shards == 3
    assert staged.fetched_bytes == sum(f.bytes for f in listed.training_files)  # the shard list came too
    assert ShardCorpus(staged.folder).num_samples.tolist() == LENGTHS
