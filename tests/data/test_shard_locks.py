"""Shard files shared by the caches of a node's ranks: a shard one holds is never deleted by another, and the
last one to let a shard go deletes it, even when two let it go at the same moment."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from w2v.data import shard_locks
from w2v.data.shard_locks import claimed, hold, let_go, open_locked, release


def _shard(tmp_path: Path) -> Path:
    local = tmp_path / "s000.arrow"
    local.write_bytes(b"x" * 100)
    (tmp_path / "s000.arrow.sha256").write_text("abc 100 0 0\n")
    return local


def test_a_shard_another_cache_holds_is_left_and_the_last_holder_deletes_it(tmp_path: Path) -> None:
    local = _shard(tmp_path)
    with claimed(local):
        first, second = hold(local), hold(local)
    assert not let_go(local, first) and local.is_file()  # the second still holds it
    assert let_go(local, second) and not local.exists()
    assert not (tmp_path / "s000.arrow.sha256").exists()


def test_the_last_of_two_caches_letting_go_at_once_deletes_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_locks, "LET_GO_ATTEMPTS", 200)  # a busy machine may run the timer late
    local = _shard(tmp_path)
    with claimed(local):
        mine = hold(local)
    # Another cache is looking at the shard (NAME.lock held) as this one lets go: it is given a moment.
    looking = open_locked(local.with_name(local.name + ".lock"), fcntl.LOCK_EX)
    threading.Timer(0.003, release, args=(looking,)).start()
    assert let_go(local, mine) and not local.exists()


def test_a_forked_child_does_not_keep_a_hold_alive(tmp_path: Path) -> None:
    local = _shard(tmp_path)
    with claimed(local):
        mine = hold(local)
    reader, writer = os.pipe()
    started_reader, started_writer = os.pipe()
    child = os.fork()
    if child == 0:  # a loader worker: it lives on after the parent lets the shard go
        os.write(started_writer, b"x")  # the fork handlers have run by now
        os.read(reader, 1)
        os._exit(0)
    os.read(started_reader, 1)
    try:
        assert let_go(local, mine) and not local.exists()
    finally:
        os.write(writer, b"x")
        os.waitpid(child, 0)
        for fd in (reader, writer, started_reader, started_writer):
            os.close(fd)
