"""The prepare-corpus flow driven as a user drives it: the `w2v` command in a real subprocess.

Incremental runs decode only what is new or changed; `kill -9` at any moment followed by a re-run gives the
same folder as a run that was never interrupted, and never leaves a half-written shard referenced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.conftest import Corpus
from w2v.shards.manifest import MANIFEST_NAME, read_manifest
from w2v.shards.reader import open_table
from w2v.shards.verify import verify

pytestmark = pytest.mark.slow
W2V = [sys.executable, "-m", "w2v"]


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One Prefect home for the module, so the temporary server's database is migrated once."""
    home = tmp_path_factory.mktemp("prefect-home")
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _prepare_args(sources: Path, out: Path) -> list[str]:
    return [*W2V, "prepare", str(sources), "--out", str(out), "--files-per-chunk", "1", "--workers", "1"]


def _run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest: dict[str, Any] = json.loads((Path(args[args.index("--out") + 1]) / MANIFEST_NAME).read_text())
    return manifest


def _essence(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the folder holds, without when it was made or by how many runs."""
    return {k: v for k, v in manifest.items() if k not in {"created", "updated", "last_run", "generation"}}


def _shard_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    return {s["path"]: s["sha256"] for s in manifest["shards"]}


def test_incremental_runs_decode_only_new_or_changed_files(
    corpus: Corpus, tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    sources, out = tmp_path / "raw", tmp_path / "shards"
    sources.mkdir()
    for name in ("pcm16_16k.wav", "speech.flac", "notaudio.wav", "long_3min.wav"):
        shutil.copy(corpus.path(name), sources / name)

    first = _run(_prepare_args(sources, out), prefect_env)
    first_records = dict(read_manifest(out).sources)
    assert first["last_run"]["files_decoded"] == 4

    again = _run(_prepare_args(sources, out), prefect_env)
    assert again["last_run"]["files_decoded"] == 0 and again["last_run"]["files_unchanged"] == 4
    assert _shard_hashes(again) == _shard_hashes(first)

    for name in ("speech.ogg", "mulaw_8k.wav"):
        shutil.copy(corpus.path(name), sources / name)
    changed = sources / "speech.flac"
    audio, rate = sf.read(changed, dtype="int16")
    sf.write(changed, (audio // 2)[::-1], rate, subtype="PCM_16")
    grown = _run(_prepare_args(sources, out), prefect_env)
    assert grown["last_run"]["files_decoded"] == 3 and grown["last_run"]["files_unchanged"] == 3
    assert grown["counts"]["files_seen"] == 6

    # The changed file's old utterance is replaced by one made from its new content.
    uri = str(changed.resolve())
    assert read_manifest(out).sources[uri].audio_sha256 != first_records[uri].audio_sha256
    (row,) = [r for r in open_table(out).to_pylist() if r["source"] == uri]
    stored = np.asarray(row["audio"], dtype=np.float64)
    new_content = soxr.resample(sf.read(changed, dtype="float64")[0], rate, 16_000)
    n = min(stored.size, new_content.size)
    assert np.corrcoef(stored[:n], new_content[:n])[0, 1] > 0.999
    untouched = _shard_hashes(first)
    assert verify(out) == []
    # Shards without the changed file's utterances are kept as they were, byte for byte.
    kept_old = {p for p in untouched if p in _shard_hashes(grown)}
    assert kept_old and all(_shard_hashes(grown)[p] == untouched[p] for p in kept_old)
    assert not any((out / "_staging").glob("*"))


def test_kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run(
    corpus: Corpus, tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    reference = _run(_prepare_args(corpus.root, tmp_path / "reference"), prefect_env)

    out = tmp_path / "interrupted"
    kills = 0
    for delay in (2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0):
        process = subprocess.Popen(
            _prepare_args(corpus.root, out),
            env=prefect_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        if process.poll() is not None:
            break
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: the CLI, its Prefect server, its workers
        process.wait()
        kills += 1
        if (out / MANIFEST_NAME).exists():
            assert verify(out) == [], f"after kill -9 at {delay} s a referenced shard is damaged"
    assert kills >= 2

    resumed = _run(_prepare_args(corpus.root, out), prefect_env)
    assert _essence(resumed) == _essence(reference)
    for shard in resumed["shards"]:
        assert (out / shard["path"]).read_bytes() == (tmp_path / "reference" / shard["path"]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
