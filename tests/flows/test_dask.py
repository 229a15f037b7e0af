"""Scale-out: `w2v prepare --dask-address` decodes on a Dask cluster's workers and gives the same shards, also
when the workers are given only URLs (sources and folder in a bucket on moto's S3 server, 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import s3fs

from tests.corpus import speak
from tests.servers import dask_cluster, moto_s3_server

pytestmark = pytest.mark.slow


def _run(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "w2v", "prepare", *arguments, "--files-per-chunk", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _prepare(raw: Path | str, out: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    _run([str(raw), "--out", str(out), *extra], env)
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def _essence(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in {"created", "updated", "last_run", "generation"}}


def test_a_two_worker_dask_cluster_gives_the_same_manifest_as_a_local_run(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(6):
        speak(
            f"Sentence number {k} is long enough to be kept as a whole utterance.", "en", raw / f"{k}.wav", 120 + 9 * k
        )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    local = _prepare(raw, tmp_path / "local", env, "--workers", "1")
    with dask_cluster(workers=2) as address:
        spread = _prepare(raw, tmp_path / "dask", env, "--dask-address", address)
    assert _essence(spread) == _essence(local)
    assert len(local["shards"]) > 0


@pytest.mark.network
def test_dask_workers_given_only_urls_prepare_a_bucket_from_a_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials as a worker machine would have them: in its environment, never on the command line.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(4):
        speak(f"Recording {k} was uploaded to a bucket before anyone prepared it.", "en", raw / f"{k}.wav", 130 + 7 * k)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with moto_s3_server() as s3:
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3.endpoint_url)
        fs.mkdir("raw-audio")
        fs.mkdir("corpora")
        fs.put(str(raw), "raw-audio/talks", recursive=True)
        options = ["--storage-options", json.dumps({"endpoint_url": s3.endpoint_url})]
        here = _prepare("s3://raw-audio/talks/", tmp_path / "here", env, "--workers", "1", *options)
        with dask_cluster(workers=2) as address:
            out = "s3://corpora/talks"
            done = _run(["s3://raw-audio/talks/", "--out", out, "--dask-address", address, *options], env)
        there = json.loads(fs.cat_file("corpora/talks/manifest.json"))
        assert _essence(there) == _essence(here) and len(there["shards"]) > 0
        assert f"{out}: " in done.stdout + done.stderr  # the summary names the bucket folder
        for shard in there["shards"]:
            assert hashlib.sha256(fs.cat_file(f"corpora/talks/{shard['path']}")).hexdigest() == shard["sha256"]
        assert not fs.exists("corpora/talks/_staging") and not fs.exists("corpora/talks/.lock")
        assert not list(tmp_path.glob("s3*")) and not list(Path.cwd().glob("s3:*"))  # no local stand-in
