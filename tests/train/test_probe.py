"""Linear probes on frozen features: the classifier, the split, the features, and `w2v evaluate`'s probe block."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.corpus import speak
from w2v.cli import app
from w2v.data.corpus import ShardCorpus
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.quality_filters import QualityThresholds
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model
from w2v.train.probe import (
    ProbeConfig,
    fit_linear_classifier,
    probe_features,
    probe_key,
    probe_utterances,
    random_init_like,
    stratified_split,
    utterance_features,
)

VOICES = ("en+m3", "en+f2", "en-us+f4")
PHRASES = ("one two", "seven eight", "red green", "north south", "hello there")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of every phrase in every voice (about 1 s each), with speaker = voice and label = phrase."""
    root = tmp_path_factory.mktemp("probe")
    raw = root / "raw"
    raw.mkdir()
    rows = []
    for v, voice in enumerate(VOICES):
        for p, phrase in enumerate(PHRASES):
            name = f"v{v}-p{p}.wav"
            speak(phrase, voice, raw / name, speed=170)
            rows.append({"path": name, "speaker": voice, "label": phrase})
    with open(raw / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "speaker", "label"])
        writer.writeheader()
        writer.writerows(rows)
    config = PrepareConfig(min_seconds=0.5, measure_quality=False, quality=QualityThresholds(None, None, None, None))
    prepare([str(raw)], root / "shards", config, workers=1, metadata_path=raw / "metadata.csv")
    return root / "shards"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_model(ModelConfig(preset="tiny"), MaskingConfig(num_negatives=20)).save_pretrained(folder)
    return folder


def _blobs(rng: np.random.Generator, per_class: int, classes: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0, separation, (classes, 8))
    targets = np.repeat(np.arange(classes), per_class)
    return centres[targets] + rng.normal(0, 1, (targets.size, 8)), targets


def test_classifier_fits_separable_classes_and_is_at_chance_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    features, targets = _blobs(rng, 100, 4, separation=12.0)
    train, test = stratified_split([f"u{i}" for i in range(targets.size)], targets, 0.25, seed=1)
    classifier = fit_linear_classifier(features[train], targets[train], 4, weight_decay=1e-3, max_iterations=100)
    assert (classifier.predict(features[test]) == targets[test]).mean() == 1.0

    noise = rng.normal(0, 1, (800, 8))
    random_targets = rng.integers(0, 4, 800)
    train, test = stratified_split([f"u{i}" for i in range(800)], random_targets, 0.25, seed=1)
    classifier = fit_linear_classifier(noise[train], random_targets[train], 4, weight_decay=1e-3, max_iterations=100)
    accuracy = (classifier.predict(noise[test]) == random_targets[test]).mean()
    assert abs(accuracy - 0.25) < 0.08

    again = fit_linear_classifier(noise[train], random_targets[train], 4, weight_decay=1e-3, max_iterations=100)
    assert np.array_equal(again.weight, classifier.weight)


def test_split_is_deterministic_stratified_disjoint_and_drops_lone_utterances() -> None:
    keys = [f"utt-{i}" for i in range(40)]
    targets = np.array([0] * 20 + [1] * 10 + [2] * 2 + [3] * 1 + [-1] * 7)
    train, test = stratified_split(keys, targets, 0.25, seed=5)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(32))  # not the lone class 3, not unlabelled
    assert [int((targets[test] == c).sum()) for c in range(4)] == [5, 2, 1, 0]  # round(share · n), at least one
    assert [int((targets[train] == c).sum()) for c in range(4)] == [15, 8, 1, 0]
    same = stratified_split(keys, targets, 0.25, seed=5)
    assert np.array_equal(same[0], train) and np.array_equal(same[1], test)
    other = stratified_split(keys, targets, 0.25, seed=6)
    assert not np.array_equal(other[1], test)
    # Positions come with their keys: listing the utterances in another order moves none between the splits.
    order = np.random.default_rng(0).permutation(40)
    moved = stratified_split([keys[i] for i in order], targets[order], 0.25, seed=5)
    assert sorted(order[moved[1]].tolist()) == test.tolist()


def test_probe_needs_two_classes_of_two_utterances() -> None:
    features = np.random.default_rng(0).normal(size=(6, 4))
    keys = [f"u{i}" for i in range(6)]
    config = ProbeConfig()
    assert probe_features(features, [None] * 6, keys, "speaker", seed=0, config=config) is None
    assert probe_features(features, ["a", "a", "a", "b", None, None], keys, "speaker", seed=0, config=config) is None
    result = probe_features(features, ["a", "a", "a", "b", "b", "c"], keys, "speaker", seed=0, config=config)
    assert result is not None and (result.classes, result.train, result.test) == (2, 3, 2)


def test_a_capped_probe_takes_a_seeded_sample_of_the_labelled_utterances() -> None:
    labels = ["a"] * 10 + [None] * 5 + ["b"] * 10
    keys = [f"k{i}" for i in range(25)]
    capped = probe_utterances(labels, keys, 0, 8)
    assert capped.size == 8 and all(labels[i] is not None for i in capped)
    assert np.array_equal(capped, probe_utterances(labels, keys, 0, 8))
    assert not np.array_equal(capped, probe_utterances(labels, keys, 1, 8))
    assert probe_utterances(labels, keys, 0, None).tolist() == [*range(10), *range(15, 25)]
    assert probe_utterances(["a"] * 9 + ["b"], keys[:10], 0, None).size == 0  # one class of two or more


