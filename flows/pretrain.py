"""pretrain: prepared shards → a pretrained wav2vec 2.0 checkpoint, evaluated and uploaded.

check local shard folders against their manifests → train (`accelerate launch` as a subprocess, its log
streamed into the flow run; shards at a URL stream through a bounded cache, each checked as it arrives; a
retry resumes from the newest checkpoint) → evaluate the best model on the held-out recordings → upload it
(a local folder by default) → publish a training report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.credentials import StorageAccess, StorageOptions
from flows.tasks import TRAINING_TAG, accelerate_launch, check_local, train, upload
from w2v.atomic import write_bytes_atomic, write_text_atomic
from w2v.data.streaming import StreamingOptions, parse_cache_limit
from w2v.errors import W2VError
from w2v.run.checkpoint import BEST, complete_checkpoints
from w2v.run.metrics import read_metrics
from w2v.train.config import resolve_config_path
from w2v.train.evaluate import evaluate_checkpoint
from w2v.train.probe import ProbeConfig
from w2v.train.report import training_plot_png, training_report_markdown

REPORT = "report.md"
EVALUATION = "evaluation.json"
CURVES = "learning-curves.png"
SHARD_CACHE = "shard-cache"


@dataclass(frozen=True)
class DataAccess:
    """How the run reaches its shards: storage, the streaming cache, and whether local folders are checked."""

    storage: StorageAccess
    streaming: StreamingOptions
    verify: bool = True


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_best(model_dir: Path, shards: list[str], run_dir: Path, data: DataAccess) -> dict[str, Any]:
    """The checkpoint on the held-out recordings ({} when there are none), also written to RUN/evaluation.json
    as `w2v evaluate` prints it, with the checkpoint it scored."""
    try:
        # With linear probes on the speaker and label columns, where the shards carry them. Local shards are on
        # record as checked by now: checking them again costs a stat per shard. Shards at a URL stream through
        # the run's cache, as training's validation read them.
        evaluation = evaluate_checkpoint(
            model_dir, shards, probe=ProbeConfig(), verify_shards=data.verify, cache_dir=run_dir / SHARD_CACHE,
            storage_options=data.storage.options(), streaming=data.streaming,
        )  # fmt: skip
    except W2VError as error:  # no held-out recordings in a tiny corpus: the run is still good
        get_run_logger().warning("no evaluation: %s", error)
        return {}
    saved = {"checkpoint": str(model_dir), **evaluation.as_record(prefix="")}
    write_text_atomic(run_dir / EVALUATION, json.dumps(saved, indent=1))
    return evaluation.as_record()


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(run_dir: Path, extra: dict[str, Any]) -> Path:
    """The training report as a flow-run artifact, and as RUN/report.md with its learning curves as
    RUN/learning-curves.png (both outlive an ephemeral API)."""
    records = read_metrics(run_dir)
    plot = training_plot_png(records, f"pretraining: {run_dir.name}")
    write_bytes_atomic(run_dir / CURVES, plot)
    markdown = training_report_markdown(records, str(run_dir), extra, plot)
    create_markdown_artifact(key="pretraining-report", markdown=markdown, description=f"pretrain into {run_dir}")
    path = run_dir / REPORT
    write_text_atomic(path, markdown)
    return path


@flow(name="pretrain", log_prints=True)
def pretrain_flow(
    shards: list[str],
    output: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    max_hours: float | None = None,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    upload_to: str | None = None,
    storage_options: StorageOptions = None,
    credentials_block: str | None = None,
    loader_workers: int = 2,
    concurrency_tag: str = TRAINING_TAG,
    verify_shards: bool = True,
    cache_limit: str = "auto",
) -> dict[str, Any]:
    """Pretrain on SHARDS into OUTPUT (or OUTPUT/RUN_NAME), evaluate, and upload the best (else the last)
    checkpoint. A run folder with checkpoints is resumed from its newest one, over the shards as they are now.

    `max_hours` bounds this run (a nightly slot). With `upload_to` (a bucket URL), every checkpoint is
    mirrored to UPLOAD_TO/checkpoints/ as it is written and a run that finds no newer checkpoint locally
    resumes from the bucket's newest (a preempted night goes on the next, on any machine); the best model
    then goes to UPLOAD_TO/best. Without it, the best goes to RUN/uploaded/ and nothing is mirrored;
    `accelerate_config` is an Accelerate config file (configs/accelerate/); with `num_processes` > 1 and none
    given, one DDP rank per process. Training runs under the task tag `concurrency_tag`: a concurrency limit
    of 1 on it (`w2v serve` sets one) keeps one training at a time on a machine. Every shard is checked
    against its manifest (size, sha256) before its first use, a local one once per file state;
    `verify_shards=False` skips that for local folders (fast, unsafe). Shards at a URL are fetched as the
    batch plan needs them into RUN/shard-cache, whose disk use `cache_limit` bounds (bytes such as 500G, a
    share of the free disk such as 10%, or auto: the corpus if it fits in half the free disk, else that
    half). `storage_options` are fsspec options without credentials; those come from the
    environment or from the Prefect Secret block named `credentials_block`, loaded inside the tasks.
    """
    storage = StorageAccess(storage_options, credentials_block).check()  # no credentials in storage_options
    streaming = StreamingOptions(limit=parse_cache_limit(cache_limit))  # a bad limit fails before any work
    data = DataAccess(storage, streaming, verify_shards)
    run_dir = Path(output) / run_name if run_name else Path(output)
    check_local(shards, verify_shards)
    extra = [*(overrides or []), *([f"max_hours={max_hours}"] if max_hours is not None else [])]
    command = training_command(
        shards, run_dir, config, extra, num_processes, accelerate_config, loader_workers,
        verify_shards=verify_shards, upload_to=upload_to, cache_limit=cache_limit,
    )  # fmt: skip
    with tags(concurrency_tag):
        train(command, storage)
    published = run_dir / BEST if (run_dir / BEST).is_dir() else _last_checkpoint(run_dir)
    evaluation = evaluate_best(published / "model", shards, run_dir, data)
    destination = f"{upload_to.rstrip('/')}/{BEST}" if upload_to else str(run_dir / "uploaded" / published.name)
    uploaded = upload(published, destination, storage)
    report = publish_report(run_dir, {"evaluation of " + published.name: evaluation, "uploaded to": uploaded["url"]})
    return {
        "run": str(run_dir),
        "checkpoint": str(published),
        "evaluation": evaluation,
        "upload": uploaded,
        "report": str(report),
        "tensorboard": str(run_dir / "tensorboard"),
    }


def training_command(
    shards: list[str],
    run_dir: Path,
    config: str | None,
    overrides: list[str],
    num_processes: int,
    accelerate_config: str | None,
    loader_workers: int,
    *,
    verify_shards: bool = True,
    upload_to: str | None = None,
    cache_limit: str = "auto",
) -> list[str]:
    accelerate = accelerate_launch(num_processes, accelerate_config)
    command = [*accelerate, "-m", "w2v", "pretrain", "--output", str(run_dir), "--workers", str(loader_workers),
               "--cache-dir", str(run_dir / SHARD_CACHE), "--cache-limit", cache_limit]  # fmt: skip
    for shard in shards:
        command += ["--shards", shard]
    if config:
        command += ["--config", str(resolve_config_path(config))]
    for item in overrides:
        command += ["--set", item]
    if not verify_shards:
        command.append("--no-verify-shards")
    if upload_to:
        command += ["--upload-to", upload_to]
    return command


def _last_checkpoint(run_dir: Path) -> Path:
    found = complete_checkpoints(run_dir)
    if not found:
        raise W2VError(f"{run_dir}: training left no checkpoint")
    return found[-1]
