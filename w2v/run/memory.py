"""The out-of-memory guard: recognise an OOM, release what it held, and remember the smaller micro-batches.

When a step runs out of memory, its planned micro-batches are read in twice as many pieces (half the rows
each) and twice the accumulation, so every update still covers the same utterances. One process does that
in place and goes on. Several processes cannot (the other ranks wait in a collective for the one that
failed), so the failing rank writes RUN/oom.json and stops the job; `--resume auto` (the pretrain flow's
retry) starts again from the last checkpoint with the split it asks for.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import torch

from w2v.atomic import write_text_atomic

MARKER = "oom.json"
# Fault injection for trying the guard on any machine: micro-batches with more audio samples than this
# (input rows × samples) raise an out-of-memory error as a GPU would.
SIMULATE_ENV = "W2V_SIMULATE_OOM_ABOVE_SAMPLES"


class OutOfMemory(Exception):
    """A micro-batch did not fit: how big it was (rows × samples) and where in the stream."""

    def __init__(self, rows: int, samples: int, position: int) -> None:
        self.rows, self.samples, self.position = rows, samples, position
        super().__init__(f"out of memory on a micro-batch of {rows} rows × {samples} samples (position {position})")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def check_simulated_limit(rows: int, samples: int) -> None:
    limit = os.environ.get(SIMULATE_ENV)
    if limit and rows * samples > int(limit):
        raise torch.OutOfMemoryError(f"simulated: {rows} × {samples} samples is above {SIMULATE_ENV}={limit}")


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_marker(run_dir: Path, split: int, step: int, rank: int) -> None:
    record = {"micro_batch_split": split, "step": step, "rank": rank}
    write_text_atomic(Path(run_dir) / MARKER, json.dumps(record) + "\n")


def marker_split(run_dir: Path) -> int:
    """The split a failed multi-process run asked for (1 when none did)."""
    path = Path(run_dir) / MARKER
    try:
        return max(1, int(json.loads(path.read_text())["micro_batch_split"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def clear_marker(run_dir: Path) -> None:
    """Once a checkpoint holds the split, the marker has done its work."""
    (Path(run_dir) / MARKER).unlink(missing_ok=True)
