"""w2v doctor on run folders with each symptom (crafted metrics, a real config), and on a healthy run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from w2v.doctor.report import exit_status
from w2v.doctor.run import diagnose_run
from w2v.train.config import TrainConfig
from w2v.train.health import expected_masked_share

CONFIG = TrainConfig.from_dict({"model": {"preset": "tiny"}, "optim": {"warmup_steps": 10}, "max_steps": 1000})
EXPECTED_SHARE = expected_masked_share(CONFIG.masking.mask_time_prob)
CHANCE = math.log(CONFIG.masking.num_negatives + 1)


def _healthy(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "loss": 4.0 * 0.97 ** (step / 10),
        "contrastive_loss": 3.8 * 0.97 ** (step / 10),
        "perplexity": 60.0,
        "masked_share": EXPECTED_SHARE,
        "data_wait_share": 0.05,
        "skipped_steps": 0,
        "rollbacks": 0,
        "oom_events": 0,
        "micro_batch_split": 1,
    }


def _run_folder(root: Path, records: list[dict[str, Any]]) -> Path:
    checkpoint = root / "checkpoints" / "step-00000200"
    checkpoint.mkdir(parents=True)
    state = {"step": 200, "loader_state": {}, "config": CONFIG.to_dict(), "metrics": {}, "tracking": {}}
    (checkpoint / "trainer.json").write_text(json.dumps(state))
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _problems(run: Path) -> dict[str, str]:
    return {f.check: f.severity for f in diagnose_run(run) if f.problem}


def _with(change: dict[str, Any], steps: range = range(20, 220, 20)) -> list[dict[str, Any]]:
    return [{**_healthy(s), **change} for s in steps]


def test_a_healthy_run_yields_no_problem(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, _with({}))
    findings = diagnose_run(run)
    assert [f.check for f in findings if f.problem] == []
    assert exit_status(findings) == 0


@pytest.mark.parametrize(
    ("symptom", "records", "check", "remedy"),
    [
        ("non-finite steps", _with({"skipped_steps": 3, "rollbacks": 1}), "non_finite", "lower optim.lr"),
        (
            "divergence",
            [{**_healthy(s), "loss": 2.0 if s < 120 else 6.0} for s in range(20, 220, 20)],
            "divergence",
            "lower optim.lr",
        ),
        ("collapse", _with({"perplexity": 3.0}), "perplexity", "diversity_loss_weight"),
        ("mask ratio", _with({"masked_share": 0.08}), "mask_share", "mask_time_length"),
        ("plateau", _with({"loss": 3.0}), "plateau", "num_negatives"),
        (
            "back at chance",
            [{**_healthy(s), "contrastive_loss": 3.0 if s < 120 else CHANCE} for s in range(20, 220, 20)],
            "chance",
            "lower optim.lr",
        ),
        ("never left chance", _with({"contrastive_loss": CHANCE}), "chance", "check the corpus"),
        ("data wait", _with({"data_wait_share": 0.6}), "data_wait", "--workers"),
        ("out of memory", _with({"oom_events": 2, "micro_batch_split": 4}), "out_of_memory", "gradient_checkpointing"),
    ],
)
def test_each_symptom_is_diagnosed_with_its_numbers_and_remedy(
    tmp_path: Path, symptom: str, records: list[dict[str, Any]], check: str, remedy: str
) -> None:
    run = _run_folder(tmp_path, records)
    findings = {f.check: f for f in diagnose_run(run)}
    assert _problems(run) == {check: findings[check].severity}, symptom
    assert remedy in findings[check].remedy and findings[check].numbers


def test_the_command_prints_json_and_exits_1_when_something_is_wrong(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", _with({"data_wait_share": 0.6}))
    done = subprocess.run([sys.executable, "-m", "w2v", "doctor", str(run), "--json"], capture_output=True, text=True)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["healthy"] is False
    assert [f["check"] for f in report["findings"] if f["severity"] != "ok"] == ["data_wait"]
    missing = subprocess.run([sys.executable, "-m", "w2v", "doctor", str(tmp_path / "nowhere")], capture_output=True,
                             text=True)  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "neither a shard folder" in missing.stderr
