"""Kill -9 a training command once it has written its first checkpoint (or once something else holds), as a
preempted node would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from w2v.run.checkpoint import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def kill_after_first_checkpoint(command: list[str], run: Path, timeout: float = 180) -> str:
    """Start `command` (which trains into `run`), SIGKILL it as soon as a checkpoint is complete, and return
    the newest checkpoint's name at that moment. Fails the test if the command dies first or is too slow."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not complete_checkpoints(run):
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, f"no checkpoint within {timeout} s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return complete_checkpoints(run)[-1].name


def kill_when(
    command: list[str], ready: Callable[[], bool], what: str, timeout: float = 180, env: dict[str, str] | None = None
) -> None:
    """Start `command` (with `env` added to the environment), SIGKILL it as soon as `ready()` holds (polled),
    as a preempted node would die. Fails the test if the command ends first or `what` does not happen within
    `timeout` seconds."""
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def mirrored_at_least(bucket: Any, checkpoints: str, step: int) -> Callable[[], bool]:
    """A condition for `kill_when`: the bucket's LATEST pointer under `checkpoints` (bucket/prefix/checkpoints)
    names step `step` or a later one (checkpoint names sort by step)."""
    from w2v.run.mirror import LATEST

    def reached() -> bool:
        bucket.invalidate_cache()
        try:
            return bool(bucket.cat_file(f"{checkpoints}/{LATEST}").decode().strip() >= f"step-{step:08d}")
        except FileNotFoundError:
            return False

    return reached
