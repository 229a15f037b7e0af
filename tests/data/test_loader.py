"""The loader end to end on real shard files: the right audio, normalized, cropped or padded, resumable."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.shard_folders import RATE, samples_of, window_start, write_shard_folder
from w2v.audio import normalize
from w2v.data.collate import collate
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.mixture import parse_shards_arg
from w2v.data.plan import BatchConfig
from w2v.data.stream import StreamState
from w2v.errors import ShardError, W2VError

LENGTHS = [int(x) for x in np.random.default_rng(0).integers(RATE // 2, 3 * RATE, 230)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> ShardCorpus:
    return ShardCorpus(write_shard_folder(tmp_path_factory.mktemp("synthetic"), LENGTHS, rows_per_shard=70))


def test_each_utterance_reads_back_as_written_without_copying(corpus: ShardCorpus) -> None:
    assert len(corpus) == len(LENGTHS)
    assert corpus.num_samples.tolist() == LENGTHS
    for k in (0, 69, 70, 229):
        audio = corpus.audio(k)
        assert np.array_equal(audio, samples_of(k, LENGTHS[k]))
        assert not audio.flags.owndata  # a view into the memory map


@pytest.mark.parametrize(("mode", "multiple"), [("crop", 1), ("crop", 1600), ("crop", 20_000), ("pad", 1)])
def test_rows_are_normalized_windows_of_the_planned_utterances(corpus: ShardCorpus, mode: str, multiple: int) -> None:
    config = BatchConfig(max_batch_seconds=8.0, mode=mode, max_sample_seconds=2.0, crop_to_multiple_of=multiple)
    indices = np.array([3, 17, 150, 229])
    batch = collate(corpus, indices, config, np.random.default_rng(0))
    rows = batch.num_samples.numpy()
    lengths = np.array([LENGTHS[k] for k in indices])
    capped = np.minimum(lengths, config.max_sample_size)
    if mode == "crop":
        assert batch.attention_mask is None
        # Every row the batch's shortest, rounded down to the multiple unless shorter than it.
        shortest = capped.min()
        width = shortest if shortest < multiple else shortest - shortest % multiple
        assert (rows == width).all() and batch.input_values.shape == (4, width)
        assert batch.padded_samples == 0
    else:
        assert batch.input_values.shape[1] % 8 == 0 and batch.input_values.shape[1] >= capped.max()
        assert batch.attention_mask is not None
        assert torch.equal(batch.attention_mask.sum(dim=1), batch.num_samples.to(torch.int64))
        assert batch.padded_samples == batch.input_values.numel() - int(rows.sum())
        assert float(batch.input_values[batch.attention_mask == 0].abs().max()) == 0.0
    assert batch.cropped_samples == int(lengths.sum() - rows.sum())
    for row, k in enumerate(indices.tolist()):
        values = batch.input_values[row, : rows[row]].numpy()
        start = window_start(values, k, float(corpus.mean[k]), float(corpus.std[k]))
        assert 0 <= start <= LENGTHS[k] - rows[row]
        expected = normalize(samples_of(k, LENGTHS[k])[start : start + rows[row]], corpus.mean[k], corpus.std[k])
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)


def _drain(loader: torch.utils.data.DataLoader, count: int) -> list:
    return [
        (b.position, b.num_samples.tolist(), b.input_values.sum().item(), b.state_after)
        for b in itertools.islice(loader, count)
    ]


def test_workers_deliver_the_same_batches_in_the_same_order_as_the_main_process(corpus: ShardCorpus) -> None:
    config = BatchConfig(max_batch_seconds=10.0)
    inline = _drain(make_loader([corpus], config, seed=3, max_batches=12, loader=LoaderConfig(num_workers=0)), 12)
    workers = _drain(make_loader([corpus], config, seed=3, max_batches=12, loader=LoaderConfig(num_workers=2)), 12)
    assert inline == workers
    assert [p for p, *_ in inline] == list(range(12))


def test_resuming_from_a_batch_state_with_another_world_size_reads_the_rest(corpus: ShardCorpus) -> None:
    config = BatchConfig(max_batch_seconds=10.0)
    inline = LoaderConfig(num_workers=0)
    straight = _drain(make_loader([corpus], config, seed=5, loader=inline), 40)
    first = _drain(make_loader([corpus], config, seed=5, world_size=2, rank=0, loader=inline), 5)
    state = StreamState.from_dict(first[-1][3])
    assert state.position == 10
    rest = []
    for rank in range(3):
        rest += _drain(make_loader([corpus], config, 5, rank=rank, world_size=3, state=state, loader=inline), 10)
    by_position = {p: (n, s) for p, n, s, _ in straight}
    for position, rows, total, _ in rest:
        assert by_position[position] == (rows, total)  # same utterances, same crop windows
    assert sorted(p for p, *_ in rest) == list(range(10, 40))


def test_shards_args_parse_weights_and_urls() -> None:
    assert parse_shards_arg("a/manifest.json:0.7").location == "a"
    assert parse_shards_arg("a/manifest.json:0.7").weight == 0.7
    assert parse_shards_arg("s3://bucket/corpus").location == "s3://bucket/corpus"
    assert parse_shards_arg("s3://bucket/corpus/:2").weight == 2.0
    with pytest.raises(W2VError, match="must be positive"):
        parse_shards_arg("a:0")


def test_a_sample_rate_mismatch_and_a_damaged_shard_are_refused(corpus: ShardCorpus, tmp_path: Path) -> None:
    with pytest.raises(W2VError, match="16000 Hz, the batch config expects 8000 Hz"):
        make_loader([corpus], BatchConfig(sample_rate=8000), seed=0)
    folder = write_shard_folder(tmp_path / "damaged", LENGTHS[:10])
    shard = next(folder.glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ShardError, match="cannot be read as a shard"):
        ShardCorpus(folder)
