"""How far a run has got, read from its staging folder, so any process (the CLI, a UI) can show it."""

from __future__ import annotations

import json
from pathlib import Path

from w2v.shards.location import Location

PLAN_RECORD = "plan.json"
STAGING_NAME = "_staging"
# A chunk being decoded says how many of its files are done in KEY.progress (its record, KEY.json, once done).
PROGRESS_SUFFIX = ".progress"


def write_plan_record(staging: Path | Location, files_to_decode: int, chunks: int) -> None:
    place = Location.of(staging)
    place.make()
    place.write_bytes(PLAN_RECORD, json.dumps({"files_to_decode": files_to_decode, "chunks": chunks}).encode())


def staged_progress(out: Path | Location) -> tuple[int, int | None]:
    """(files decoded so far, files to decode or None before the plan exists) for the run writing `out`."""
    staging = Location.of(out).child(STAGING_NAME)
    try:
        total = int(json.loads(staging.read_bytes(PLAN_RECORD))["files_to_decode"])
    except (OSError, ValueError, KeyError):
        return 0, None
    done = 0
    finished = set()
    for name in staging.names("*.json"):
        if name == PLAN_RECORD:
            continue
        try:
            done += int(json.loads(staging.read_bytes(name))["files"])
            finished.add(name.removesuffix(".json"))
        except (OSError, ValueError, KeyError):
            continue  # being renamed into place or cleaned up
    for name in staging.names(f"*{PROGRESS_SUFFIX}"):
        if name.removesuffix(PROGRESS_SUFFIX) not in finished:
            try:
                done += int(staging.read_bytes(name))
            except (OSError, ValueError):
                continue
    return done, total
