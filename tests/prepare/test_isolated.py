"""Child processes for decoding: results and errors come back; a crash becomes a typed error; a child decodes
the next chunk while the last one is written; a file that crashes the decoder is quarantined alone."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from w2v.errors import RejectedAudio, W2VError
from w2v.prepare.isolated import ChildCrashed, _finisher, child_processes, run_in_child


def _add(a: int, b: int) -> int:
    return a + b


def _fail(message: str) -> None:
    raise ValueError(message)


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _segfault_after(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGSEGV)


def _pid() -> int:
    return os.getpid()


def _finish_once_flagged(flag: Path) -> Future[int]:
    """Returns at once, as a decoded chunk does; its result waits on the finishing thread for `flag`."""

    def wait() -> int:
        deadline = time.monotonic() + 60
        while not flag.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the child never ran the next call")
            time.sleep(0.01)
        return os.getpid()

    return _finisher().submit(wait)


def _flag(flag: Path) -> int:
    flag.touch()
    return os.getpid()


def _raise_unreadable() -> None:
    raise RejectedAudio("too_short", "a.wav: 0.1 s")  # pickles, but its constructor wants two arguments


def _killed_while_written_once(flag: Path) -> Future[str] | str:
    """The first time, returns a Future whose writing kills the child a moment later; then returns at once."""
    if flag.exists():
        return "written"
    flag.touch()

    def kill() -> str:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
        return "never"

    return _finisher().submit(kill)


def _sleep_then_add(seconds: float, a: int, b: int) -> int:
    time.sleep(seconds)
    return a + b


def _in_thread(function: object, *args: object) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}
    context = contextvars.copy_context()  # the pool of `child_processes` goes with it

    def run() -> None:
        try:
            outcome["result"] = context.run(function, *args)  # type: ignore[arg-type]
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


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
from w2v.listing import list_sources
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


def test_a_child_runs_the_next_call_while_the_last_one_is_still_being_written(tmp_path: Path) -> None:
    # The first call's result waits for a flag only the second call sets: one child, two calls in flight.
    flag = tmp_path / "flag"
    with child_processes(1):
        first, first_outcome = _in_thread(run_in_child, _finish_once_flagged, (flag,), "first chunk")
        time.sleep(0.5)
        second, second_outcome = _in_thread(run_in_child, _flag, (flag,), "second chunk")
        for thread in (first, second):
            thread.join(timeout=120)
    assert "error" not in first_outcome and "error" not in second_outcome, (first_outcome, second_outcome)
    assert first_outcome["result"] == second_outcome["result"] != os.getpid()  # the same child did both


def test_a_call_queued_behind_one_that_crashes_its_child_runs_again_unblamed() -> None:
    with child_processes(1):
        crashing, crash_outcome = _in_thread(run_in_child, _segfault_after, (1.0,), "chunk bad")
        time.sleep(0.3)  # sent while the other runs: it waits its turn in the same child
        queued, queued_outcome = _in_thread(run_in_child, _add, (2, 3), "chunk good")
        for thread in (crashing, queued):
            thread.join(timeout=120)
    assert isinstance(crash_outcome.get("error"), ChildCrashed), crash_outcome
    assert "chunk bad" in str(crash_outcome["error"])
    assert queued_outcome == {"result": 5}


CRASHING_DECODER = """
import json
import os
import signal
import sys

import w2v.prepare.process as process

# Module level: the fork server preloads this program, so every decoding child has this decoder.
_decode = process.decode


def crash_on_poison(source, name):
    if "poison" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _decode(source, name)


process.decode = crash_on_poison

if __name__ == "__main__":
    from w2v.prepare.config import PrepareConfig
    from w2v.quality_filters import QualityThresholds
    from w2v.prepare.pipeline import prepare

    tones = PrepareConfig(min_seconds=0.5, measure_quality=False, quality=QualityThresholds(None, None, None, None))
    manifest = prepare([sys.argv[1]], sys.argv[2], tones, workers=2)
    print(json.dumps({"counts": manifest.to_json()["counts"]}))
"""


def test_a_file_that_crashes_the_decoder_is_quarantined_and_the_rest_of_its_chunk_is_kept(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, name in enumerate(["a", "b", "c", "poison", "d", "e", "f", "g", "h", "i"]):
        tone = 0.3 * np.sin(np.arange(16_000) * (0.05 + 0.01 * k))  # each its own: no duplicates
        sf.write(raw / f"{name}.wav", tone.astype(np.float32), 16_000)
    program = tmp_path / "crashing_decoder.py"
    program.write_text(CRASHING_DECODER)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(program), str(raw), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(Path(r["source"]).name, r["reason"]) for r in rejects] == [("poison.wav", "decode_crash")]
    assert "worker process died (killed by signal SIGSEGV)" in rejects[0]["error"]
    counts = json.loads(result.stdout.strip().splitlines()[-1])["counts"]
    assert counts["files_kept"] == 9 and counts["rejected"] == {"decode_crash": 1}, counts


def test_a_reply_that_cannot_be_read_here_fails_its_call_alone() -> None:
    with child_processes(1):
        with pytest.raises(W2VError, match=r"unreadable: the worker's reply cannot be read here \(TypeError"):
            run_in_child(_raise_unreadable, (), "unreadable")
        assert run_in_child(_add, (2, 3), "after it") == 5  # the same child goes on


def test_a_child_killed_while_a_call_is_written_blames_neither_call(tmp_path: Path) -> None:
    # Either the call being written or the one running may have killed it: both run again, in a new child.
    with child_processes(1):
        writing, written = _in_thread(run_in_child, _killed_while_written_once, (tmp_path / "flag",), "writing")
        time.sleep(0.3)  # it is being written (the kill comes a second later) while this one runs
        running, ran = _in_thread(run_in_child, _sleep_then_add, (3.0, 2, 3), "running")
        for thread in (writing, running):
            thread.join(timeout=120)
    assert written == {"result": "written"} and ran == {"result": 5}, (written, ran)
