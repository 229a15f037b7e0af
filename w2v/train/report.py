"""The training report: a table of the logged metrics and the learning curves (loss, held-out accuracy against
chance, perplexity), as markdown."""

from __future__ import annotations

import base64
import io
from typing import Any

COLUMNS = (
    "step",
    "loss",
    "contrastive_loss",
    "masked_share",
    "perplexity",
    "grad_norm",
    "lr",
    "audio_seconds_per_second",
)


def training_plot_png(records: list[dict[str, Any]], title: str) -> bytes:
    """The learning curves against the update step: training and validation loss (left), held-out contrastive
    accuracy against chance (middle: what a model that learned nothing scores), codevector perplexity (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.5))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", color="#3b6ea8")
    if val:
        left.plot(
            [r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss", color="#c0504d"
        )
        middle.plot([r["step"] for r in val], [r["val_accuracy"] for r in val], "o-", color="#c0504d",
                    label="held-out accuracy")  # fmt: skip
        chance = [r["val_contrastive_chance"] for r in val if "val_contrastive_chance" in r]
        if chance:
            middle.axhline(chance[-1], linestyle="--", color="#777777", label=f"chance ({chance[-1]:.3f})")
        middle.set_ylim(bottom=0)
        middle.legend(fontsize=8)
    left.set_xlabel("update")
    left.set_ylabel("loss per masked frame")
    left.legend(fontsize=8)
    middle.set_xlabel("update")
    middle.set_ylabel("contrastive accuracy")
    right.plot([r["step"] for r in train], [r["perplexity"] for r in train], color="#4f8a3c")
    right.set_xlabel("update")
    right.set_ylabel("codevector perplexity")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def training_report_markdown(
    records: list[dict[str, Any]], run_dir: str, extra: dict[str, Any] | None = None, plot: bytes | None = None
) -> str:
    """The report as markdown, with `plot` (training_plot_png's, drawn here if not given) inline."""
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    lines = [f"# Pretraining report: `{run_dir}`", ""]
    if not train:
        return "\n".join([*lines, "No metrics logged yet."])
    last = train[-1]
    lines += [
        f"Update **{last['step']}**: loss {last['loss']:.4f}, perplexity {last['perplexity']:.1f}, "
        f"{last['audio_seconds_per_second']:.1f} audio-s/s, data wait {100 * last['data_wait_share']:.1f} %, "
        f"skipped updates {last['skipped_steps']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for record in train[-20:]:
        lines.append("| " + " | ".join(_cell(record.get(c)) for c in COLUMNS) + " |")
    if val:
        lines += ["", "| step | val loss | val accuracy | val perplexity |", "|---:|---:|---:|---:|"]
        lines += [
            f"| {r['step']} | {r['val_loss']:.4f} | {r['val_accuracy']:.3f} | {r['val_perplexity']:.1f} |"
            for r in val[-20:]
        ]
    for key, value in (extra or {}).items():
        lines += ["", f"**{key}**: {value}"]
    png = base64.b64encode(plot or training_plot_png(records, "pretraining")).decode()
    lines += ["", f"![training curves](data:image/png;base64,{png})"]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
