"""The flow run carries a corpus report artifact, readable from the Prefect API."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.prepare_corpus import prepare_corpus
from tests.conftest import Corpus
from tests.flows.artifacts import newest_artifact_markdown

pytestmark = pytest.mark.slow


def test_flow_run_publishes_a_corpus_report(corpus: Corpus, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    for name in ("speech.flac", "long_3min.wav", "empty.wav"):
        shutil.copy(corpus.path(name), src)
    with prefect_test_harness(server_startup_timeout=120):
        summary = prepare_corpus(sources=[str(src)], out=str(tmp_path / "shards"), workers=1)
        markdown = asyncio.run(newest_artifact_markdown("corpus-report"))
    assert summary["counts"]["files_kept"] == 2 and summary["counts"]["rejected"] == {"empty": 1}
    assert "# Corpus report" in markdown and "| `empty` | 1 |" in markdown and "bucket" in markdown
    assert "![quality histograms](data:image/png;base64," in markdown
