"""The `accelerate launch` prefix the flows train under: every rank gets its share of the machine's cores
(accelerate alone would give a CPU-only run one thread)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flows.tasks import accelerate_launch, cpu_threads_per_process

CORES = len(os.sched_getaffinity(0))


def test_ranks_share_the_cores_unless_the_user_set_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads_per_process(1) == CORES
    assert cpu_threads_per_process(2) == max(1, CORES // 2)
    assert cpu_threads_per_process(4 * CORES) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_per_process(1) == 3


def test_an_accelerate_config_file_shares_the_cores_among_its_ranks_on_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = tmp_path / "two.yaml"
    config.write_text("num_machines: 2\nnum_processes: 4\n")
    command = accelerate_launch(accelerate_config=str(config))
    assert command[-2:] == ["--num_cpu_threads_per_process", str(max(1, CORES // 2))]
    assert accelerate_launch(accelerate_config=str(tmp_path / "missing.yaml"))[-1] == str(CORES)


@pytest.mark.slow
def test_a_launched_training_process_uses_every_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    script = tmp_path / "threads.py"
    script.write_text("import os, torch\nprint('threads', torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])\n")
    done = subprocess.run([*accelerate_launch(1), str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"threads {CORES} {CORES}" in done.stdout
