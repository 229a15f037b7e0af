"""Child processes for decoding: results and errors come back; a crash becomes a typed error."""

from __future__ import annotations

import os
import signal

import pytest

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
