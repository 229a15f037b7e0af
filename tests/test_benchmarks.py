"""The benchmarks still run and print their figures (at a tiny scale: timings here mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_loader_benchmark_prints_its_ratios_as_json() -> None:
    command = [sys.executable, "benchmarks/loader.py", "--minutes", "0.5", "--repeat", "1", "--epochs", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    assert result["benchmark"] == "loader"
    assert set(result["ours_vs_seed"]) == {"ours_crop_inline", "ours_crop_2_workers", "ours_pad_inline"}
    assert all(value > 0 for value in result["ours_vs_seed"].values())
    assert 0 < result["wasted_share"]["seed_padding"] < 1
    assert result["masks_and_negatives_8x15s_cpu_1_thread"]["speedup"] > 0


@pytest.mark.slow
def test_the_training_benchmark_prints_its_ratios_as_json() -> None:
    command = [sys.executable, "benchmarks/train.py", "--minutes", "0.3", "--steps", "2", "--repeat", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    assert result["benchmark"] == "train"
    assert set(result["ours_vs_seed"]) == {"ours_inline", "ours_1_worker"}
    assert all(value > 0 for value in result["audio_seconds_per_second"].values())


def test_the_gpu_benchmark_refuses_in_one_line_without_a_gpu() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr


def test_the_shard_check_benchmark_prints_its_figures_as_json() -> None:
    command = [sys.executable, "benchmarks/verify.py", "--gb", "0.02", "--shard-mb", "5", "--small-shards", "20"]
    done = subprocess.run(
        [*command, "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout)
    assert result["benchmark"] == "verify" and result["shards"] == 4
    assert result["ours_vs_anchor_warm"] > 0 and set(result["first_check_gb_per_s_by_threads_warm"]) == {
        "1",
        "2",
        "3",
        "4",
    }
    assert 0 < result["second_start_small_shards_seconds"] < 1


@pytest.mark.slow
def test_the_scale_benchmark_prints_its_figures_as_json(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/scale.py", "--files", "40", "--workers", "1", "--corpus", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=True)
    result = json.loads(done.stdout)
    assert result["benchmark"] == "scale" and result["files"] == 40 and result["files_kept"] == 40
    assert result["utterances"] >= 40 and result["hours"] > 40 * 3 / 3600
    # The first run writes the audio at least once (the shards) and a manifest beside it.
    assert result["bytes_written_over_audio_bytes"] > 1
    assert result["first_run"]["bytes_written"]["decoding_children"] > 0
    assert result["manifest_bytes"] > 0 and result["corpus_open_s"] > 0
    assert {"list_plan", "decode", "commit", "report"} <= set(result["first_run"]["seconds"])
    assert result["first_run"]["peak_rss_mb"]["largest_child"] > 0
    assert result["noop"]["files_decoded"] == 0 and result["noop"]["peak_rss_mb"]["largest_child"] is None
    assert result["noop"]["bytes_written"]["total"] < result["audio_bytes_stored"] / 10
    assert result["grow_1pct"]["files_added"] == 1 and result["grow_1pct"]["files_decoded"] == 1


def test_the_synthetic_scale_benchmark_opens_and_plans_an_indexed_folder_without_audio() -> None:
    command = [sys.executable, "benchmarks/scale.py", "--synthetic", "20000"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=True)
    synthetic = json.loads(done.stdout)["synthetic"]
    assert synthetic["utterances"] == 20_000 and synthetic["shards"] >= 20
    assert synthetic["training"] + synthetic["held_out"] == 20_000 and synthetic["held_out"] > 0
    assert synthetic["batches_per_epoch"] > 0 and synthetic["sought_batch_rows"] > 0
    assert synthetic["open_s"] > 0 and synthetic["plan_s"] > 0 and synthetic["peak_rss_mb"] > 0
    assert synthetic["index_bytes"] > 20_000 * 20  # the index holds every row; the manifest only shards


@pytest.mark.slow
def test_the_short_file_benchmark_prints_both_anchored_ratios_as_json(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "benchmarks/prepare.py",
        "--short-files",
        "24",
        "--repeat",
        "1",
        "--corpus",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    assert result["benchmark"] == "prepare (short files)" and result["files"] == 24
    ratios = ("decode_per_file_vs_floor", "decode_per_file_vs_floor_measured", "two_worker_speedup")
    for ratio in (*ratios, "two_worker_speedup_unpinned", "floor_two_process_speedup"):
        assert result[ratio] > 0, ratio
    # The measured anchor pays for the measurements on top of the floor.
    assert result["seconds"]["floor_measured"] > result["seconds"]["floor"]
    assert set(result["targets"]) == {*ratios, "two_worker_speedup_vs_floor_speedup", "flow_fixed_cost_s"}


def test_the_shard_list_benchmark_compares_json_with_the_table() -> None:
    command = [sys.executable, "benchmarks/scale.py", "--shard-list", "12000"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(done.stdout)["shard_list"]
    assert figures["shards"] == 12_000
    assert figures["columnar"]["manifest_bytes"] < 2_000 < 12_000 * 200 < figures["json"]["manifest_bytes"]
    assert figures["columnar"]["bytes"] < figures["json"]["bytes"]


@pytest.mark.slow
def test_the_learning_benchmark_compares_both_inits_on_every_task() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/learning.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmark"] == "learning" and set(result["tasks"]) == {"ctc", "classify", "speaker"}
    assert 20 <= result["corpus"]["test_utterances"] <= 30 and result["pretraining"]["runs"][0]["steps"] == 30
    for task in result["tasks"].values():
        assert len(task["pretrained"]["seeds"]) == len(task["random_init"]["seeds"]) == 1
        assert task["pretrained"]["mean"] >= 0 and task["random_init"]["mean"] >= 0 and 0 < task["chance"] <= 1
    assert isinstance(result["pretrained_ahead_everywhere"], bool) and "collapsed" in result["pretraining"]["runs"][0]


def test_the_cache_replay_benchmark_compares_windows_caches_and_policies() -> None:
    command = [sys.executable, "benchmarks/cache_replay.py", "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout)
    rows = {(r["shuffle_window_shards"], r["cache_share"], r["policy"]): r for r in result["results"]}
    assert len(rows) == 2 * 4 * 2  # a full shuffle and one window; four cache sizes; two policies
    for key, row in rows.items():
        assert row["fetched_first_epoch"] >= 1.0 and 0 <= row["hit_rate"] <= 1, key
        if key[0] is not None and key[1] == 0.25:  # the window fits: the corpus is fetched about once
            assert row["fetched_per_epoch"] <= 1.0 and row["mixing"] < 1, key
    assert rows[(None, 0.1, "plan")]["fetched_per_epoch"] > 10  # a full shuffle thrashes a small cache
    assert rows[(None, 0.1, "plan")]["fetched_per_epoch"] < rows[(None, 0.1, "lru")]["fetched_per_epoch"]


@pytest.mark.slow
@pytest.mark.network
def test_the_streaming_benchmark_trains_from_a_slowed_bucket_for_each_cache_and_policy() -> None:
    command = [sys.executable, "benchmarks/streaming.py", "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmark"] == "streaming" and result["store"] == {"latency_ms": 50.0, "megabytes_per_second": 200.0}
    rows = {(r["cache_share"], r["policy"]): r for r in result["results"]}
    assert set(rows) == {(0.1, "plan"), (0.1, "lru"), (1.0, "plan"), (1.0, "lru")}
    for key, row in rows.items():
        assert row["throughput_vs_local"] > 0 and 0 <= row["hit_rate"] <= 1 and 0 <= row["data_wait_share"] < 1, key
    for policy in ("plan", "lru"):
        whole = rows[(1.0, policy)]  # a cache that holds the corpus fetches each shard once, whatever is read
        assert whole["fetched_per_epoch"] == round(1 / result["epochs"], 3) and whole["mixing"] == 1.0
        window = rows[(0.1, policy)]
        assert window["shuffle_window_shards"] == 1 and window["mixing"] < 1 and window["speaker_mixing"] < 1
        assert 0 < window["fetched_per_epoch"] <= 1.5  # the windows walk the corpus about once
