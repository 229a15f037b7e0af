"""`w2v doctor`: diagnose this machine, a shard folder or a training run, with a remedy for each finding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from w2v.cli.root import app, fail
from w2v.errors import W2VError


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

    if target is not None and (corpus is not None or data_dir is not None):
        fail("--corpus and --data-dir are for the machine check: run `w2v doctor --corpus …` without a target")
    if corpus is not None and not corpus.is_dir():
        fail(f"--corpus {corpus}: not a folder")
    if config is not None and (target is None or not (target / "manifest.json").is_file()):
        fail("--config judges a shard folder's batches: give a shard folder as the target")
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
            fail(f"{target}: neither a shard folder (manifest.json) nor a run folder (metrics.jsonl)")
    except W2VError as error:
        fail(str(error))
    if as_json:
        print(findings_json(subject, findings))
    else:
        print_table(Console(), subject, findings)
    raise typer.Exit(exit_status(findings))
