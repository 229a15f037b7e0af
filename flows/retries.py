"""When a failed task is worth another try: a transport error may pass, a shard that differs from its
manifest, a manifest that cannot be read or a refused credential will not (retrying them only repeats the
work, e.g. hashing the whole corpus again, before the same one-line error)."""

from __future__ import annotations

from typing import Any

from w2v.errors import CredentialsInOptions, ManifestError, ShardError

PERMANENT = (ShardError, ManifestError, CredentialsInOptions)


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: True unless the task failed with one of PERMANENT."""
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True
