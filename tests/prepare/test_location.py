"""A worker writes a chunk's shards and record through a Location: a local folder, or a URL on moto's S3
server (127.0.0.1), so a worker on another machine needs only the folder's URL."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from tests.servers import S3Server, moto_s3_server
from tests.tones import write_tones
from w2v.data.corpus import ShardCorpus
from w2v.data.staging import stage_shards
from w2v.prepare.config import PrepareConfig
from w2v.prepare.isolated import process_chunk_isolated
from w2v.prepare.pipeline import plan_run, prepare
from w2v.prepare.progress import PLAN_RECORD, STAGING_NAME, staged_progress
from w2v.prepare.shard_writer import chunk_is_complete, read_chunk_record
from w2v.quality_filters import QualityThresholds
from w2v.shards import lock
from w2v.shards.location import Location
from w2v.shards.lock import LEASE_SECONDS, LOCK_NAME, FolderBusy, exclusive_writer
from w2v.shards.manifest import Manifest, read_manifest
from w2v.shards.verify import verify

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


def test_a_location_pickles_and_prints_without_its_credentials() -> None:
    options = {
        "endpoint_url": "http://127.0.0.1:1",
        "key": "AKIA-TEST",
        "client_kwargs": {"aws_secret_access_key": "S"},
    }
    folder = Location.of("s3://bucket/corpus", options)
    assert "AKIA" not in repr(folder)
    packed = pickle.dumps(folder)
    assert b"AKIA-TEST" not in packed and b"aws_secret_access_key" not in packed
    back = pickle.loads(packed)
    assert back == folder and back.storage_options == {"endpoint_url": "http://127.0.0.1:1", "client_kwargs": {}}


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
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()  # no local stand-in for the URL
    # The local folder holds only its own chunk's files.
    assert sorted(p.name for p in (tmp_path / "local").glob("*.arrow")) == sorted(
        p.rsplit("/", 1)[-1] for p in fs.glob("chunks/night/*.arrow")
    )

    remote = Location.of(url, s3.storage_options)
    assert chunk_is_complete(remote, chunk.key)
    listed = remote.names()  # then another process writes a file: this one must see it at once
    s3fs.S3FileSystem(**s3.storage_options, skip_instance_cache=True).pipe_file("chunks/night/late.json", b"{}")  # type: ignore[arg-type]
    assert remote.size("late.json") == 2 and "late.json" in remote.names() and "late.json" not in listed
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


def _essence(manifest: Manifest) -> dict[str, object]:
    data = manifest.to_json()
    return {k: v for k, v in data.items() if k not in {"created", "updated", "last_run", "versions"}}


@pytest.mark.slow
@pytest.mark.network
def test_prepare_into_a_bucket_commits_there_as_it_would_locally_and_grows_by_what_is_new(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    first = write_tones(raw, [2.5, 3.0, 4.5, 6.0, 7.5, 2.2])
    (raw / "zz_copy.wav").write_bytes(first[0].read_bytes())  # a duplicate: the commit rewrites a shard
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir("grown")
    url = "s3://grown/corpus"

    local = prepare([str(raw)], tmp_path / "local", CONFIG, workers=2)
    remote = prepare([str(raw)], url, CONFIG, workers=2, storage_options=s3.storage_options)
    assert _essence(remote) == _essence(local)
    assert _essence(read_manifest(Location.of(url, s3.storage_options))) == _essence(local)
    listed = {p.rsplit("/", 1)[-1] for p in fs.ls("grown/corpus", refresh=True)}
    assert listed == {p.name for p in (tmp_path / "local").iterdir() if p.name != ".lock"}  # nothing else left
    for file in remote.training_files:
        data = fs.cat_file(f"grown/corpus/{file.path}")
        assert hashlib.sha256(data).hexdigest() == file.sha256 and len(data) == file.bytes
    assert remote.sources[str((raw / "zz_copy.wav").resolve())].reason == "duplicate"

    # Training stages the bucket like any other (each shard checked as it arrives) and opens it.
    staged = stage_shards(url, tmp_path / "cache", storage_options=s3.storage_options)
    assert staged.shards == len(remote.shards) and len(ShardCorpus(staged.folder)) == remote.counts()["utterances"]
    assert verify(tmp_path / "local") == []

    # What a flow passes between tasks (the plan, the manifest) pickles without the secret key.
    plan = plan_run([str(raw)], url, CONFIG, storage_options=s3.storage_options)
    assert b"testing" not in pickle.dumps(plan) and b"testing" not in pickle.dumps(remote)
    write_tones(raw, [5.5], seed=3)
    grown = prepare([str(raw)], url, CONFIG, workers=2, storage_options=s3.storage_options)
    assert grown.last_run["files_decoded"] == 1 and grown.last_run["files_unchanged"] == 7
    assert grown.generation == 2 and grown.counts()["utterances"] == remote.counts()["utterances"] + 1
    assert not fs.exists("grown/corpus/_staging") and not fs.exists("grown/corpus/.lock")

    # The bucket folder is checked where it is, from the command line too (credentials from the environment).
    folder = Location.of(url, s3.storage_options)
    downloads: list[str] = []
    real_read = Location.read_bytes

    def counted(place: Location, name: str) -> bytes:
        downloads.append(name)
        return real_read(place, name)

    monkeypatch.setattr(Location, "read_bytes", counted)
    assert verify(folder) == []
    assert sorted(n for n in downloads if n.endswith(".arrow") and n.startswith("b")) == sorted(
        s.path for s in grown.shards
    )  # each shard downloaded once: hashed and parsed from the same bytes, the index checked against them
    monkeypatch.undo()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    options = json.dumps({"endpoint_url": s3.endpoint_url})
    for command in (["verify", url], ["inspect", url, "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "w2v", "shards", *command, "--storage-options", options],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["utterances"] == grown.counts()["utterances"]
    first_shard, second_shard = (s.path for s in grown.shards[:2])
    damaged = bytearray(fs.cat_file(f"grown/corpus/{first_shard}"))
    damaged[-1] ^= 0xFF
    fs.pipe_file(f"grown/corpus/{first_shard}", bytes(damaged))
    fs.rm_file(f"grown/corpus/{second_shard}")
    problems = verify(folder)
    assert f"{url}/{first_shard}: sha256 " in problems[0] and "(corrupted or replaced)" in problems[0]
    assert problems[1] == f"{url}/{second_shard}: missing"


@pytest.mark.slow
@pytest.mark.network
def test_a_live_lease_on_a_bucket_folder_stops_a_second_run_and_an_expired_one_is_taken_over(
    s3: S3Server, tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir("leased")
    folder = Location.of("s3://leased/corpus", s3.storage_options)
    with exclusive_writer(folder):
        holder = json.loads(folder.read_bytes(LOCK_NAME))
        busy = r"^s3://leased/corpus: another w2v prepare \(host .*renewed \d+ s ago\)"
        with pytest.raises(FolderBusy, match=busy), exclusive_writer(folder):
            pass
        assert json.loads(folder.read_bytes(LOCK_NAME))["token"] == holder["token"]  # the live lease stands
    assert not folder.exists(LOCK_NAME)

    dead = {"token": "dead", "host": "gone", "pid": 1, "renewed": time.time() - LEASE_SECONDS - 1}
    folder.write_bytes(LOCK_NAME, json.dumps(dead).encode())  # a run that died holding it
    with exclusive_writer(folder):
        assert json.loads(folder.read_bytes(LOCK_NAME))["token"] != "dead"
    assert not folder.exists(LOCK_NAME)


@pytest.mark.slow
@pytest.mark.network
def test_a_held_lease_is_renewed_and_a_run_whose_lease_was_taken_says_so(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock, "RENEW_SECONDS", 0.2)
    s3fs.S3FileSystem(**s3.storage_options).mkdir("renewed")  # type: ignore[arg-type]
    folder = Location.of("s3://renewed/corpus", s3.storage_options)
    with exclusive_writer(folder):
        first = json.loads(folder.read_bytes(LOCK_NAME))
        deadline = time.monotonic() + 30
        while json.loads(folder.read_bytes(LOCK_NAME))["renewed"] == first["renewed"]:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.1)
    assert not folder.exists(LOCK_NAME)

    with pytest.raises(FolderBusy, match="lease was taken over by another run"), exclusive_writer(folder):
        other = {"token": "other", "host": "elsewhere", "pid": 2, "renewed": time.time()}
        folder.write_bytes(LOCK_NAME, json.dumps(other).encode())  # as if this run had paused past its lease
        time.sleep(1.0)
    assert json.loads(folder.read_bytes(LOCK_NAME))["token"] == "other"  # the other run's lease is left alone


@pytest.mark.slow
@pytest.mark.network
def test_of_two_runs_that_find_the_same_expired_lease_only_one_takes_it(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3fs.S3FileSystem(**s3.storage_options).mkdir("raced")  # type: ignore[arg-type]
    folder = Location.of("s3://raced/corpus", s3.storage_options)
    dead = {"token": "dead", "host": "gone", "pid": 1, "renewed": time.time() - LEASE_SECONDS - 1}
    folder.write_bytes(LOCK_NAME, json.dumps(dead).encode())
    seen = folder.version(LOCK_NAME)
    assert folder.replace_if_version(LOCK_NAME, b"{}", "0" * 32) is None  # not the version there: refused

    lock._take_over_if_expired(folder, "first")
    # The second run read the expired lease, and its version, before the first replaced it.
    monkeypatch.setattr(Location, "version", lambda self, name: seen)
    monkeypatch.setattr(lock, "_read_lease", lambda place: dead)
    with pytest.raises(FolderBusy, match="took over this folder's expired lease just now"):
        lock._take_over_if_expired(folder, "second")
    assert json.loads(folder.read_bytes(LOCK_NAME))["token"] == "first"
