"""Fine-tuning each task on a labelled espeak-ng corpus: a few steps, saved, reloaded by transformers'
pipelines, which run on a file; metrics from jiwer and scikit-learn."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import pipeline

from tests.finetune.labelled_corpus import write_labelled_corpus
from w2v.data.loader import LoaderConfig
from w2v.errors import W2VError
from w2v.finetune.config import FinetuneConfig
from w2v.finetune.freeze import apply_freeze, layers_to_freeze
from w2v.finetune.recipe import finetune
from w2v.run.metrics import read_metrics
from w2v.run.schedule import tri_stage_factor
from w2v.train.config import MaskingConfig, ModelConfig
from w2v.train.presets import build_model

pytestmark = pytest.mark.slow
SMALL = {"log_every": 2, "eval_every": 3, "batch": {"max_batch_seconds": 20}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(train shards, valid shards, a pretrained tiny model folder)."""
    root = tmp_path_factory.mktemp("labelled")
    train, valid = write_labelled_corpus(root)
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), MaskingConfig())
    model.save_pretrained(root / "pretrained")
    return train, valid, root / "pretrained"


def _wav(valid: Path) -> str:
    return str(sorted((valid.parent / "raw" / "valid").glob("*.wav"))[0])


def test_ctc_trains_saves_and_transcribes_through_the_asr_pipeline(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train, valid, pretrained = corpus
    config = FinetuneConfig.for_task("ctc", {**SMALL, "max_steps": 6})
    result = finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / "ctc", loader=LoaderConfig(0))
    assert result.steps == 6 and result.best is not None
    assert result.evaluation["val_wer"] >= 0 and result.evaluation["val_utterances"] == 6
    vocabulary = json.loads((result.best / "model" / "vocab.json").read_text())
    assert set("onetwhrfivsxg") <= set(vocabulary) and vocabulary["[PAD]"] == 0
    asr = pipeline("automatic-speech-recognition", model=str(result.best / "model"))
    text = asr(_wav(valid))["text"]
    assert isinstance(text, str) and set(text) <= set(vocabulary) | {" "}


