"""The peak resident memory of this process alone.

Not getrusage's ru_maxrss: Linux carries a process's high-water mark across exec, and Python starts children
with vfork, so a child's ru_maxrss begins at its parent's peak (a benchmark that wrote a 10^7-row folder and
then started the measuring process would charge the writer's memory to the reader). VmHWM in
/proc/self/status belongs to the memory map made at exec.
"""

from __future__ import annotations

from pathlib import Path


def own_peak_rss_mb() -> float:
    """VmHWM of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise OSError("no VmHWM in /proc/self/status: this benchmark needs Linux")
