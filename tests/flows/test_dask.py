"""Scale-out: `w2v prepare --dask-address` decodes on a Dask cluster's workers and gives the same shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import speak
from tests.servers import dask_cluster

pytestmark = pytest.mark.slow


def _prepare(raw: Path, out: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "w2v", "prepare", str(raw), "--out", str(out), "--files-per-chunk", "1"]
    done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
