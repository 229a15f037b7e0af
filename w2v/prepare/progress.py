"""How far a run has got, read from its staging folder, so any process (the CLI, a UI) can show it."""

from __future__ import annotations

import json
from pathlib import Path

from w2v.shards.manifest import write_text_atomic

PLAN_RECORD = "plan.json"
STAGING_NAME = "_staging"
# A chunk being decoded says how many of its files are done in KEY.progress (its record, KEY.json, once done).
PROGRESS_SUFFIX = ".progress"


def write_plan_record(staging: Path, files_to_decode: int, chunks: int) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    write_text_atomic(staging / PLAN_RECORD, json.dumps({"files_to_decode": files_to_decode, "chunks": chunks}))


def staged_progress(out: Path) -> tuple[int, int | None]:
    """(files decoded so far, files to decode or None before the plan exists) for the run writing `out`."""
    staging = out / STAGING_NAME
    try:
        total = int(json.loads((staging / PLAN_RECORD).read_text())["files_to_decode"])
    except (OSError, ValueError, KeyError):
        return 0, None
    done = 0
    finished = set()
    for record in staging.glob("*.json"):
        if record.name == PLAN_RECORD:
            continue
        try:
            done += len(json.loads(record.read_text())["sources"])
            finished.add(record.stem)
        except (OSError, ValueError, KeyError):
            continue  # being renamed into place or cleaned up
    for progress in staging.glob(f"*{PROGRESS_SUFFIX}"):
        if progress.stem not in finished:
            try:
                done += int(progress.read_text())
            except (OSError, ValueError):
                continue
    return done, total
