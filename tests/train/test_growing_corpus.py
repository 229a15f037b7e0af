"""A nightly run resumes over a corpus that grew since its checkpoint: the new utterances join at once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.data.shard_folders import write_shard_folder
from w2v.data.loader import LoaderConfig
from w2v.data.plan import BatchConfig
from w2v.data.stream import BatchStream, CorpusCursor, StreamState
from w2v.run.checkpoint import complete_checkpoints
from w2v.train.config import TrainConfig
from w2v.train.recipe import pretrain

CONFIG = {
    "seed": 4,
    "max_steps": 4,
    "log_every": 2,
    "checkpoint_every": 2,
    "val_share": 0,
    "model": {"preset": "tiny"},
    "batch": {"max_batch_seconds": 6.0, "max_sample_seconds": 2.0},
    "masking": {"num_negatives": 10},
    "optim": {"lr": 1e-3, "warmup_steps": 1},
}


def test_a_grown_corpus_starts_a_new_epoch_over_all_its_utterances() -> None:
    config = BatchConfig(max_batch_seconds=6.0, max_sample_seconds=2.0)
    lengths = np.full(40, 32_000)
    saved = StreamState(seed=1, position=7, corpora=(CorpusCursor(epoch=2, cursor=5, utterances=30),))
    stream = BatchStream([lengths], config, seed=1)
    adopted, changes = stream.adopt(saved)
    assert adopted == StreamState(seed=1, position=7, corpora=(CorpusCursor(3, 0, 40),))
    assert changes == ["corpus 0: 30 → 40 utterances; epoch 3 starts now over all of them (epoch 2 stopped after 5 "
                       "micro-batches)"]  # fmt: skip
    # Next epoch: every utterance, old and new, exactly once.
    seen = np.concatenate(stream.plan(0, 3))
    assert sorted(seen.tolist()) == list(range(40))
    # Unchanged (or saved before sizes were recorded): the state is taken as it is.
    same = StreamState(seed=1, position=7, corpora=(CorpusCursor(2, 5, 40),))
    assert stream.adopt(same) == (same, [])
    legacy = StreamState(seed=1, position=7, corpora=(CorpusCursor(2, 5, None),))
    assert stream.adopt(legacy) == (same, [])


def test_training_resumes_over_the_grown_shards_and_reads_the_new_utterances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = tmp_path / "shards"
    write_shard_folder(shards, [32_000] * 24)
    run = tmp_path / "run"
    pretrain(TrainConfig.from_dict(CONFIG), [str(shards)], run, loader=LoaderConfig(num_workers=0))
    write_shard_folder(shards, [32_000] * 36)  # the day's prepare added 12 utterances
    with caplog.at_level(logging.INFO, logger="w2v.data"):
        result = pretrain(
            TrainConfig.from_dict({**CONFIG, "max_steps": 8}), [str(shards)], run, loader=LoaderConfig(num_workers=0)
        )
    assert result.steps == 8
    assert any("24 → 36 utterances" in record.message for record in caplog.records)
    state = json.loads((complete_checkpoints(run)[-1] / "trainer.json").read_text())["loader_state"]
    (corpus,) = state["corpora"]
    assert corpus["utterances"] == 36 and corpus["epoch"] >= 1
