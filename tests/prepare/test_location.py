"""A worker writes a chunk's shards and record through a Location: a local folder, or a URL on moto's S3
server (127.0.0.1), so a worker on another machine needs only the folder's URL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from tests.servers import S3Server, moto_s3_server
from tests.tones import write_tones
from w2v.errors import W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.filters import QualityThresholds
from w2v.prepare.isolated import process_chunk_isolated
from w2v.prepare.pipeline import plan_run
from w2v.prepare.progress import PLAN_RECORD, STAGING_NAME, staged_progress
from w2v.prepare.shard_writer import chunk_is_complete, read_chunk_record
from w2v.shards.location import Location, prepare_output

CONFIG = PrepareConfig(max_seconds=8.0, num_buckets=3, quality=QualityThresholds(None, None, None, None))


def test_a_local_location_writes_whole_files_and_names_them_as_paths(tmp_path: Path) -> None:
    folder = Location.of(tmp_path / "corpus")
    folder.make()
    folder.write_bytes("a.json", b"{}")
    written = folder.write_hashed("b00-shard.arrow", memoryview(b"audio" * 1000))
    assert written.bytes == 5000 and written.sha256 == hashlib.sha256(b"audio" * 1000).hexdigest()
    assert folder.read_bytes("a.json") == b"{}" and folder.size("b00-shard.arrow") == 5000
    assert folder.names("*.arrow") == ["b00-shard.arrow"] and folder.names() == ["a.json", "b00-shard.arrow"]
    assert folder.url("a.json") == str(tmp_path / "corpus" / "a.json")
    assert not list((tmp_path / "corpus").glob(".*"))  # no temporary left behind
    with pytest.raises(FileNotFoundError):
        folder.size("missing.arrow")
    assert Location.of(tmp_path / "nowhere").names() == []


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3_server() as server:
        yield server


@pytest.mark.slow
@pytest.mark.network
def test_a_url_location_reads_back_what_it_wrote(s3: S3Server) -> None:
    s3fs.S3FileSystem(**s3.storage_options).mkdir("corpora")  # type: ignore[arg-type]
    folder = Location.of("s3://corpora/night/", s3.storage_options)
    assert folder.root == "s3://corpora/night" and not folder.is_local
    assert folder.names() == []
    folder.write_bytes("a.json", b"{}")
    written = folder.write_hashed("b00-shard.arrow", b"audio" * 1000)
    assert written.sha256 == hashlib.sha256(b"audio" * 1000).hexdigest()
    assert folder.read_bytes("a.json") == b"{}" and folder.size("b00-shard.arrow") == 5000
    assert folder.names("*.arrow") == ["b00-shard.arrow"]
    assert folder.child(STAGING_NAME).url("k.json") == "s3://corpora/night/_staging/k.json"
    with pytest.raises(FileNotFoundError):
        folder.size("missing.arrow")


@pytest.mark.slow
@pytest.mark.network
def test_a_worker_given_only_urls_writes_the_same_shards_into_a_bucket(s3: S3Server, tmp_path: Path) -> None:
    write_tones(tmp_path / "raw", [2.5, 3.0, 4.5, 6.0, 7.5, 2.2])
    plan = plan_run([str(tmp_path / "raw")], tmp_path / "local", CONFIG)
    chunk = max(plan.chunks, key=lambda c: len(c.tasks))
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir("chunks")
    url = "s3://chunks/night"

    record = process_chunk_isolated(chunk, CONFIG, plan.layout, url, s3.storage_options)
    local = process_chunk_isolated(chunk, CONFIG, plan.layout, tmp_path / "local")
    assert record == f"{url}/{STAGING_NAME}/{chunk.key}.json" and local == str(
        tmp_path / "local" / STAGING_NAME / Path(record).name
    )
    # Nothing was written locally for the URL's chunk: the local folder holds only its own.
    assert sorted(p.name for p in (tmp_path / "local").glob("*.arrow")) == sorted(
        p.rsplit("/", 1)[-1] for p in fs.glob("chunks/night/*.arrow")
    )

    remote = Location.of(url, s3.storage_options)
    assert chunk_is_complete(remote, chunk.key)
    in_bucket, on_disk = read_chunk_record(remote, chunk.key), read_chunk_record(tmp_path / "local", chunk.key)
    assert in_bucket.sources == on_disk.sources and in_bucket.shards == on_disk.shards
    assert in_bucket.index_rows().equals(on_disk.index_rows())
    for shard in in_bucket.shards:
        data = remote.read_bytes(shard.path)
        assert data == (tmp_path / "local" / shard.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes

    # Progress is read where the worker wrote it.
    remote.child(STAGING_NAME).write_bytes(PLAN_RECORD, json.dumps({"files_to_decode": 9, "chunks": 2}).encode())
    assert staged_progress(remote) == (len(chunk.tasks), 9)

    # Done is checked where the shards are: a shard gone from the bucket means decoding the chunk again.
    fs.rm(f"chunks/night/{in_bucket.shards[0].path}")
    assert not chunk_is_complete(remote, chunk.key)
    again = process_chunk_isolated(chunk, CONFIG, plan.layout, url, s3.storage_options)
    assert again == record and chunk_is_complete(remote, chunk.key)


def test_prepare_refuses_a_url_for_its_output_in_one_line_and_makes_no_local_folder(tmp_path: Path) -> None:
    with pytest.raises(W2VError, match=r"^s3://bucket/corpus: prepare's --out must be a local or shared folder"):
        prepare_output("s3://bucket/corpus")
    assert prepare_output(tmp_path / "shards") == tmp_path / "shards"
    command = [sys.executable, "-m", "w2v", "prepare", str(tmp_path), "--out", "s3://bucket/corpus"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "s3://bucket/corpus" in lines[0] and "local or shared folder" in lines[0], lines
    assert not (tmp_path / "s3:").exists()
