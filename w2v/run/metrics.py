"""Training metrics: one JSON line per log step in RUN/metrics.jsonl (kept consistent across resumes and
rollbacks), and the same numbers as TensorBoard scalars in RUN/tensorboard (`tensorboard --logdir RUN`)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_NAME = "tensorboard"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the accelerator's allocator when there is one, else the peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MetricsLog:
    """Appends records; on resume from step S, records of later steps (redone now) are dropped first.

    TensorBoard gets every numeric field of each record, under train/ or val/ (its event files are
    append-only: after a resume the redone steps appear again, and TensorBoard shows the latest).
    """

    def __init__(self, run_dir: Path, resumed_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS_NAME
        run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_NAME), purge_step=resumed_step)
        if resumed_step is not None and self.path.exists():
            self.rewind(resumed_step)
        elif resumed_step is None:
            self.path.write_text("")

    def rewind(self, step: int) -> None:
        """Forget the records of steps after `step` (they are about to be done again)."""
        kept = [line for line in self.path.read_text().splitlines() if _step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tag = f"val/{name[4:]}" if name.startswith("val_") else f"train/{name}"
                self.tensorboard.add_scalar(tag, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of RUN/metrics.jsonl, oldest first (none when the run has not logged yet)."""
    path = run_dir / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a crash: drop it
