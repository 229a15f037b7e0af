"""Run a chunk in a child process: decoding uses another core, and a decoder crash costs one file, not a run.

libsndfile and FFmpeg hold the GIL and, on hostile input, can crash the process they run in. Chunks are
decoded in child processes forked from a preloaded fork server; if a child dies while decoding a chunk, the
chunk is decoded again one file per call, and the file whose child dies is rejected as `decode_crash`.

A child decodes one chunk at a time, in the order asked, and writes a chunk's last shards and its record on
a thread of its own while it decodes the next: with short files most of a chunk's bytes go to the disk at
its end, and a child that waited for them would leave its core idle. So each child takes two chunks at once
(a pool of `workers` children serves twice as many threads); a call still returns only once its chunk's
record is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from w2v.errors import W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.process import Chunk, SourceTask, decode_chunk
from w2v.prepare.shard_writer import BUFFER_BYTES, ChunkWriter, ShardLayout, chunk_is_complete, record_url
from w2v.shards.location import Location
from w2v.shards.manifest import SourceEntry

T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("forkserver")
# "__main__" too: each child would otherwise import the parent's main module again (spawn semantics).
_CONTEXT.set_forkserver_preload(["w2v.prepare.worker_preload", "__main__"])
# Chunks a child holds at once: one decoding, one whose shards and record are being written.
CHUNKS_PER_CHILD = 2
# A call whose child died before it started (or after its own part was done) is sent again, this often.
RESENDS = 2


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
        record = run_in_child(_decode_then_finish, (chunk, config, layout, out, storage_options), f"chunk {chunk.key}")
        return cast(str, record)  # the child waits for the Future before it replies
    except ChildCrashed as crash:
        first_failure = crash
    # One file per call, in a child shared with no other call: a death there is that file's doing.
    alone = ChildPool(1)
    try:
        # Blame a file only if a child can run at all: otherwise every file would be quarantined for a
        # broken environment.
        try:
            run_in_child(_alive, (), "a worker process", alone)
        except ChildCrashed as canary:
            raise W2VError(f"{canary}; no file was decoded (first failure: {first_failure})") from first_failure
        # Shards the crashed child wrote are overwritten by the same names, or left unreferenced for the commit.
        writer = ChunkWriter(folder, chunk.key, layout, chunk.label)
        try:
            for task in chunk.tasks:
                try:
                    writer.add(*run_in_child(_process_one, (task, config, storage_options), task.source.uri, alone))
                except ChildCrashed as crash:
                    error = str(crash)
                    writer.add(
                        SourceEntry(**task.entry_fields(), status="rejected", reason="decode_crash", error=error), []
                    )
            return writer.finish()
        finally:
            writer.close()
    finally:
        alone.stop()


def _alive() -> bool:
    return True


def _process_one(task: SourceTask, config: PrepareConfig, storage_options: dict[str, Any] | None) -> Any:
    from w2v.prepare.process import process_source

    return process_source(task, config, storage_options)


def _decode_then_finish(
    chunk: Chunk,
    config: PrepareConfig,
    layout: ShardLayout,
    out: Path | str | Location,
    storage_options: dict[str, Any] | None,
) -> str | Future[str]:
    """In a child: decode the chunk now, and write its last shards and its record on the child's finishing
    thread (the call returns once they are written). Two chunks share the child's memory: each buffers half."""
    writer = decode_chunk(chunk, config, layout, out, storage_options, BUFFER_BYTES // CHUNKS_PER_CHILD)
    if isinstance(writer, str):
        return writer
    return _finisher().submit(_finish, writer)


def _finish(writer: ChunkWriter) -> str:
    try:
        return writer.finish()
    finally:
        writer.close()


_finishing: ThreadPoolExecutor | None = None


def _finisher() -> ThreadPoolExecutor:
    """The child's one thread for finishing chunks (created in the child, never in the fork server)."""
    global _finishing
    if _finishing is None:
        _finishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish-chunk")
    return _finishing


class _Died(Exception):
    """The child died with this call pending; `blamed` when the call's own part was running."""

    def __init__(self, exitcode: int | None, blamed: bool) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode
        self.blamed = blamed


@dataclass
class _Call:
    what: str
    stage: str = "sent"  # → started (running in the child) → deferred (its own part done, finishing) → done
    future: Future[tuple[str, Any]] = field(default_factory=Future)


class _Child:
    """A child process that runs calls in the order sent; a call may finish on the child's finishing thread
    while the next one runs. A thread here reads the child's replies."""

    def __init__(self) -> None:
        self._connection, child_end = _CONTEXT.Pipe(duplex=True)
        self._process = _CONTEXT.Process(target=_serve, args=(child_end,), daemon=True)
        self._process.start()
        child_end.close()
        self._lock = threading.Lock()  # the calls and their stages
        self._sending = threading.Lock()  # the pipe, for whole messages
        self._calls: dict[int, _Call] = {}
        self._numbers = itertools.count()
        self._dead = False
        threading.Thread(target=self._read, name=f"child-{self._process.pid}", daemon=True).start()

    @property
    def load(self) -> int:
        return len(self._calls)

    @property
    def usable(self) -> bool:
        return not self._dead and self._process.is_alive()

    def reserve(self, what: str) -> tuple[int, _Call]:
        """Count a call against this child before it is sent (the pool chooses by load)."""
        call = _Call(what)
        with self._lock:
            number = next(self._numbers)
            if self._dead:
                call.future.set_exception(_Died(self._process.exitcode, blamed=False))
            else:
                self._calls[number] = call
        return number, call

    def send(self, number: int, call: _Call, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Send a reserved call. A child busy with a long call reads it only when that ends, so this may wait;
        it holds only this child's sending lock meanwhile (replies are read on, other children sent to)."""
        if call.future.done():
            return
        with self._sending:
            try:
                self._connection.send((number, function, args))
            except OSError:  # the child is gone: the reader thread fails every pending call
                return
            except Exception as error:  # arguments that do not pickle: nothing was sent
                with self._lock:
                    ours = self._calls.pop(number, None) is call  # else the reader failed it already
                if ours:
                    call.future.set_exception(error)

    def stop(self) -> None:
        """Ask the child to finish what it holds and exit (it does not wait for that)."""
        with self._sending, contextlib.suppress(OSError):
            self._connection.send(None)

    def _read(self) -> None:
        try:
            while True:
                number, kind, payload = self._connection.recv()
                with self._lock:
                    call = self._calls.get(number) if kind in ("started", "deferred") else self._calls.pop(number, None)
                if call is None:
                    continue
                if kind in ("started", "deferred"):
                    call.stage = kind
                else:
                    call.future.set_result(_reply(kind, payload, call.what))
        except (EOFError, OSError):
            pass  # the child is gone
        except Exception:  # a message this end cannot read: the conversation is lost, the child stopped
            self._process.kill()
        self._process.join(timeout=10)
        with self._lock:
            self._dead = True
            pending, self._calls = list(self._calls.values()), {}
        self._connection.close()
        # The call that was running is blamed, unless another call was being written meanwhile: either could
        # have killed the child (an out-of-memory kill, say), so both are sent again.
        writing = any(call.stage == "deferred" for call in pending)
        for call in pending:
            if not call.future.done():
                call.future.set_exception(_Died(self._process.exitcode, call.stage == "started" and not writing))


def _reply(kind: str, payload: bytes, what: str) -> tuple[str, Any]:
    """A reply as (kind, payload), its payload pickled by the child on its own: one that does not unpickle
    here (an exception whose constructor takes other arguments than it stores, say) fails its call alone."""
    try:
        return kind, pickle.loads(payload)
    except Exception as error:
        return "error", (
            W2VError(f"{what}: the worker's reply cannot be read here ({type(error).__name__}: {error})"),
            "",
        )


class ChildPool:
    """At most `limit` children; a call goes to the least busy one, a new child is started while every
    child is busy and the limit allows."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._children: list[_Child] = []
        self._lock = threading.Lock()

    def send(self, function: Callable[..., Any], args: tuple[Any, ...], what: str) -> _Call:
        with self._lock:
            self._children = [c for c in self._children if c.usable]
            idle = [c for c in self._children if c.load == 0]
            if not idle and len(self._children) < self.limit:
                if multiprocessing.current_process().daemon:
                    raise W2VError(
                        f"{what}: this process is daemonic and may not start the decoder's child process; on a "
                        "Dask cluster start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False"
                    )
                self._children.append(_Child())
            child = min(self._children, key=lambda c: c.load)
            number, call = child.reserve(what)
        child.send(number, call, function, args)
        return call

    def stop(self) -> None:
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            child.stop()


def _default_limit() -> int:
    return int(os.environ.get("W2V_DECODE_PROCESSES") or os.cpu_count() or 1)


_default_pool = ChildPool(_default_limit())
_current_pool: contextvars.ContextVar[ChildPool | None] = contextvars.ContextVar("w2v_child_pool", default=None)


@contextlib.contextmanager
def child_processes(limit: int) -> Iterator[ChildPool]:
    """Decode with at most `limit` child processes in this context (threads started with a copy of it
    included); they are stopped at its end. Outside one, a process has W2V_DECODE_PROCESSES children (default:
    one per core), kept until it exits: a Dask worker runs as many chunks at once as it has threads."""
    pool = ChildPool(limit)
    token = _current_pool.set(pool)
    try:
        yield pool
    finally:
        _current_pool.reset(token)
        pool.stop()


def run_in_child(function: Callable[..., T], args: tuple[Any, ...], what: str, pool: ChildPool | None = None) -> T:
    """Call `function(*args)` in a child process of `pool` (default: the current one, see child_processes);
    a result that is a Future is waited for in the child (see the module doc).

    The child's exception is raised here; if the child dies while running this call, ChildCrashed is. A call
    that was waiting its turn or being written, or that ran while another was being written (either could
    have killed the child), is sent again to a new child, at most RESENDS times.
    """
    pool = pool or _current_pool.get() or _default_pool
    for attempt in range(RESENDS + 1):
        call = pool.send(function, args, what)
        try:
            status, payload = call.future.result()
        except _Died as died:
            if died.blamed or attempt == RESENDS:
                raise ChildCrashed(what, died.exitcode) from None
            continue
        if status == "error":
            error, text = payload
            raise error from RuntimeError(text)
        result: T = payload
        return result
    raise AssertionError("unreachable")


def _serve(connection: multiprocessing.connection.Connection) -> None:
    lock = threading.Lock()
    deferred: list[Future[Any]] = []

    def reply(number: int, kind: str, payload: Any) -> None:
        try:
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # a result or exception that does not pickle
            if kind == "ok":
                payload = (W2VError(f"result does not pickle: {type(error).__name__}: {error}"), "")
            else:
                exception, text = payload
                payload = (W2VError(f"{type(exception).__name__}: {exception}"), text)
            kind, data = "error", pickle.dumps(payload)
        with lock:
            connection.send((number, kind, data))

    def finished(number: int, future: Future[Any]) -> None:
        error = future.exception()
        if error is None:
            reply(number, "ok", future.result())
        else:
            reply(number, "error", (error, "".join(traceback.format_exception(error))))

    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent went away
            return
        if request is None:
            for future in deferred:  # what was asked is written before the child exits
                future.exception()
            return
        number, function, args = request
        reply(number, "started", None)
        try:
            result = function(*args)
        except BaseException as error:  # everything goes back to the parent, which decides
            reply(number, "error", (error, traceback.format_exc()))
            continue
        if isinstance(result, Future):
            reply(number, "deferred", None)
            deferred = [f for f in deferred if not f.done()] + [result]
            result.add_done_callback(functools.partial(finished, number))
        else:
            reply(number, "ok", result)
