"""The out-of-memory guard: a step that does not fit is retried in smaller pieces over the same utterances."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.data.shard_folders import write_shard_folder
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig
from w2v.errors import W2VError
from w2v.run.checkpoint import complete_checkpoints
from w2v.run.guards import smaller_micro_batches
from w2v.run.harness import StepReport
from w2v.run.memory import MARKER, SIMULATE_ENV, OutOfMemory, marker_split
from w2v.run.metrics import read_metrics
from w2v.run.state import RunState
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

SECONDS = 2.0
RATE = 16_000


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Equal lengths: a 6 s budget packs 3 utterances (96,000 samples) per micro-batch, nothing cropped.
    return write_shard_folder(tmp_path_factory.mktemp("oom-shards"), [int(SECONDS * RATE)] * 30)


def _config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "seed": 5,
        "max_steps": 6,
        "log_every": 1,
        "checkpoint_every": 3,
        "val_share": 0,
        "gradient_accumulation": 2,
        "model": {"preset": "tiny"},
        "batch": {"max_batch_seconds": 6.0, "max_sample_seconds": SECONDS},
        "masking": {"num_negatives": 10},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
    }
    return TrainConfig.from_dict({**values, **overrides})


def _rows(batches: Any) -> list[tuple[int, list[int]]]:
    return [(int(b.position), [int(x) for x in b.num_samples]) for b in batches]


def test_a_split_loader_reads_the_same_utterances_in_pieces(shards: Path) -> None:
    corpus = ShardCorpus(shards)
    config = BatchConfig(max_batch_seconds=6.0, max_sample_seconds=SECONDS)
    whole = list(make_loader([corpus], config, 1, max_batches=6, loader=LoaderConfig(num_workers=0)))
    pieces = list(make_loader([corpus], config, 1, max_batches=6, loader=LoaderConfig(num_workers=0), split=2))
    for batch in whole:
        mine = [p for p in pieces if p.position == batch.position]
        assert [p.piece for p in mine] == list(range(mine[0].pieces))
        assert sum(p.input_values.shape[0] for p in mine) == batch.input_values.shape[0]
        assert all(p.input_values.shape[0] <= (batch.input_values.shape[0] + 1) // 2 for p in mine)
        assert all(p.state_after == batch.state_after for p in mine)
    with pytest.raises(W2VError, match="split must be at least 1"):
        make_loader([corpus], config, 1, split=0)


def test_an_out_of_memory_step_is_retried_in_halves_and_the_run_reads_the_same_stream(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[StepReport] = []
    plain = pretrain(_config(), [str(shards)], tmp_path / "plain", loader=LoaderConfig(num_workers=0),
                     on_step=reports.append)  # fmt: skip
    assert [(r.step, r.max_steps) for r in reports] == [(k, 6) for k in range(1, 7)]  # the progress bar's
    monkeypatch.setenv(SIMULATE_ENV, "70000")  # 3 rows × 32,000 do not fit; 2 rows do
    guarded = pretrain(_config(), [str(shards)], tmp_path / "guarded", loader=LoaderConfig(num_workers=0))
    assert guarded.steps == plain.steps == 6 and guarded.skipped_steps == 0
    records = read_metrics(tmp_path / "guarded")
    assert records[0]["oom_events"] == 1 and records[0]["micro_batch_split"] == 2
    assert records[-1]["oom_events"] == 1
    # Every update covered the same planned micro-batches as without the guard: the same stream state.
    for a, b in zip(complete_checkpoints(tmp_path / "plain"), complete_checkpoints(tmp_path / "guarded"), strict=True):
        saved_a, saved_b = (json.loads((c / "trainer.json").read_text()) for c in (a, b))
        assert saved_a["loader_state"] == saved_b["loader_state"]
        assert saved_b["tracking"]["micro_batch_split"] == 2
    # Resumed, it keeps the smaller pieces without running out of memory again.
    more = pretrain(_config(max_steps=8), [str(shards)], tmp_path / "guarded", loader=LoaderConfig(num_workers=0))
    assert more.steps == 8
    last = read_metrics(tmp_path / "guarded")[-1]
    assert last["step"] == 8 and last["micro_batch_split"] == 2 and last["oom_events"] == 1


def test_a_single_utterance_that_does_not_fit_stops_with_the_remedy(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIMULATE_ENV, "1000")
    with pytest.raises(W2VError, match=r"single utterance of 32000 samples: lower batch.max_sample_seconds"):
        pretrain(_config(), [str(shards)], tmp_path / "run", loader=LoaderConfig(num_workers=0))


def test_with_several_processes_the_failing_rank_asks_the_resumed_run_for_smaller_pieces(
    shards: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    accelerator: Any = SimpleNamespace(num_processes=2, process_index=1)
    with pytest.raises(W2VError, match=r"rank 1 ran out of memory at step 4 .* reads micro-batches in 4 pieces"):
        smaller_micro_batches(accelerator, run, OutOfMemory(3, 32_000, 17), RunState(step=3, micro_batch_split=2))
    assert marker_split(run) == 4
    assert marker_split(tmp_path / "elsewhere") == 1
    # The resumed (here: first) run takes the split from the marker, and drops the marker once a
    # checkpoint holds it.
    pretrain(_config(max_steps=3), [str(shards)], run, loader=LoaderConfig(num_workers=0))
    assert read_metrics(run)[-1]["micro_batch_split"] == 4
    assert not (run / MARKER).exists()
    saved = json.loads((complete_checkpoints(run)[-1] / "trainer.json").read_text())
    assert saved["tracking"]["micro_batch_split"] == 4 and np.isfinite(saved["metrics"]["loss"])
