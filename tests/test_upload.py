"""Uploads to moto's S3 server on 127.0.0.1: verified, idempotent, and complete even when the server dies midway."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs

from tests.servers import S3Server, free_port, moto_s3_server
from w2v.upload import MARKER, RetryPolicy, UploadError, upload_folder

pytestmark = [pytest.mark.slow, pytest.mark.network]
FAST = RetryPolicy(attempts=30, first_wait_seconds=0.2, max_wait_seconds=1.0)


def _checkpoint(folder: Path, files: int = 4, megabytes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for k in range(files):
        path = folder / ("model" if k % 2 else "accelerate") / f"part-{k}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(megabytes << 20))
    (folder / "trainer.json").write_text('{"step": 10}\n')
    return folder


def _fs(server: S3Server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)  # type: ignore[arg-type]


def test_an_upload_is_read_back_marked_complete_and_not_repeated(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "step-00000010")
    with moto_s3_server() as server:
        _fs(server).mkdir("runs")
        url = "s3://runs/nightly/step-00000010"
        first = upload_folder(local, url, server.storage_options, FAST)
        assert first.files == 5 and first.bytes_put == sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        fs = _fs(server)
        for path in local.rglob("*"):
            if path.is_file():
                assert fs.cat_file(f"runs/nightly/step-00000010/{path.relative_to(local)}") == path.read_bytes()
        marker = json.loads(fs.cat_file(f"runs/nightly/step-00000010/{MARKER}"))
        assert set(marker["files"]) == {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
        again = upload_folder(local, url, server.storage_options, FAST)
        assert again.already_complete and again.bytes_put == 0
        # A changed local file is uploaded again, and only that one.
        (local / "trainer.json").write_text('{"step": 11}\n')
        changed = upload_folder(local, url, server.storage_options, FAST)
        assert not changed.already_complete and changed.bytes_put == (local / "trainer.json").stat().st_size


def test_the_server_dying_mid_upload_and_coming_back_still_ends_complete_and_verified(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "ckpt", files=6, megabytes=4)
    port = free_port()
    url = "s3://runs/crash/ckpt"
    outcome: dict[str, object] = {}
    with moto_s3_server(port=port) as server:
        _fs(server).mkdir("runs")
        options = server.storage_options

        def run() -> None:
            try:
                outcome["result"] = upload_folder(local, url, options, FAST)
            except Exception as error:  # reported to the test thread
                outcome["error"] = error

        uploader = threading.Thread(target=run)
        uploader.start()
        deadline = time.monotonic() + 60
        fs = _fs(server)
        while not fs.exists("runs/crash/ckpt/accelerate/part-0.bin"):  # some files are up: now kill it
            assert time.monotonic() < deadline and uploader.is_alive()
            time.sleep(0.05)
            fs.invalidate_cache()
    # The server is dead here (killed by PID); nothing may be marked complete while it is away.
    time.sleep(1.0)
    with moto_s3_server(port=port) as server:  # a fresh server: it remembers nothing
        uploader.join(timeout=120)
        assert not uploader.is_alive()
        assert "error" not in outcome, outcome.get("error")
        fs = _fs(server)
        for path in local.rglob("*"):
            if path.is_file():
                assert fs.cat_file(f"runs/crash/ckpt/{path.relative_to(local)}") == path.read_bytes()
        assert fs.exists(f"runs/crash/ckpt/{MARKER}")


def test_a_destination_that_never_comes_back_fails_without_a_marker(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "ckpt", files=1, megabytes=1)
    options = {"endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "testing", "secret": "testing"}
    with pytest.raises(UploadError, match="failed 2 times"):
        upload_folder(local, "s3://runs/never/ckpt", options, RetryPolicy(attempts=2, first_wait_seconds=0.1))


def test_a_local_folder_is_the_default_kind_of_destination(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "ckpt", files=2, megabytes=1)
    result = upload_folder(local, str(tmp_path / "bucket" / "ckpt"))
    assert result.files == 3
    assert (tmp_path / "bucket" / "ckpt" / MARKER).is_file()
    assert (tmp_path / "bucket" / "ckpt" / "trainer.json").read_text() == '{"step": 10}\n'


def test_identical_files_are_sent_once_and_copied_by_the_destination(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "step-00000010", files=2, megabytes=2)
    weights = local / "model" / "part-1.bin"
    (local / "accelerate" / "model.safetensors").hardlink_to(weights)  # as checkpoints keep their weights
    (local / "copy-of-weights.bin").write_bytes(weights.read_bytes())
    with moto_s3_server() as server:
        url = "s3://runs/dedup/step-00000010"
        result = upload_folder(local, url, server.storage_options, FAST)
        distinct = {p.read_bytes() for p in local.rglob("*") if p.is_file()}
        assert result.bytes_put == sum(len(b) for b in distinct)
        fs = _fs(server)
        for path in local.rglob("*"):
            if path.is_file():
                assert fs.cat_file(f"runs/dedup/step-00000010/{path.relative_to(local)}") == path.read_bytes()
