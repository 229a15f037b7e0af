"""Imported once by the fork server that decoding children are forked from, so that no child pays for it.

Besides the decoding modules, this builds one tiny table: pyarrow imports pandas (and more) lazily on first
use, which would otherwise cost every child about 0.3 s.
"""

import numpy as np

from w2v.prepare import process
from w2v.shards.table import Utterance, utterance_table

utterance_table([Utterance("warm-up", np.zeros(1, np.int16), "warm-up", 0.0, 0.0, 0.0)]).to_pylist()
__all__ = ["process"]  # the module the children run
