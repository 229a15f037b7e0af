"""Run a chunk in a child process: decoding uses another core, and a decoder crash costs one file, not a run.

libsndfile and FFmpeg hold the GIL and, on hostile input, can crash the process they run in. Each chunk is
decoded in a child forked from a preloaded fork server (cheap to start); if the child dies, the chunk is
decoded again one file per child, and the file whose child dies is rejected as `decode_crash`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from w2v.errors import W2VError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.process import Chunk, SourceTask, part_paths, process_chunk, write_part
from w2v.shards.manifest import SourceEntry

T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["w2v.prepare.process"])


class ChildCrashed(W2VError):
    def __init__(self, what: str, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            how = f"killed by signal {signal.Signals(-exitcode).name}"
        else:
            how = f"exit code {exitcode}"
        super().__init__(f"{what}: worker process died ({how})")
        self.exitcode = exitcode


def process_chunk_isolated(
    chunk: Chunk, config: PrepareConfig, staging: Path, storage_options: dict[str, Any] | None = None
) -> Path:
    """`process_chunk` in a child process; survives a decoder crash by isolating the file that caused it."""
    json_path = part_paths(staging, chunk.key)[1]
    if json_path.exists():
        return json_path
    try:
        return run_in_child(process_chunk, (chunk, config, staging, storage_options), f"chunk {chunk.key}")
    except ChildCrashed:
        pass
    results = []
    for task in chunk.tasks:
        try:
            results.append(run_in_child(_process_one, (task, config, storage_options), task.source.uri))
        except ChildCrashed as crash:
            entry = SourceEntry(**task.entry_fields(), status="rejected", reason="decode_crash", error=str(crash))
            results.append((entry, []))
    return write_part(chunk.key, staging, results)


def _process_one(task: SourceTask, config: PrepareConfig, storage_options: dict[str, Any] | None) -> Any:
    from w2v.prepare.process import process_source

    return process_source(task, config, storage_options)


def run_in_child(function: Callable[..., T], args: tuple[Any, ...], what: str) -> T:
    """Call `function(*args)` in a forked child; re-raise its exception here, or ChildCrashed if it dies."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child_main, args=(sender, function, args), daemon=True)
    child.start()
    sender.close()
    try:
        message = receiver.recv()
    except EOFError:
        child.join()
        raise ChildCrashed(what, child.exitcode) from None
    finally:
        receiver.close()
    child.join()
    status, payload = message
    if status == "error":
        error, text = payload
        raise error from RuntimeError(text)
    result: T = payload
    return result


def _child_main(
    sender: multiprocessing.connection.Connection, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        result = function(*args)
        sender.send(("ok", result))
    except BaseException as error:  # everything goes back to the parent, which decides
        text = traceback.format_exc()
        try:
            sender.send(("error", (error, text)))
        except Exception:  # the exception itself may not pickle
            sender.send(("error", (W2VError(f"{type(error).__name__}: {error}"), text)))
    finally:
        sender.close()
