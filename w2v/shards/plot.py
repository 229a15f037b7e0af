"""A PNG of the quality histograms, for the corpus report artifact and for `w2v shards inspect --plot`."""

from __future__ import annotations

import io
from typing import Any

LABELS = {
    "snr_db": "SNR estimate (dB)",
    "speech_share": "speech share",
    "clipped_share": "clipped share",
    "dc_offset": "DC offset",
    "rms_dbfs": "RMS level (dBFS)",
    "loudness_lufs": "loudness (LUFS)",
    "peak": "peak (full scale = 1)",
}


def quality_plot_png(histograms: dict[str, Any], title: str) -> bytes:
    """Bar charts of each histogram (bins as labelled categories, since several are not evenly spaced)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [n for n in LABELS if n in histograms]
    columns = 4
    rows = max(1, -(-len(names) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        edges, counts = histograms[name]["edges"], histograms[name]["counts"]
        labels = [f"{edges[i]:g}" for i in range(len(counts))]
        axis.bar(range(len(counts)), counts, color="#3b6ea8")
        axis.set_xticks(range(len(counts)), labels, rotation=60, fontsize=7)
        axis.set_title(LABELS[name], fontsize=10)
        axis.set_ylabel("utterances", fontsize=8)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
