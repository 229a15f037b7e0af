"""The deployments as a user runs them: a real `prefect server start`, `w2v serve` in the background,
`prefect deployment run … --watch` for prepare-corpus/default and then pretrain/nightly, and the training
report found in the Prefect UI by headless Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flows.deployments import default_variables, read_specs, render
from flows.local_server import LocalServer, local_prefect_server, stop_process_group
from tests.corpus import speak
from tests.flows.ui import artifact_text_from_flow_run_page
from tests.servers import free_port
from w2v.errors import W2VError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "A journey of a thousand miles begins with a single careful step.",
    "Every good boy deserves fudge and a warm cup of cocoa at night.",
)


def test_prefect_yaml_declares_the_deployments_with_their_templates_filled() -> None:
    variables = default_variables({"W2V_DATA": "/data", "W2V_TIMEZONE": "Europe/Paris"})
    specs = {s.name: s for s in read_specs(variables=variables) if "finetune" not in s.entrypoint}
    assert [(s.name, s.entrypoint.split(":")[1]) for s in read_specs(variables=variables)] == [
        ("default", "prepare_corpus"),
        ("nightly", "pretrain_flow"),
        ("default", "finetune_flow"),
    ]
    prepare, nightly = specs["default"], specs["nightly"]
    assert prepare.entrypoint == "flows/prepare_corpus.py:prepare_corpus"
    assert prepare.parameters == {"sources": ["/data/raw"], "out": "/data/shards"}
    assert nightly.schedules[0].cron == "0 2 * * *" and nightly.schedules[0].timezone == "Europe/Paris"
    assert nightly.parameters["shards"] == ["/data/shards"] and nightly.parameters["run_name"] == "nightly"
    assert nightly.parameters["upload_to"] == "/data/bucket/nightly"
    assert nightly.concurrency_limit == 1
    with pytest.raises(W2VError, match=r"\{\{ \$W2V_DATA \}\} is not set; export W2V_DATA"):
        render("{{ $W2V_DATA }}/raw", {})


@pytest.mark.slow
def test_served_deployments_prepare_then_pretrain_and_report_through_the_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    for k, text in enumerate(SENTENCES * 2):
        speak(text, ("en", "en+f3")[k % 2], data / "raw" / f"utt{k}.wav", speed=130 + 10 * k)
    home = tmp_path / "prefect-home"
    with local_prefect_server(home, port=free_port()) as server, _serving(server, data, tmp_path) as serve_log:
        env = _client_environment(server, home)
        _wait_for_deployments(server, ["prepare-corpus/default", "pretrain/nightly", "finetune/default"], serve_log)
        prepared = _run_deployment(env, "prepare-corpus/default", [], serve_log)
        overrides = ["max_steps=8", "log_every=4", "checkpoint_every=4", "eval_every=4", "val_share=0.25"]
        params = ["--param", "config=tiny", "--param", f"overrides={json.dumps(overrides)}"]
        params += ["--param", "loader_workers=0"]
        trained = _run_deployment(env, "pretrain/nightly", params, serve_log)

        for run in (prepared, trained):
            assert run["state"]["type"] == "COMPLETED", run["state"]
        assert (data / "shards" / "manifest.json").is_file()
        checkpoints = sorted((data / "runs" / "nightly" / "checkpoints").glob("step-*"))
        assert [c.name for c in checkpoints][-1] == "step-00000008"
        # The best model in the bucket, and every checkpoint mirrored there as it was written.
        assert (data / "bucket" / "nightly" / "best" / "_UPLOAD_COMPLETE.json").is_file()
        assert (data / "bucket" / "nightly" / "checkpoints" / "LATEST").read_text().strip() == "step-00000008"

        corpus_report = _artifact(server, "corpus-report", prepared["id"])
        training_report = _artifact(server, "pretraining-report", trained["id"])
        assert "utterances" in corpus_report
        assert "# Pretraining report" in training_report and "val loss" in training_report
        # What a person sees: the flow run's page in the UI, its Artifacts tab, the training report.
        seen = artifact_text_from_flow_run_page(
            server.ui_url, trained["id"], "pretraining-report", "Pretraining report", tmp_path / "ui.png"
        )
        assert "Pretraining report" in seen and "val loss" in seen, seen[-2000:]
        nightly = _get(server, "/deployments/name/pretrain/nightly")
        (schedule,) = nightly["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
        assert nightly["parameters"]["run_name"] == "nightly"
        limits = _post(server, "/concurrency_limits/filter", {"limit": 10})
        assert any(limit["tag"] == "w2v-training" and limit["concurrency_limit"] == 1 for limit in limits)


def _client_environment(server: LocalServer, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": server.api_url,
        "PREFECT_HOME": str(home / "client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


class _serving:
    """`w2v serve` in the background (its own process group), stopped on exit; yields its log file."""

    def __init__(self, server: LocalServer, data: Path, tmp: Path) -> None:
        self.env = {**_client_environment(server, tmp / "prefect-home"), "W2V_DATA": str(data)}
        self.log = tmp / "serve.log"

    def __enter__(self) -> Path:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "w2v"), "serve"], cwd=tmp_cwd(self.log.parent), env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.log

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.process, grace_seconds=30)


def tmp_cwd(folder: Path) -> Path:
    """Serve from a folder outside the project: deployments must not depend on where they start."""
    cwd = folder / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return cwd


def _wait_for_deployments(server: LocalServer, names: list[str], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                _get(server, f"/deployments/name/{name}")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} was not served; w2v serve said:\n{log.read_text()[-3000:]}") from None
                time.sleep(1)


def _run_deployment(env: dict[str, str], name: str, params: list[str], log: Path) -> dict[str, Any]:
    command = [str(BIN / "prefect"), "deployment", "run", name, *params, "--watch", "--watch-timeout", "400"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=450, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{output[-3000:]}\n--- w2v serve:\n{log.read_text()[-5000:]}"
    run_id = next(line.split()[-1] for line in output.splitlines() if "UUID:" in line)
    flow_run: dict[str, Any] = _request(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", None)
    return flow_run


def _artifact(server: LocalServer, key: str, flow_run_id: str) -> str:
    body = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}, "limit": 5}
    artifacts = _post(server, "/artifacts/filter", body)
    assert artifacts, f"no {key} artifact on flow run {flow_run_id}"
    return str(artifacts[0]["data"])


def _get(server: LocalServer, path: str) -> Any:
    return _request(server.api_url + path, None)


def _post(server: LocalServer, path: str, body: dict[str, Any]) -> Any:
    return _request(server.api_url + path, body)


def _request(url: str, body: dict[str, Any] | None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
