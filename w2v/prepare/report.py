"""The corpus report: a Markdown summary of a shard folder, for the Prefect UI and for people."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from w2v.shards.inspect import describe
from w2v.shards.location import Location
from w2v.shards.manifest import Manifest
from w2v.shards.plot import quality_plot_png


def run_summary(manifest: Manifest) -> dict[str, Any]:
    """The flow's return value: small, JSON-able figures of the folder and of the last run."""
    return {
        "generation": manifest.generation,
        "counts": manifest.counts(),
        "seconds": manifest.seconds(),
        "last_run": manifest.last_run,
    }


def corpus_report_markdown(manifest: Manifest, out: str | Path | Location) -> str:
    """The report of the folder `out` (a path, a URL, or a Location with its storage options)."""
    folder = Location.of(out)
    stats = describe(folder, manifest)
    run = manifest.last_run
    lines = [
        f"# Corpus report: `{folder.root}`",
        "",
        f"**{stats.hours:.2f} h** in **{stats.utterances}** utterances from {stats.files_kept} of "
        f"{stats.files_seen} files; generation {manifest.generation}.",
        "",
        f"This run: {run.get('files_listed', 0)} files listed, {run.get('files_unchanged', 0)} unchanged, "
        f"{run.get('files_decoded', 0)} decoded.",
        "",
        "| bucket | seconds | shards | utterances | hours |",
        "|---:|---|---:|---:|---:|",
    ]
    for b in stats.buckets:
        lines.append(
            f"| {b.bucket} | {b.low_seconds:.2f}–{b.high_seconds:.2f} | {b.shards} | {b.utterances} | {b.hours:.3f} |"
        )
    lines += ["", "| duration (s) | utterances |", "|---|---:|"]
    edges = stats.histogram_edges_seconds
    for i, count in enumerate(stats.histogram_counts):
        lines.append(f"| {edges[i]:.1f}–{edges[i + 1]:.1f} | {count} |")
    lines += ["", "| rejected reason | files |", "|---|---:|"]
    for reason, count in stats.rejected.items():
        lines.append(f"| `{reason}` | {count} |")
    lines += [
        "",
        f"Rejected audio: {stats.rejected_hours * 3600:.1f} s; short pieces dropped: "
        f"{stats.short_pieces_dropped} ({stats.dropped_hours * 3600:.1f} s). Details: `rejects.jsonl`.",
        "",
        "| removed by | seconds |",
        "|---|---:|",
    ]
    lines += [f"| `{reason}` | {seconds:.1f} |" for reason, seconds in stats.seconds_removed_by_reason.items()]
    if stats.quality_histograms and any(h["measured"] for h in stats.quality_histograms.values()):
        png = quality_plot_png(stats.quality_histograms, f"Quality of the {stats.utterances} kept utterances")
        lines += [
            "",
            "## Quality",
            "",
            f"![quality histograms](data:image/png;base64,{base64.b64encode(png).decode()})",
        ]
    return "\n".join(lines) + "\n"