@pytest.mark.parametrize("task", ["classify", "speaker"])
def test_classifiers_train_save_and_label_a_file_through_the_audio_classification_pipeline(
    task: str, corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train, valid, pretrained = corpus
    config = FinetuneConfig.for_task(task, {**SMALL, "max_steps": 6})
    result = finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / task, loader=LoaderConfig(0))
    assert result.best is not None
    assert 0 <= result.evaluation["val_accuracy"] <= 1 and 0 <= result.evaluation["val_macro_f1"] <= 1
    classifier = pipeline("audio-classification", model=str(result.best / "model"))
    labels = {p["label"] for p in classifier(_wav(valid), top_k=None)}
    if task == "speaker":
        assert labels == {"en", "en+f3", "en+m3"}
        assert 0 <= result.evaluation["val_eer"] <= 1 and result.evaluation["val_trials"] == 15
    else:
        assert labels <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def test_a_finished_run_resumes_reports_its_evaluation_and_goes_on_to_more_steps(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train, valid, pretrained = corpus
    run = tmp_path / "run"
    first = finetune(FinetuneConfig.for_task("classify", {**SMALL, "max_steps": 3}), pretrained, [str(train)],
                     [str(valid)], run, loader=LoaderConfig(0))  # fmt: skip
    again = finetune(FinetuneConfig.for_task("classify", {**SMALL, "max_steps": 3}), pretrained, [str(train)],
                     [str(valid)], run, loader=LoaderConfig(0))  # fmt: skip
    assert again.steps == 3 and again.evaluation == first.evaluation and "val_accuracy" in again.evaluation
    more = finetune(FinetuneConfig.for_task("classify", {**SMALL, "max_steps": 6}), pretrained, [str(train)],
                    [str(valid)], run, loader=LoaderConfig(0))  # fmt: skip
    assert more.steps == 6
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == [2, 3, 4, 6]


def test_a_random_init_anchor_keeps_the_architecture_and_draws_fresh_weights_from_its_seed(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The speaker task trains only its head: the backbone saved after one update is the one it started from."""
    train, valid, _ = corpus
    torch.manual_seed(123)  # not seed 0: a random init with the fine-tune's seed would draw these very weights
    pretrained = tmp_path / "pretrained"
    build_model(ModelConfig(preset="tiny"), MaskingConfig()).save_pretrained(pretrained)

    def backbone(name: str, **values: object) -> dict[str, torch.Tensor]:
        config = FinetuneConfig.for_task("speaker", {**SMALL, "max_steps": 1, **values})
        result = finetune(config, pretrained, [str(train)], [str(valid)], tmp_path / name, loader=LoaderConfig(0))
        assert result.best is not None
        weights = load_file(result.best / "model" / "model.safetensors")
        return {k: v for k, v in weights.items() if k.startswith("wav2vec2.encoder.")}

    original = {
        k: v for k, v in load_file(pretrained / "model.safetensors").items() if k.startswith("wav2vec2.encoder.")
    }
    assert original
    from_pretrained, fresh, again, other = (backbone("pretrained"), backbone("fresh", random_init=True),
                                            backbone("again", random_init=True),
                                            backbone("other", random_init=True, seed=1))  # fmt: skip
    assert all(torch.equal(from_pretrained[k], v) for k, v in original.items())
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in original.items()}
    assert not all(torch.equal(fresh[k], v) for k, v in original.items())
    assert all(torch.equal(again[k], v) for k, v in fresh.items())
    assert not all(torch.equal(other[k], v) for k, v in fresh.items())


def test_task_defaults_follow_the_design_table_and_freezing_counts_layers() -> None:
    ctc, classify, speaker = (FinetuneConfig.for_task(t) for t in ("ctc", "classify", "speaker"))
    assert (ctc.lr, ctc.freeze.layers, ctc.label_column) == (1e-4, 1 / 3, "text")
    assert (classify.lr, classify.freeze.layers, classify.epochs) == (5e-5, 0.5, 10)
    assert (speaker.lr, speaker.freeze.head_only, speaker.label_column) == (2e-4, True, "speaker")
    assert layers_to_freeze(1 / 3, 12) == 4 and layers_to_freeze(0.5, 24) == 12 and layers_to_freeze(3, 12) == 3
    with pytest.raises(W2VError, match="only 12 transformer layers"):
        layers_to_freeze(13, 12)
    with pytest.raises(W2VError, match=r"batch\.mode must be pad"):
        FinetuneConfig.for_task("ctc", {"batch": {"mode": "crop"}})
    model = build_model(ModelConfig(preset="tiny", overrides={"num_hidden_layers": 3}), MaskingConfig())
    from transformers import Wav2Vec2ForCTC

    ctc_model = Wav2Vec2ForCTC(model.config)
    frozen = apply_freeze(ctc_model, feature_encoder=True, layers=2, head_only=False)
    assert frozen.layers == 2
    assert not any(p.requires_grad for p in ctc_model.wav2vec2.feature_extractor.parameters())
    assert not any(p.requires_grad for p in ctc_model.wav2vec2.encoder.layers[1].parameters())
    assert all(p.requires_grad for p in ctc_model.wav2vec2.encoder.layers[2].parameters())
    head = apply_freeze(ctc_model, feature_encoder=True, layers=0, head_only=True)
    assert head.trainable_parameters == sum(p.numel() for p in ctc_model.lm_head.parameters())


def test_the_shipped_fine_tuning_config_loads_over_the_task_defaults() -> None:
    config = FinetuneConfig.from_yaml("ctc", Path(__file__).resolve().parents[2] / "configs" / "tiny-ctc.yaml")
    assert (config.task, config.lr, config.max_steps, config.batch.mode) == ("ctc", 5e-3, 600, "pad")
    assert config.freeze.layers == 1 / 3  # the task's default, kept


def test_the_tri_stage_schedule_warms_up_holds_and_decays() -> None:
    factors = [tri_stage_factor(s, 100, 0.1, 0.4, 0.01, 0.05) for s in range(101)]
    assert factors[0] == pytest.approx(0.01) and factors[10] == 1.0 and factors[49] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(factors[:11]))
    assert all(a >= b for a, b in itertools.pairwise(factors[50:]))
    assert factors[100] == pytest.approx(0.05) and math.isclose(factors[75], math.sqrt(0.05), rel_tol=1e-6)


def test_the_finetune_flow_trains_under_accelerate_uploads_the_best_model_and_reports(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import asyncio

    from prefect.testing.utilities import prefect_test_harness

    from flows.finetune import finetune_flow
    from tests.flows.artifacts import newest_artifact_markdown

    train, valid, pretrained = corpus
    with prefect_test_harness(server_startup_timeout=120):
        result = finetune_flow(
            task="speaker",
            pretrained=str(pretrained),
            train_shards=[str(train)],
            valid_shards=[str(valid)],
            output=str(tmp_path / "run"),
            overrides=["max_steps=4", "eval_every=2", "batch.max_batch_seconds=20"],
            upload_to=str(tmp_path / "bucket"),
            loader_workers=0,
        )
        markdown = asyncio.run(newest_artifact_markdown("finetuning-report"))
    assert (tmp_path / "bucket" / "_UPLOAD_COMPLETE.json").is_file()
    classifier = pipeline("audio-classification", model=str(tmp_path / "bucket" / "model"))
    assert classifier(_wav(valid))[0]["label"] in {"en", "en+f3", "en+m3"}
    assert "# Fine-tuning report (speaker)" in markdown and "val_eer" in markdown
    assert Path(result["report"]).read_text() == markdown
