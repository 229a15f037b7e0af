"""w2v doctor on shard folders (whole, damaged, badly shaped for training) and on this machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.shard_folders import write_shard_folder
from tests.servers import free_port
from w2v.data.plan import BatchConfig
from w2v.doctor.environment import diagnose_environment
from w2v.doctor.shards import diagnose_shards


def _problems(folder: Path, batch: BatchConfig | None = None) -> dict[str, str]:
    return {f.check: f.severity for f in diagnose_shards(folder, batch) if f.problem}


def test_a_whole_well_shaped_folder_has_no_problem(tmp_path: Path) -> None:
    folder = write_shard_folder(tmp_path / "s", [48_000] * 40)  # 3 s each: no cropping, no padding
    assert _problems(folder) == {}


def test_a_damaged_shard_is_an_integrity_error(tmp_path: Path) -> None:
    folder = write_shard_folder(tmp_path / "s", [48_000] * 40)
    shard = sorted(folder.glob("*.arrow"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    findings = {f.check: f for f in diagnose_shards(folder)}
    assert findings["integrity"].severity == "error" and "re-run w2v prepare" in findings["integrity"].remedy


def test_mostly_short_utterances_and_wasteful_batches_are_flagged(tmp_path: Path) -> None:
    short = write_shard_folder(tmp_path / "short", [16_000] * 30 + [64_000] * 3)
    assert _problems(short)["durations"] == "warning"
    lengths = sorted(int(x) for x in np.random.default_rng(0).integers(16_000, 240_000, 60))  # as prepare sorts
    mixed = write_shard_folder(tmp_path / "mixed", lengths)
    # One pool of random lengths with no length tolerance to speak of: cropping to the shortest wastes audio.
    wasteful = BatchConfig(max_batch_seconds=120.0, num_buckets=1, pool_batches=1, length_tolerance=10.0)
    findings = {f.check: f for f in diagnose_shards(mixed, wasteful)}
    assert findings["batch_waste"].severity == "warning" and findings["batch_waste"].numbers["waste_share"] > 0.1


def test_the_machine_check_lists_packages_and_reports_an_unreachable_prefect_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    findings = {f.check: f for f in diagnose_environment(tmp_path)}
    assert findings["packages"].severity == "ok" and "torch" in findings["packages"].message
    assert findings["libsndfile"].severity == "ok" and findings["disk"].severity == "ok"
    assert findings["prefect"].severity == "error" and "does not answer" in findings["prefect"].message
    monkeypatch.delenv("PREFECT_API_URL")
    assert {f.check: f for f in diagnose_environment(tmp_path)}["prefect"].severity == "ok"


def test_free_disk_is_judged_against_three_times_the_corpus(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    roomy = {f.check: f for f in diagnose_environment(tmp_path, corpus_bytes=1000)}["disk"]
    cramped = {f.check: f for f in diagnose_environment(tmp_path, corpus_bytes=free)}["disk"]
    assert roomy.severity == "ok"
    assert cramped.severity == "warning" and "3× the corpus" in cramped.message
