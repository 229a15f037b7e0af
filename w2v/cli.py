"""The `w2v` command line: a thin shell over the library and the Prefect flows."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from w2v.errors import W2VError
from w2v.prepare.filters import QualityThresholds

app = typer.Typer(help="w2v: raw speech corpus to pretrained wav2vec 2.0.", no_args_is_help=True)
shards_app = typer.Typer(help="Check and describe shard folders.", no_args_is_help=True)
app.add_typer(shards_app, name="shards")
console = Console(stderr=True)


@app.callback()
def _logging(
    log_level: Annotated[str, typer.Option(help="Messages of w2v's library code: debug, info, warning.")] = "info",
) -> None:
    """w2v: raw speech corpus to pretrained wav2vec 2.0."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _fail(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    library = logging.getLogger("w2v")
    library.handlers = [handler]
    library.setLevel(level)
    library.propagate = False


def _offline_prefect_defaults() -> None:
    # Runs happen on machines with no route out: don't let Prefect try to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@app.command()
def prepare(
    sources: Annotated[list[str], typer.Argument(help="Folders, globs, list files (.txt) or s3:// prefixes.")],
    out: Annotated[Path, typer.Option(help="Shard folder; re-running into it adds only new files.")],
    sample_rate: Annotated[int, typer.Option(help="Target sample rate in Hz.")] = 16_000,
    min_seconds: Annotated[float, typer.Option(help="Pieces shorter than this are dropped.")] = 2.0,
    max_seconds: Annotated[float, typer.Option(help="Longer recordings are cut at quiet frames.")] = 20.0,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")] = None,
    metadata: Annotated[
        Path | None, typer.Option(help="CSV/JSONL with a `path` column and any of text, speaker, label.")
    ] = None,
    shard_mb: Annotated[float, typer.Option(help="Largest shard size in MiB.")] = 256.0,
    num_buckets: Annotated[int, typer.Option(help="Length buckets of equal total duration.")] = 8,
    files_per_chunk: Annotated[int, typer.Option(help="Files per decode task (unit of retry).")] = 16,
    storage_options: Annotated[
        str | None, typer.Option(help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://…"}\'.')
    ] = None,
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
    _offline_prefect_defaults()
    from flows.prepare_corpus import prepare_corpus

    options: dict[str, Any] | None = json.loads(storage_options) if storage_options else None
    thresholds = _thresholds(max_clipped_share, min_snr_db, min_speech_share, max_dc_offset)
    if not measure:
        thresholds = QualityThresholds(None, None, None, None)
    stop = threading.Event()
    watcher = threading.Thread(target=_show_progress, args=(out, stop), daemon=True)
    watcher.start()
    try:
        summary = prepare_corpus(
            sources=sources,
            out=str(out),
            sample_rate=sample_rate,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            num_buckets=num_buckets,
            shard_mb=shard_mb,
            files_per_chunk=files_per_chunk,
            workers=workers,
            metadata=str(metadata) if metadata else None,
            storage_options=options,
            measure_quality=measure,
            vad=vad,
            quality=thresholds,
            dask_address=dask_address,
        )
    except W2VError as error:
        _fail(str(error))
    finally:
        stop.set()
        watcher.join()
    counts, seconds = summary["counts"], summary["seconds"]
    console.print(
        f"[green]{out}[/]: {seconds['in_shards'] / 3600:.2f} h in {counts['utterances']} utterances, "
        f"{counts['shards']} shards; this run decoded {summary['last_run']['files_decoded']} of "
        f"{summary['last_run']['files_listed']} files; rejected: {counts['rejected'] or 'none'}"
    )


def _threshold(name: str, value: str | None) -> float | None:
    if value is None or value.strip().lower() in {"off", "none", ""}:
        return None
    try:
        return float(value)
    except ValueError:
        _fail(f"--{name.replace('_', '-')}: expected a number or 'off', got {value!r}")


def _thresholds(
    max_clipped_share: str | None, min_snr_db: str | None, min_speech_share: str | None, max_dc_offset: str | None
) -> QualityThresholds:
    return QualityThresholds(
        max_clipped_share=_threshold("max_clipped_share", max_clipped_share),
        min_snr_db=_threshold("min_snr_db", min_snr_db),
        min_speech_share=_threshold("min_speech_share", min_speech_share),
        max_dc_offset=_threshold("max_dc_offset", max_dc_offset),
    )


def _show_progress(out: Path, stop: threading.Event) -> None:
    from w2v.prepare.progress import staged_progress

    with Progress(
        TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("files", total=None)
        planned: int | None = None
        while not stop.wait(0.5):
            done, total = staged_progress(out)
            planned = total if total is not None else planned
            bar.update(task, completed=done, total=planned)
        # The run's commit removes the staging folder: what was planned is what was done.
        if planned is not None:
            bar.update(task, completed=planned, total=planned)


@shards_app.command("verify")
def shards_verify(folder: Annotated[Path, typer.Argument(help="A folder made by `w2v prepare`.")]) -> None:
    """Check every shard against the manifest (size, sha256, schema, rows); exit 1 on any mismatch."""
    from w2v.shards.verify import verify

    problems = verify(folder)
    for problem in problems:
        console.print(f"[red]✗[/] {problem}", highlight=False)
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
    from w2v.shards.filter import filter_folder

    thresholds = _thresholds(max_clipped_share, min_snr_db, min_speech_share, max_dc_offset)
    if thresholds == QualityThresholds(None, None, None, None):
        _fail("give at least one filter, e.g. --min-snr-db 10")
    try:
        manifest = filter_folder(src, out, thresholds, utc_now())
    except W2VError as error:
        _fail(str(error))
    removed = manifest.last_run["removed"]
    console.print(f"[green]{out}[/]: {manifest.counts()['utterances']} utterances kept, {removed} removed")


@shards_app.command("inspect")
def shards_inspect(
    folder: Annotated[Path, typer.Argument(help="A folder made by `w2v prepare`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write the quality histograms as a PNG here.")] = None,
) -> None:
    """Hours, utterances, duration histogram, bucket table and rejects by reason."""
    from dataclasses import asdict

    from w2v.shards.inspect import describe
    from w2v.shards.manifest import read_manifest

    try:
        stats = describe(folder, read_manifest(folder))
    except W2VError as error:
        _fail(str(error))
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


@app.command()
def pretrain(
    shards: Annotated[
        list[str], typer.Option(help="Shard folder or URL, optionally with a mixing weight: a/:0.7 (repeatable).")
    ],
    output: Annotated[Path, typer.Option(help="Run folder: checkpoints/, metrics.jsonl, config.")],
    config: Annotated[Path | None, typer.Option(help="Training config YAML (sections: batch, optim, ...).")] = None,
    preset: Annotated[str | None, typer.Option(help="Model preset: tiny, base, large.")] = None,
    init_from: Annotated[str | None, typer.Option(help="A transformers model folder to continue from.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Updates to train for in total.")] = None,
    max_hours: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many hours.")] = None,
    resume: Annotated[str, typer.Option(help="auto (newest checkpoint), never, or a checkpoint folder.")] = "auto",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: optim.lr=3e-4 (repeatable).")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Where remote shards are staged.")] = None,
    workers: Annotated[int, typer.Option(help="Loader worker processes per rank.")] = 2,
) -> None:
    """Pretrain Wav2Vec2ForPreTraining on prepared shards (one process, or each rank under accelerate launch)."""
    from w2v.data.loader import LoaderConfig
    from w2v.train.config import TrainConfig, apply_overrides
    from w2v.train.loop import pretrain as run_pretraining

    overrides = list(set_ or [])
    for key, value in (("model.preset", preset), ("model.init_from", init_from), ("max_steps", max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if max_hours is not None:
        overrides.append(f"max_hours={max_hours}")
    try:
        if config is not None:
            train_config = TrainConfig.from_yaml(config, overrides)
        else:
            train_config = TrainConfig.from_dict(apply_overrides({}, overrides))
        with _training_progress(train_config.max_steps, train_config.batch.sample_rate) as on_step:
            result = run_pretraining(
                train_config,
                shards,
                output,
                resume=resume,
                cache_dir=cache_dir,
                loader=LoaderConfig(num_workers=workers),
                on_step=on_step,
            )
    except W2VError as error:
        _fail(str(error))
    console.print(
        f"[green]{output}[/]: {result.steps} steps ({result.stopped_by}), {result.skipped_steps} skipped; "
        f"last checkpoint {result.last_checkpoint}"
    )


@app.command()
def pipeline(
    shards: Annotated[list[str], typer.Option(help="Shard folder or URL, optionally :WEIGHT (repeatable).")],
    output: Annotated[Path, typer.Option(help="Runs folder (with --run-name) or the run folder itself.")],
    config: Annotated[str | None, typer.Option(help="Training config: a YAML file, or tiny / base.")] = None,
    run_name: Annotated[str | None, typer.Option(help="The run's folder under --output.")] = None,
    max_hours: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many hours.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value (repeatable).")] = None,
    upload_to: Annotated[str | None, typer.Option(help="Where the best checkpoint goes (default RUN/uploaded).")] = (
        None
    ),
    num_processes: Annotated[int, typer.Option(help="Training processes (DDP ranks).")] = 1,
    accelerate_config: Annotated[
        str | None, typer.Option(help="An Accelerate config file (configs/accelerate/).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Loader worker processes per rank.")] = 2,
) -> None:
    """The pretrain flow, as the nightly deployment runs it: stage → train → evaluate → upload → report."""
    _offline_prefect_defaults()
    from flows.pretrain import pretrain_flow

    try:
        result = pretrain_flow(
            shards=shards,
            output=str(output),
            config=config,
            overrides=list(set_ or []),
            run_name=run_name,
            max_hours=max_hours,
            num_processes=num_processes,
            accelerate_config=accelerate_config,
            upload_to=upload_to,
            loader_workers=workers,
        )
    except W2VError as error:
        _fail(str(error))
    console.print(f"[green]{result['run']}[/]: best checkpoint {result['checkpoint']}")
    for name in ("evaluation", "upload"):
        console.print(f"{name}: {json.dumps(result[name])}", soft_wrap=True)
    console.print(
        f"report: {result['report']}; TensorBoard: tensorboard --logdir {result['tensorboard']}", soft_wrap=True
    )


@app.command()
def finetune(
    task: Annotated[str, typer.Option(help="ctc (speech recognition), classify (label column) or speaker.")],
    pretrained: Annotated[Path, typer.Option(help="A pretrained model folder (RUN/best/model, …/model).")],
    train: Annotated[list[str], typer.Option(help="Labelled shard folders to train on (repeatable).")],
    valid: Annotated[list[str], typer.Option(help="Labelled shard folders to evaluate on (repeatable).")],
    output: Annotated[Path, typer.Option(help="Run folder: checkpoints/, best/, metrics.jsonl.")],
    config: Annotated[Path | None, typer.Option(help="Fine-tuning config YAML (over the task's defaults).")] = None,
    freeze_layers: Annotated[
        float | None, typer.Option(help="Frozen transformer layers: a share (0.33) or a count (4).")
    ] = None,
    head_only: Annotated[bool | None, typer.Option(help="Train only the task head.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Updates (default: the task's epochs).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: lr=3e-5 (repeatable).")] = (
        None
    ),
    resume: Annotated[str, typer.Option(help="auto (newest checkpoint), never, or a checkpoint folder.")] = "auto",
    workers: Annotated[int, typer.Option(help="Loader worker processes.")] = 2,
) -> None:
    """Fine-tune a pretrained checkpoint for ASR (CTC), classification or speaker identification."""
    from w2v.data.loader import LoaderConfig
    from w2v.finetune.config import FinetuneConfig
    from w2v.finetune.loop import finetune as run_finetuning

    overrides = list(set_ or [])
    for key, value in (("freeze.layers", freeze_layers), ("freeze.head_only", head_only), ("max_steps", max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        settings = FinetuneConfig.from_yaml(task, config, overrides)
        result = run_finetuning(
            settings, pretrained, train, valid, output, resume=resume, loader=LoaderConfig(num_workers=workers)
        )
    except W2VError as error:
        _fail(str(error))
    console.print(f"[green]{output}[/]: {result.steps} steps; best model {result.best}", soft_wrap=True)
    print(json.dumps(result.evaluation, indent=1))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder (RUN/best, RUN/checkpoints/step-…).")],
    shards: Annotated[list[str], typer.Option(help="The shard folders (or URLs) the run trained on.")],
    cache_dir: Annotated[Path | None, typer.Option(help="Where remote shards are staged.")] = None,
    val_share: Annotated[
        float | None, typer.Option(help="Held-out share of recordings (default: the run's own).")
    ] = None,
    probe: Annotated[
        bool, typer.Option(help="Linear probes for the shards' speaker and label columns, vs a random init.")
    ] = True,
    probe_layer: Annotated[
        int, typer.Option(help="Hidden state the probes read: 0 the transformer's input, k block k, -1 the last.")
    ] = -1,
) -> None:
    """Validation loss, contrastive accuracy and perplexity on the held-out recordings, as JSON; where the
    shards carry speaker or label, linear probe accuracy on frozen features ("probe")."""
    from w2v.train.evaluate import evaluate_checkpoint
    from w2v.train.probe import ProbeConfig

    model_dir = checkpoint / "model" if (checkpoint / "model").is_dir() else checkpoint
    try:
        probe_config = ProbeConfig(layer=probe_layer) if probe else None
        result = evaluate_checkpoint(model_dir, shards, cache_dir=cache_dir, val_share=val_share, probe=probe_config)
    except W2VError as error:
        _fail(str(error))
    print(json.dumps(result.as_record(prefix=""), indent=1))


@app.command()
def upload(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (or any) folder, e.g. RUN/checkpoints/step-…")],
    url: Annotated[str, typer.Argument(help="Destination: s3://bucket/prefix/name, or a local folder.")],
    endpoint_url: Annotated[str | None, typer.Option(help="An S3-compatible server (MinIO, moto, …).")] = None,
    storage_options: Annotated[str | None, typer.Option(help="fsspec options as JSON.")] = None,
    attempts: Annotated[int, typer.Option(help="Tries per operation, with exponential backoff.")] = 8,
) -> None:
    """Upload a folder, read every file back to check its sha256, then write _UPLOAD_COMPLETE.json."""
    from w2v.upload import RetryPolicy, upload_folder

    options: dict[str, Any] = json.loads(storage_options) if storage_options else {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    try:
        result = upload_folder(checkpoint, url, options or None, RetryPolicy(attempts=attempts))
    except W2VError as error:
        _fail(str(error))
    done = "already complete there" if result.already_complete else f"{result.bytes_put / 1e6:.1f} MB sent"
    console.print(f"[green]{url}[/]: {result.files} files verified ({done})")


@app.command()
def doctor(
    target: Annotated[
        Path | None, typer.Argument(help="A shard folder or a run folder; nothing: this machine.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Training config whose batch settings a shard folder is judged by.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Findings as JSON on stdout.")] = False,
    corpus: Annotated[
        Path | None, typer.Option(help="Raw corpus folder: free disk is judged against 3× its size.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where shards and runs will go (default: here).")] = None,
) -> None:
    """Check this machine, a shard folder or a training run; say what is wrong and what to do (exit 1 if so)."""
    from w2v.doctor.environment import diagnose_environment
    from w2v.doctor.report import as_json as findings_json
    from w2v.doctor.report import exit_status, print_table
    from w2v.doctor.run import diagnose_run
    from w2v.doctor.shards import diagnose_shards
    from w2v.train.config import TrainConfig

    try:
        if target is None:
            size = sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file()) if corpus else None
            subject, findings = "this machine", diagnose_environment(data_dir, size)
        elif (target / "manifest.json").is_file():
            batch = TrainConfig.from_yaml(config).batch if config else None
            subject, findings = f"shards {target}", diagnose_shards(target, batch)
        elif (target / "metrics.jsonl").is_file() or (target / "checkpoints").is_dir():
            subject, findings = f"run {target}", diagnose_run(target)
        else:
            _fail(f"{target}: neither a shard folder (manifest.json) nor a run folder (metrics.jsonl)")
    except W2VError as error:
        _fail(str(error))
    if as_json:
        print(findings_json(subject, findings))
    else:
        print_table(Console(), subject, findings)
    raise typer.Exit(exit_status(findings))


@app.command()
def serve(
    deployments: Annotated[Path | None, typer.Option(help="A prefect.yaml (default: the project's).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="W2V_DATA: raw/, shards/, runs/ and bucket/ live here (default ./w2v-data).")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="W2V_TIMEZONE of the nightly schedule (default UTC).")] = None,
    limit: Annotated[int | None, typer.Option(help="Flow runs at a time from this process.")] = None,
) -> None:
    """Serve prepare-corpus/default and pretrain/nightly (all of prefect.yaml) from this one process."""
    _offline_prefect_defaults()
    from flows.deployments import PREFECT_YAML, read_specs, serve_deployments

    _set_deployment_variables(data, timezone)
    try:
        serve_deployments(read_specs(deployments or PREFECT_YAML), limit=limit)
    except W2VError as error:
        _fail(str(error))


@app.command()
def server(
    home: Annotated[Path, typer.Option(help="PREFECT_HOME: the server's SQLite database and logs.")] = Path(
        "w2v-data/prefect"
    ),
    port: Annotated[int, typer.Option(help="Port of the API and UI on 127.0.0.1.")] = 4200,
    data: Annotated[Path | None, typer.Option(help="W2V_DATA for the deployments (default ./w2v-data).")] = None,
    timezone: Annotated[str | None, typer.Option(help="W2V_TIMEZONE of the nightly schedule.")] = None,
) -> None:
    """A local Prefect server (SQLite) with every deployment served beside it; Ctrl-C stops both."""
    _offline_prefect_defaults()
    from flows.deployments import PREFECT_YAML, read_specs, serve_deployments
    from flows.local_server import local_prefect_server

    _set_deployment_variables(data, timezone)
    try:
        with local_prefect_server(home.resolve(), port=port) as running:
            os.environ.update(running.environment)
            console.print(f"Prefect UI: [bold]{running.ui_url}[/]  (API {running.api_url}, log {running.log})")
            console.print(f"in another shell: export PREFECT_API_URL={running.api_url}")
            serve_deployments(read_specs(PREFECT_YAML))
    except W2VError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        console.print("stopped")


def _set_deployment_variables(data: Path | None, timezone: str | None) -> None:
    if data is not None:
        os.environ["W2V_DATA"] = str(data.resolve())
    if timezone is not None:
        os.environ["W2V_TIMEZONE"] = timezone


@contextmanager
def _training_progress(max_steps: int, sample_rate: int) -> Iterator[Callable[[int, Any], None]]:
    """A progress bar of updates with the latest loss, on a terminal (and silent in logs, e.g. under Prefect)."""
    columns = [TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("pretrain", total=max_steps, status="")

        def on_step(step: int, result: Any) -> None:
            rate = result.audio_samples / sample_rate / max(result.seconds, 1e-9)
            status = f"loss {result.loss:.3f}  {rate:.0f} audio-s/s"
            progress.update(task, completed=step, status=status)

        yield on_step


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    raise typer.Exit(2)


def main() -> None:
    sys.exit(app())
