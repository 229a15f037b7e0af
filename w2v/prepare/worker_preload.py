"""Imported once by the fork server that decoding children are forked from, so that no child pays for it.

Besides the decoding modules, this builds one tiny table: pyarrow imports pandas (and more) lazily on first
use, which would otherwise cost every child about 0.3 s. Each child is one worker on one core, so the BLAS
libraries numpy and scipy load are held to one thread: several threads per child only fight each other.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # only in the fork server and its children, before numpy loads BLAS

import numpy as np  # noqa: E402

from w2v.prepare import process  # noqa: E402
from w2v.shards.table import Utterance, utterance_table  # noqa: E402

utterance_table([Utterance("warm-up", np.zeros(1, np.int16), "warm-up", 0.0, 0.0, 0.0)]).to_pylist()
__all__ = ["process"]  # the module the children run
