"""`w2v prepare`: raw audio to shards through the prepare-corpus flow, with a progress bar of files decoded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from w2v.cli.root import CredentialsBlock, app, console, fail, parse_storage_options, prefect_api
from w2v.cli.thresholds import parse_thresholds
from w2v.errors import W2VError

if TYPE_CHECKING:
    from w2v.shards.location import Location


@app.command()
def prepare(
    sources: Annotated[list[str], typer.Argument(help="Folders, globs, list files (.txt) or s3:// prefixes.")],
    out: Annotated[str, typer.Option(help="Shard folder; re-running into it adds only new files.")],
    sample_rate: Annotated[int, typer.Option(help="Target sample rate in Hz.")] = 16_000,
    min_seconds: Annotated[float, typer.Option(help="Pieces shorter than this are dropped.")] = 2.0,
    max_seconds: Annotated[float, typer.Option(help="Longer recordings are cut at quiet frames.")] = 20.0,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")] = None,
    metadata: Annotated[
        Path | None, typer.Option(help="CSV/JSONL with a `path` column and any of text, speaker, label.")
    ] = None,
    shard_mb: Annotated[float, typer.Option(help="Largest shard size in MiB.")] = 256.0,
    num_buckets: Annotated[int, typer.Option(help="Length buckets (log-spaced from min to max seconds).")] = 8,
    chunk_mb: Annotated[float, typer.Option(help="Source MiB per decode task (unit of work and retry).")] = 512.0,
    files_per_chunk: Annotated[int, typer.Option(help="Most files per decode task.")] = 10_000,
    storage_options: Annotated[
        str | None, typer.Option(help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://…"}\'.')
    ] = None,
    credentials_block: CredentialsBlock = None,
    vad: Annotated[str, typer.Option(help="Speech detector: energy (fast) or silero (accurate, ~40x slower).")] = (
        "energy"
    ),
    measure: Annotated[bool, typer.Option(help="Measure quality (and so allow the filters).")] = True,
    max_clipped_share: Annotated[str, typer.Option(help="Reject pieces clipped more than this; 'off'.")] = "0.01",
    min_snr_db: Annotated[str, typer.Option(help="Reject pieces with a lower SNR estimate; 'off'.")] = "3",
    min_speech_share: Annotated[str, typer.Option(help="Reject pieces with less speech; 'off'.")] = "0.1",
    max_dc_offset: Annotated[str, typer.Option(help="Reject pieces with a larger |DC offset|; 'off'.")] = "0.1",
    dask_address: Annotated[
        str | None, typer.Option(help="Decode on an existing Dask cluster (tcp://host:8786) instead of here.")
    ] = None,
) -> None:
    """Decode, resample, segment and length-bucket raw audio into shards (the prepare-corpus flow)."""
    options = parse_storage_options(storage_options)  # bad input fails before the heavy imports
    thresholds = parse_thresholds(max_clipped_share, min_snr_db, min_speech_share, max_dc_offset)
    with prefect_api() as api:  # a temporary server starts beside the imports below
        from flows.prepare_corpus import prepare_corpus
        from w2v.quality_filters import QualityThresholds
        from w2v.shards.location import Location

        if not measure:
            thresholds = QualityThresholds(None, None, None, None)
        api.ready()  # before any progress output: an API that is not there is one line, not a traceback
        summary = _run_with_progress(
            _watched(Location.of(out, options), credentials_block),
            lambda: prepare_corpus(
                sources=sources,
                out=str(out),
                sample_rate=sample_rate,
                min_seconds=min_seconds,
                max_seconds=max_seconds,
                num_buckets=num_buckets,
                shard_mb=shard_mb,
                chunk_mb=chunk_mb,
                files_per_chunk=files_per_chunk,
                workers=workers,
                metadata=str(metadata) if metadata else None,
                storage_options=options,
                credentials_block=credentials_block,
                measure_quality=measure,
                vad=vad,
                quality=thresholds,
                dask_address=dask_address,
            ),
        )
    counts, seconds = summary["counts"], summary["seconds"]
    console.print(
        f"[green]{out}[/]: {seconds['in_shards'] / 3600:.2f} h in {counts['utterances']} utterances, "
        f"{counts['shards']} shards; this run decoded {summary['last_run']['files_decoded']} of "
        f"{summary['last_run']['files_listed']} files; rejected: {counts['rejected'] or 'none'}"
    )


def _watched(folder: Location, credentials_block: str | None) -> Location:
    """The folder as the progress bar reads it: with the Secret block's credentials when the folder is in a
    store (loaded here, in this process, never passed to a task); a block that will not load leaves the bar
    without them, and the flow reports the block's problem in one line."""
    if folder.is_local or not credentials_block:
        return folder
    from flows.credentials import storage_options_with_credentials
    from w2v.shards.location import Location

    try:
        return Location.of(folder, storage_options_with_credentials(folder.storage_options, credentials_block))
    except Exception:  # the bar is a convenience: the flow loads the block itself and fails in one line
        return folder


def _run_with_progress(out: Location, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()` the flow with a progress bar of files decoded; a W2VError ends the command in one line."""
    stop = threading.Event()
    watcher = threading.Thread(target=_show_progress, args=(out, stop), daemon=True)
    watcher.start()
    try:
        return run()
    except W2VError as error:
        failure = str(error)
    finally:
        stop.set()
        watcher.join()  # the bar's last line, then the error
    fail(failure)


def _show_progress(out: Location, stop: threading.Event) -> None:
    from w2v.prepare.progress import staged_progress

    with Progress(
        TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("files", total=None)
        planned: int | None = None
        # A bucket is asked less often than a disk: each look lists the staging folder and reads its records.
        while not stop.wait(0.5 if out.is_local else 5.0):
            try:
                done, total = staged_progress(out)
            except Exception:  # a bar never fails the run
                continue
            planned = total if total is not None else planned
            bar.update(task, completed=done, total=planned)
        # The run's commit removes the staging folder: what was planned is what was done.
        if planned is not None:
            bar.update(task, completed=planned, total=planned)
