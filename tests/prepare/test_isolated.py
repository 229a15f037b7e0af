"""Child processes for decoding: results and errors come back; a crash becomes a typed error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from w2v.prepare.isolated import ChildCrashed, run_in_child


def _add(a: int, b: int) -> int:
    return a + b


def _fail(message: str) -> None:
    raise ValueError(message)


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_child_returns_its_result() -> None:
    assert run_in_child(_add, (2, 3), "sum") == 5


def test_a_child_exception_is_raised_in_the_parent() -> None:
    with pytest.raises(ValueError, match="bad file"):
        run_in_child(_fail, ("bad file",), "failing")


def test_a_child_killed_by_a_signal_is_reported_with_the_work_it_was_doing() -> None:
    with pytest.raises(ChildCrashed, match=r"chunk abc: worker process died \(killed by signal SIGSEGV\)"):
        run_in_child(_segfault, (), "chunk abc")


def test_workers_that_cannot_start_stop_the_run_instead_of_quarantining_every_file(tmp_path: Path) -> None:
    # A program read from standard input cannot be re-imported by its worker processes: every child dies
    # at start-up, a broken environment rather than a bad file.
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, np.float32) + 0.1, 16_000)
    program = f"""
from pathlib import Path
from w2v.errors import W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.isolated import process_chunk_isolated
from w2v.prepare.pipeline import shard_layout
from w2v.prepare.process import Chunk, SourceTask
from w2v.shards.manifest import Manifest
from w2v.storage import list_sources
chunk = Chunk(key="k", tasks=tuple(SourceTask(s) for s in list_sources([{str(wav)!r}])))
layout = shard_layout(Manifest(sample_rate=16_000), PrepareConfig())
try:
    process_chunk_isolated(chunk, PrepareConfig(), layout, Path({str(tmp_path / "out")!r}))
except W2VError as error:
    print("REFUSED:", error)
"""
    result = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True, timeout=120)
    assert "REFUSED: a worker process: worker process died" in result.stdout, result.stdout + result.stderr[-2000:]
    assert not (tmp_path / "out").exists()
