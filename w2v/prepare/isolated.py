"""Run a chunk in a child process: decoding uses another core, and a decoder crash costs one file, not a run.

libsndfile and FFmpeg hold the GIL and, on hostile input, can crash the process they run in. Each decoding
thread keeps a child process, forked from a preloaded fork server, and runs its chunks there; if the child
dies, the chunk is decoded again one file per call, and the file whose child dies is rejected as
`decode_crash`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import threading
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from w2v.errors import W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.process import Chunk, SourceTask, process_chunk
from w2v.prepare.shard_writer import ChunkWriter, ShardLayout, chunk_is_complete, record_url
from w2v.shards.location import Location
from w2v.shards.manifest import SourceEntry

T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("forkserver")
# "__main__" too: each child would otherwise import the parent's main module again (spawn semantics).
_CONTEXT.set_forkserver_preload(["w2v.prepare.worker_preload", "__main__"])


class ChildCrashed(W2VError):
    def __init__(self, what: str, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            how = f"killed by signal {signal.Signals(-exitcode).name}"
        else:
            how = f"exit code {exitcode}"
        super().__init__(f"{what}: worker process died ({how})")
        self.exitcode = exitcode


def process_chunk_isolated(
    chunk: Chunk,
    config: PrepareConfig,
    layout: ShardLayout,
    out: Path | str | Location,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """`process_chunk` in a child process; survives a decoder crash by isolating the file that caused it."""
    folder = Location.of(out, storage_options)
    if chunk_is_complete(folder, chunk.key):
        return record_url(folder, chunk.key)
    try:
        return run_in_child(process_chunk, (chunk, config, layout, out, storage_options), f"chunk {chunk.key}")
    except ChildCrashed as crash:
        # Blame a file only if a child can run at all: otherwise every file would be quarantined for a
        # broken environment.
        try:
            run_in_child(_alive, (), "a worker process")
        except ChildCrashed as canary:
            raise W2VError(f"{canary}; no file was decoded (first failure: {crash})") from crash
    # Shards the crashed child wrote are overwritten by the same names, or left unreferenced for the commit.
    writer = ChunkWriter(folder, chunk.key, layout, chunk.label)
    try:
        for task in chunk.tasks:
            try:
                writer.add(*run_in_child(_process_one, (task, config, storage_options), task.source.uri))
            except ChildCrashed as crash:
                entry = SourceEntry(**task.entry_fields(), status="rejected", reason="decode_crash", error=str(crash))
                writer.add(entry, [])
        return writer.finish()
    finally:
        writer.close()


def _alive() -> bool:
    return True


def _process_one(task: SourceTask, config: PrepareConfig, storage_options: dict[str, Any] | None) -> Any:
    from w2v.prepare.process import process_source

    return process_source(task, config, storage_options)


class _Worker:
    """A child process that runs call after call until it dies or is told to stop."""

    def __init__(self) -> None:
        self._connection, child_end = _CONTEXT.Pipe(duplex=True)
        self._process = _CONTEXT.Process(target=_serve, args=(child_end,), daemon=True)
        self._process.start()
        child_end.close()
        # Stop the child when this object goes (its thread ended), without waiting on it.
        weakref.finalize(self, _stop, self._connection)

    def call(self, function: Callable[..., T], args: tuple[Any, ...], what: str) -> T:
        try:
            self._connection.send((function, args))
            status, payload = self._connection.recv()
        except (EOFError, OSError):
            self._process.join(timeout=10)
            raise ChildCrashed(what, self._process.exitcode) from None
        if status == "error":
            error, text = payload
            raise error from RuntimeError(text)
        result: T = payload
        return result

    @property
    def alive(self) -> bool:
        return self._process.is_alive()


def _stop(connection: multiprocessing.connection.Connection) -> None:
    with contextlib.suppress(OSError):
        connection.send(None)
    connection.close()


_local = threading.local()


def run_in_child(function: Callable[..., T], args: tuple[Any, ...], what: str) -> T:
    """Call `function(*args)` in this thread's child process (started on first use, again after a crash).

    The child's exception is raised here; if the child dies, ChildCrashed is, and the next call starts a new
    one. Keeping one child per thread saves starting a process per chunk.
    """
    worker: _Worker | None = getattr(_local, "worker", None)
    if worker is None and multiprocessing.current_process().daemon:
        raise W2VError(
            f"{what}: this process is daemonic and may not start the decoder's child process; on a Dask "
            "cluster start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False"
        )
    if worker is None or not worker.alive:
        worker = _local.worker = _Worker()
    try:
        return worker.call(function, args, what)
    except ChildCrashed:
        _local.worker = None
        raise


def _serve(connection: multiprocessing.connection.Connection) -> None:
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent went away
            return
        if request is None:
            return
        function, args = request
        try:
            connection.send(("ok", function(*args)))
        except BaseException as error:  # everything goes back to the parent, which decides
            text = traceback.format_exc()
            try:
                connection.send(("error", (error, text)))
            except Exception:  # the exception itself may not pickle
                connection.send(("error", (W2VError(f"{type(error).__name__}: {error}"), text)))
