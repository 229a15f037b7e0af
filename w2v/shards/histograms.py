"""Corpus-level histograms of the per-utterance quality columns, on fixed bins so corpora compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from w2v.shards.table import read_stream

# Values outside the range are counted in the first or last bin.
BINS: dict[str, list[float]] = {
    "snr_db": [-10.0, 0.0, 3.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0, 100.0],
    "speech_share": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "clipped_share": [0.0, 0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0],
    "dc_offset": [-1.0, -0.1, -0.05, -0.01, -0.001, 0.001, 0.01, 0.05, 0.1, 1.0],
    "rms_dbfs": [-120.0, -60.0, -50.0, -40.0, -35.0, -30.0, -25.0, -20.0, -15.0, -10.0, 0.0],
    "loudness_lufs": [-120.0, -60.0, -50.0, -40.0, -35.0, -30.0, -25.0, -20.0, -15.0, -10.0, 0.0],
    "peak": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0],
}


def quality_histograms(shards: list[Path]) -> dict[str, Any]:
    """{column: {"edges": [...], "counts": [...], "measured": n}} over every utterance in `shards`."""
    tables = [read_stream(path).select(list(BINS)) for path in shards]
    return table_histograms(pa.concat_tables(tables) if tables else None)


def table_histograms(table: pa.Table | None) -> dict[str, Any]:
    """quality_histograms of the rows of `table` (any table with the quality columns; None: no rows)."""
    result: dict[str, Any] = {}
    for name, edges in BINS.items():
        values = table.column(name).drop_null().to_numpy().astype(np.float64) if table is not None else np.zeros(0)
        clipped = np.clip(values, edges[0], edges[-1])
        counts, _ = np.histogram(clipped, bins=edges)
        result[name] = {"edges": edges, "counts": counts.tolist(), "measured": int(values.size)}
    return result


def can_merge(histograms: dict[str, Any]) -> bool:
    """Whether `histograms` (a manifest's) are on today's bins, so that counts can be added to them."""
    return set(histograms) == set(BINS) and all(histograms[n].get("edges") == e for n, e in BINS.items())


def merged_histograms(previous: dict[str, Any], added: dict[str, Any], removed: dict[str, Any]) -> dict[str, Any]:
    """previous + added - removed, bin by bin (all on BINS): a commit pays for the rows it adds and removes,
    not for the corpus. Raises ValueError when `previous` is on other bins (see can_merge)."""
    if not can_merge(previous):
        raise ValueError("the previous histograms are on other bins; compute them from the shards")
    result: dict[str, Any] = {}
    for name, edges in BINS.items():
        counts = np.asarray(previous[name]["counts"]) + added[name]["counts"] - np.asarray(removed[name]["counts"])
        measured = previous[name]["measured"] + added[name]["measured"] - removed[name]["measured"]
        result[name] = {"edges": edges, "counts": counts.tolist(), "measured": int(measured)}
    return result
