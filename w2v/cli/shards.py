"""`w2v shards verify | filter | upgrade | inspect`: check, re-filter, upgrade and describe a shard folder
without decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from w2v.cli.root import app, console, fail, parse_storage_options
from w2v.cli.thresholds import parse_thresholds
from w2v.errors import W2VError

StorageOptionsOption = Annotated[
    str | None, typer.Option(help='fsspec options as JSON for a URL, e.g. \'{"endpoint_url": "http://…"}\'.')
]
shards_app = typer.Typer(help="Check and describe shard folders.", no_args_is_help=True)
app.add_typer(shards_app, name="shards")


@shards_app.command("verify")
def shards_verify(
    folder: Annotated[str, typer.Argument(help="A folder made by `w2v prepare`, or its URL (s3://…).")],
    storage_options: StorageOptionsOption = None,
) -> None:
    """Check every shard against the manifest (size, sha256, schema, rows); exit 1 on any mismatch."""
    from w2v.shards.location import Location
    from w2v.shards.verify import verify

    problems = verify(Location.of(folder, parse_storage_options(storage_options)))
    for problem in problems:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)  # a line per problem
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {folder}: every shard matches the manifest")


@shards_app.command("filter")
def shards_filter(
    src: Annotated[Path, typer.Argument(help="A folder made by `w2v prepare`.")],
    out: Annotated[Path, typer.Option(help="New folder for the filtered copy.")],
    max_clipped_share: Annotated[str | None, typer.Option(help="Remove pieces clipped more than this.")] = None,
    min_snr_db: Annotated[str | None, typer.Option(help="Remove pieces with a lower SNR estimate.")] = None,
    min_speech_share: Annotated[str | None, typer.Option(help="Remove pieces with less speech.")] = None,
    max_dc_offset: Annotated[str | None, typer.Option(help="Remove pieces with a larger |DC offset|.")] = None,
) -> None:
    """Copy a shard folder keeping only utterances that pass stricter filters (no decoding)."""
    from w2v.prepare.pipeline import utc_now
    from w2v.quality_filters import QualityThresholds
    from w2v.shards.filter import filter_folder

    thresholds = parse_thresholds(max_clipped_share, min_snr_db, min_speech_share, max_dc_offset)
    if thresholds == QualityThresholds(None, None, None, None):
        fail("give at least one filter, e.g. --min-snr-db 10")
    try:
        manifest = filter_folder(src, out, thresholds, utc_now())
    except W2VError as error:
        fail(str(error))
    removed = manifest.last_run["removed"]
    console.print(f"[green]{out}[/]: {manifest.counts()['utterances']} utterances kept, {removed} removed")


@shards_app.command("upgrade")
def shards_upgrade(folder: Annotated[Path, typer.Argument(help="A folder made by `w2v prepare`.")]) -> None:
    """Bring a folder an older w2v wrote to the current format in place: metadata only, no audio decoded."""
    from w2v.prepare.pipeline import utc_now
    from w2v.shards.schema import VERSION
    from w2v.shards.upgrade import upgrade

    try:
        manifest, changed = upgrade(folder, utc_now())
    except W2VError as error:
        fail(str(error))
    if not changed:
        console.print(f"{folder}: already version {VERSION}; nothing to do")
        return
    before = manifest.last_run["upgraded_from_version"]
    console.print(
        f"[green]{folder}[/]: upgraded from version {before} to {VERSION} ({len(manifest.sources)} source records "
        "moved to a source table; no audio decoded or rewritten)"
    )


@shards_app.command("inspect")
def shards_inspect(
    folder: Annotated[str, typer.Argument(help="A folder made by `w2v prepare`, or its URL (s3://…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write the quality histograms as a PNG here.")] = None,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Hours, utterances, duration histogram, bucket table and rejects by reason."""
    from dataclasses import asdict

    from w2v.shards.inspect import describe
    from w2v.shards.location import Location
    from w2v.shards.manifest import read_manifest

    place = Location.of(folder, parse_storage_options(storage_options))
    try:
        stats = describe(place, read_manifest(place))
    except W2VError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(asdict(stats), indent=1))
        return
    out = Console()
    out.print(
        f"[bold]{folder}[/]: {stats.hours:.2f} h, {stats.utterances} utterances from {stats.files_kept} of "
        f"{stats.files_seen} files"
    )
    buckets = Table("bucket", "seconds", "shards", "utterances", "hours", title="Length buckets")
    for b in stats.buckets:
        buckets.add_row(
            str(b.bucket), f"{b.low_seconds:.2f}–{b.high_seconds:.2f}", str(b.shards), str(b.utterances),
            f"{b.hours:.3f}",
        )  # fmt: skip
    out.print(buckets)
    histogram = Table("duration (s)", "utterances", "", title="Durations")
    widest = max(stats.histogram_counts, default=0) or 1
    edges = stats.histogram_edges_seconds
    for i, count in enumerate(stats.histogram_counts):
        histogram.add_row(f"{edges[i]:.1f}–{edges[i + 1]:.1f}", str(count), "█" * round(30 * count / widest))
    out.print(histogram)
    rejects = Table("reason", "files", title="Rejected (details in rejects.jsonl)")
    for reason, count in stats.rejected.items():
        rejects.add_row(reason, str(count))
    out.print(rejects)
    out.print(
        f"rejected audio {stats.rejected_hours * 3600:.1f} s; short pieces dropped {stats.short_pieces_dropped} "
        f"({stats.dropped_hours * 3600:.1f} s)"
    )
    removed = Table("reason", "seconds removed", title="Audio removed, by reason")
    for reason, seconds in stats.seconds_removed_by_reason.items():
        removed.add_row(reason, f"{seconds:.1f}")
    out.print(removed)
    quality = Table("measure", "histogram (bin lower edges: counts)", title="Quality of kept utterances")
    for name, histogram in stats.quality_histograms.items():
        cells = [f"{e:g}:{c}" for e, c in zip(histogram["edges"], histogram["counts"], strict=False) if c]
        quality.add_row(name, "  ".join(cells) or "not measured")
    out.print(quality)
    if plot is not None:
        from w2v.shards.plot import quality_plot_png

        plot.write_bytes(quality_plot_png(stats.quality_histograms, str(folder)))
        out.print(f"quality histograms: {plot}")
