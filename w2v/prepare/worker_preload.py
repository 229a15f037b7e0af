"""Imported once by the fork server that decoding children are forked from, so that no child pays for it.

Besides the decoding modules, this builds one tiny table: pyarrow imports pandas (and more) lazily on first
use, which would otherwise cost every child about 0.3 s. Each child is one worker on one core, so the BLAS
libraries numpy and scipy load are held to one thread: several threads per child only fight each other.
glibc's malloc is told to keep freed memory: each file allocates arrays of megabytes, which by default are
mapped fresh and given back every time, and touching fresh pages cost more than the work done on them.
"""

import ctypes
import ctypes.util
import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # only in the fork server and its children, before numpy loads BLAS


def _keep_freed_memory() -> None:
    """mallopt: big arrays from the heap, not fresh maps; no trimming (a child's heap peaks at a few files)."""
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(os, "fork"):
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    if not mallopt(m_mmap_threshold, 1 << 30):  # older glibc caps it at 32 MB on 64-bit
        mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


_keep_freed_memory()

import numpy as np  # noqa: E402

from w2v.prepare import process  # noqa: E402
from w2v.shards.table import Utterance, utterance_table  # noqa: E402

utterance_table([Utterance("warm-up", np.zeros(1, np.int16), "warm-up", 0.0, 0.0, 0.0)]).to_pylist()
__all__ = ["process"]  # the module the children run
