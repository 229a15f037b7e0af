"""Reorganising the training code changes nothing it computes: fixed-seed runs end on the saved weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference_weights.json"
# One thread and one instruction set: the sums inside matrix products then come out in the same order on any
# x86 machine (more threads or AVX-512 kernels may add in another order, and floats round differently).
PINNED = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "CUDA_VISIBLE_DEVICES": "",
}


def test_fixed_seed_pretraining_and_fine_tuning_end_on_the_reference_weights(tmp_path: Path) -> None:
    out = tmp_path / "digests.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.reference_runs", str(out)],
        cwd=ROOT,
        env={**os.environ, **PINNED},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    measured, reference = json.loads(out.read_text()), json.loads(REFERENCE.read_text())
    assert measured.keys() == reference.keys()
    for run, tensors in reference.items():
        assert measured[run].keys() == tensors.keys(), run
        changed = [
            f"{name} (sum {measured[run][name][1]!r}, was {digest[1]!r})"
            for name, digest in tensors.items()
            if measured[run][name][0] != digest[0]
        ]
        assert not changed, f"{run}: {len(changed)} of {len(tensors)} tensors differ: {changed[:5]}"
