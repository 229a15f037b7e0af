"""The flow run carries a corpus report artifact, readable from the Prefect API."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
from prefect.client.schemas.sorting import ArtifactSort
from prefect.testing.utilities import prefect_test_harness

from flows.prepare_corpus import prepare_corpus
from tests.conftest import Corpus

pytestmark = pytest.mark.slow


async def _report_markdown() -> str:
    # Every argument explicit: this server (with fastapi 0.153) refuses the client's nulls for defaults.
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["corpus-report"])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=10,
        )
    (report,) = [a for a in artifacts if a.key == "corpus-report"]
    return str(report.data)


def test_flow_run_publishes_a_corpus_report(corpus: Corpus, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    for name in ("speech.flac", "long_3min.wav", "empty.wav"):
        shutil.copy(corpus.path(name), src)
    with prefect_test_harness(server_startup_timeout=120):
        summary = prepare_corpus(sources=[str(src)], out=str(tmp_path / "shards"), workers=1)
        markdown = asyncio.run(_report_markdown())
    assert summary["counts"]["files_kept"] == 2 and summary["counts"]["rejected"] == {"empty": 1}
    assert "# Corpus report" in markdown and "| `empty` | 1 |" in markdown and "bucket" in markdown
    assert "![quality histograms](data:image/png;base64," in markdown
