"""Re-running a failed prepare-corpus run: decode tasks whose staged output is there are Cached by Prefect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.testing.utilities import prefect_test_harness

import flows.prepare_corpus as prepare_flow
from tests.corpus import speak
from w2v.errors import W2VError
from w2v.prepare.progress import STAGING_NAME

pytestmark = pytest.mark.slow


def test_a_rerun_after_a_failed_commit_takes_decoded_chunks_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        speak("This sentence is long enough to be kept as one utterance of speech.", "en", raw / f"{k}.wav", 120 + k)
    commit_run = prepare_flow.commit_run
    calls = {"n": 0}

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise W2VError("disk full (simulated)")
        return commit_run(*args, **kwargs)

    monkeypatch.setattr(prepare_flow, "commit_run", failing_once)
    monkeypatch.setattr(prepare_flow, "commit", prepare_flow.commit.with_options(retries=0))
    arguments = {"sources": [str(raw)], "out": str(tmp_path / "shards"), "files_per_chunk": 1, "workers": 1}
    with prefect_test_harness(server_startup_timeout=120):
        failed = prepare_flow.prepare_corpus(**arguments, return_state=True)
        assert failed.is_failed()
        # A chunk's index rows lost between the runs: its cache entry is stale, and it is decoded again.
        staged = sorted((tmp_path / "shards" / STAGING_NAME).glob("*.index.arrow"))
        assert len(staged) == 3
        staged[0].unlink()
        rerun = prepare_flow.prepare_corpus(**arguments, return_state=True)
        assert rerun.is_completed()
        first, second = (asyncio.run(_decode_states(s.state_details.flow_run_id)) for s in (failed, rerun))
    assert first == ["Completed"] * 3
    assert second == ["Cached", "Cached", "Cached", "Completed"]
    assert rerun.result()["counts"]["utterances"] == 3


async def _decode_states(flow_run_id: Any) -> list[str]:
    async with get_client() as client:
        # Every argument explicit: this server (with fastapi 0.153) refuses the client's nulls for defaults.
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=100,
        )
    return sorted(str(r.state.name) for r in runs if r.name.startswith("decode-chunk") and r.state is not None)
