"""w2v doctor on fine-tuning run folders: crafted metrics with each fine-tuning symptom, a real config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from w2v.doctor.run import diagnose_run
from w2v.finetune.config import FinetuneConfig


def _run(root: Path, task: str, records: list[dict[str, Any]], classes: int = 4) -> Path:
    checkpoint = root / "checkpoints" / "step-00000040"
    (checkpoint / "model").mkdir(parents=True)
    config = FinetuneConfig.for_task(task, {"max_steps": 40}).to_dict()
    state = {"step": 40, "loader_state": {}, "config": config, "metrics": {}, "tracking": {}}
    (checkpoint / "trainer.json").write_text(json.dumps(state))
    labels = {str(k): f"class-{k}" for k in range(classes)}
    (checkpoint / "model" / "config.json").write_text(json.dumps({"id2label": labels}))
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _training(step: int, **change: float) -> dict[str, Any]:
    healthy = {"step": step, "loss": 2.0 * 0.98**step, "grad_norm": 1.0, "lr": 1e-4, "data_wait_share": 0.05,
               "skipped_steps": 0, "rollbacks": 0, "oom_events": 0, "micro_batch_split": 1}  # fmt: skip
    return {**healthy, **change}


def _records(metric: str, scores: list[float], **change: float) -> list[dict[str, Any]]:
    records = []
    for k, score in enumerate(scores):
        step = 10 * (k + 1)
        records += [_training(step - 5, **change), _training(step, **change)]
        records.append({"step": step, "val_loss": 1.0, metric: score})
    return records


def _problems(run: Path) -> dict[str, str]:
    return {f.check: f.severity for f in diagnose_run(run) if f.problem}


def test_a_healthy_fine_tuning_run_yields_no_problem(tmp_path: Path) -> None:
    assert _problems(_run(tmp_path / "ctc", "ctc", _records("val_wer", [0.9, 0.6, 0.4, 0.35]))) == {}
    assert _problems(_run(tmp_path / "cls", "classify", _records("val_accuracy", [0.4, 0.6, 0.7, 0.72]))) == {}


@pytest.mark.parametrize(
    ("symptom", "task", "records", "check", "remedy"),
    [
        ("overfitting", "ctc", _records("val_wer", [0.6, 0.3, 0.5, 0.7]), "validation", "freeze.layers"),
        ("no word right", "ctc", _records("val_wer", [1.0, 1.0, 1.0]), "validation", "train longer"),
        ("at chance", "classify", _records("val_accuracy", [0.25, 0.2, 0.25]), "validation", "label column"),
        ("overfitting", "speaker", _records("val_accuracy", [0.5, 0.9, 0.6]), "validation", "RUN/best"),
        (
            "non-finite",
            "classify",
            _records("val_accuracy", [0.4, 0.6], skipped_steps=2, rollbacks=1),
            "non_finite",
            "lower lr",
        ),
        (
            "out of memory",
            "ctc",
            _records("val_wer", [0.8, 0.5], oom_events=1, micro_batch_split=2),
            "out_of_memory",
            "gradient_checkpointing",
        ),
    ],
)
def test_each_fine_tuning_symptom_is_diagnosed_with_its_numbers_and_remedy(
    tmp_path: Path, symptom: str, task: str, records: list[dict[str, Any]], check: str, remedy: str
) -> None:
    run = _run(tmp_path, task, records)
    findings = {f.check: f for f in diagnose_run(run)}
    assert _problems(run) == {check: findings[check].severity}, symptom
    assert remedy in findings[check].remedy and findings[check].numbers