def test_corpus_column_reads_each_utterances_metadata_and_follows_subset(labelled: Path) -> None:
    corpus = ShardCorpus(labelled)
    speakers, labels, sources = corpus.column("speaker"), corpus.column("label"), corpus.column("source")
    assert len(speakers) == len(corpus) == len(VOICES) * len(PHRASES)
    for speaker, label, source in zip(speakers, labels, sources, strict=True):
        v, p = Path(str(source)).stem.split("-")
        assert (speaker, label) == (VOICES[int(v[1:])], PHRASES[int(p[1:])])
    assert corpus.column("text") == [None] * len(corpus)
    assert corpus.column("no_such_column") == [None] * len(corpus)
    assert corpus.subset(np.array([4, 1])).column("speaker") == [speakers[4], speakers[1]]


def test_features_that_encode_the_speaker_beat_chance(labelled: Path) -> None:
    corpus = ShardCorpus(labelled)

    def mean_log_spectrum(index: int) -> np.ndarray:  # a voice's pitch and formants, averaged over time
        pcm = corpus.audio(index).astype(np.float64)
        frames = pcm[: pcm.size // 512 * 512].reshape(-1, 512) * np.hanning(512)
        return np.log(np.abs(np.fft.rfft(frames)) + 1.0).mean(axis=0)[:128]

    features = np.stack([mean_log_spectrum(i) for i in range(len(corpus))])
    keys = [str(k) for k in corpus.column("id")]
    result = probe_features(features, corpus.column("speaker"), keys, "speaker", seed=0, config=ProbeConfig())
    assert result is not None
    assert (result.classes, result.train, result.test) == (3, 12, 3)
    assert result.chance == pytest.approx(1 / 3)
    assert result.accuracy > result.chance


def test_pooled_features_ignore_padding_and_random_init_repeats(labelled: Path, tiny_model_dir: Path) -> None:
    from transformers import Wav2Vec2ForPreTraining

    model = Wav2Vec2ForPreTraining.from_pretrained(tiny_model_dir)
    corpus = ShardCorpus(labelled)
    indices = np.arange(len(corpus))
    batched = utterance_features(model, corpus, indices, layer=-1, max_batch_seconds=60.0)
    one_by_one = utterance_features(model, corpus, indices, layer=-1, max_batch_seconds=1e-3)
    assert batched.shape == (len(corpus), model.config.hidden_size)
    np.testing.assert_allclose(batched, one_by_one, atol=2e-4)
    first_layer = utterance_features(model, corpus, indices[:3], layer=1, max_batch_seconds=60.0)
    assert not np.allclose(first_layer, batched[:3])

    fresh, again = random_init_like(model, 7), random_init_like(model, 7)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values(), strict=True))
    weights = [m.wav2vec2.encoder.layers[0].feed_forward.output_dense.weight for m in (fresh, model)]
    assert not torch.equal(*weights)


def test_evaluate_reports_probes_for_speaker_and_label(labelled: Path, tiny_model_dir: Path) -> None:
    runner = CliRunner()
    arguments = ["evaluate", str(tiny_model_dir), "--shards", str(labelled), "--val-share", "0.5"]
    done = runner.invoke(app, arguments)
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)
    assert {"loss", "accuracy", "perplexity", "masked_frames", "batches"} <= printed.keys()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert printed["codevectors"] == config["num_codevector_groups"] * config["num_codevectors_per_group"]
    probes = printed["probe"]
    assert set(probes) == {"speaker", "label"}
    assert (probes["speaker"]["classes"], probes["speaker"]["train"], probes["speaker"]["test"]) == (3, 12, 3)
    assert (probes["label"]["classes"], probes["label"]["train"], probes["label"]["test"]) == (5, 10, 5)
    for probe in probes.values():
        assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["random_init_accuracy"] <= 1
        assert probe["chance"] == pytest.approx(1 / probe["classes"]) and probe["layer"] == -1

    without = runner.invoke(app, [*arguments, "--no-probe"])
    assert without.exit_code == 0 and "probe" not in json.loads(without.stdout)
    assert json.loads(without.stdout)["loss"] == printed["loss"]

    wrong = runner.invoke(app, [*arguments, "--probe-layer", "5"])
    assert wrong.exit_code == 2 and "--probe-layer 5" in wrong.output


def test_the_probe_keys_an_utterance_by_its_recording_not_by_where_the_corpus_lives() -> None:
    here = probe_key("/home/a/demo/raw/spk3/utt12.wav", "utt12-1a2b3c4d-0001")
    moved = probe_key("s3://bucket/elsewhere/raw/spk3/utt12.wav", "utt12-99ff00aa-0001")
    assert here == moved == "spk3/utt12.wav#0001"
    assert probe_key("/home/a/demo/raw/spk3/utt12.wav", "utt12-1a2b3c4d-0002") != here
    assert probe_key("/home/a/demo/raw/spk4/utt12.wav", "utt12-1a2b3c4d-0001") != here
