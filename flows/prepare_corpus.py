"""prepare-corpus: raw audio → verified, memory-mapped, length-bucketed shards with a manifest.

list the sources (in parts, on the workers) → plan (skip what the shards already hold, fix the bucket edges)
→ decode chunks in worker processes, each writing its final shards → commit (deduplicate, index, rejects and
manifest; no audio copied) → publish a corpus report on the flow run. With a Dask cluster every step but the
flow itself runs on its workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.credentials import StorageAccess, StorageOptions
from flows.retries import retry_unless_permanent
from w2v.errors import W2VError
from w2v.listing import (
    ListingPart,
    list_part,
    list_sources,
    listed_sources,
    listing_table,
    merge_listings,
    split_sources,
)
from w2v.prepare.config import PrepareConfig
from w2v.prepare.isolated import CHUNKS_PER_CHILD, child_processes, process_chunk_isolated
from w2v.prepare.metadata import load_metadata
from w2v.prepare.pipeline import CommitPlan, RunPlan, commit_run, plan_listed, utc_now
from w2v.prepare.process import Chunk
from w2v.prepare.report import corpus_report_markdown, run_summary
from w2v.prepare.shard_writer import STAGING_NAME, ShardLayout, chunk_is_complete
from w2v.quality_filters import QualityThresholds
from w2v.shards.location import Location
from w2v.shards.lock import exclusive_writer
from w2v.shards.manifest import Manifest

RETRIED: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": retry_unless_permanent}
# Chunk records make every task idempotent; decode-chunk also shows up as Cached in Prefect when its chunk is done.


@task(
    name="list-sources",
    cache_policy=NO_CACHE,
    **RETRIED,
)
def list_here(sources: list[str], storage: StorageAccess) -> pa.Table:
    """Every source, listed in parts on threads of this process (w2v.listing)."""
    return listing_table(list_sources(sources, storage.options()))


@task(
    name="split-sources",
    cache_policy=NO_CACHE,
    **RETRIED,
)
def split(sources: list[str], storage: StorageAccess) -> list[ListingPart]:
    return split_sources(sources, storage.options())


@task(
    name="list-part",
    task_run_name="list-{part.kind}-{part.where}",
    cache_policy=NO_CACHE,
    **RETRIED,
)
def list_one_part(part: ListingPart, storage: StorageAccess) -> pa.Table:
    return listing_table(list_part(part, storage.options()))


@task(name="plan", cache_policy=NO_CACHE, **RETRIED)
def plan(
    listed: pa.Table,
    out: Location,
    config: PrepareConfig,
    metadata: Path | None,
    storage: StorageAccess,
) -> RunPlan:
    rows = load_metadata(metadata) if metadata else {}
    run_plan = plan_listed(listed_sources(listed), out, config, rows, storage.options())
    get_run_logger().info(
        "%d files listed, %d unchanged, %d to decode in %d chunks",
        run_plan.listed,
        run_plan.unchanged,
        run_plan.files_to_decode,
        len(run_plan.chunks),
    )
    return run_plan


def staged_chunk_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cached by its inputs' fingerprints: the chunk key hashes every file's URI, size, modification time and
    metadata row, the decode config and the shard layout; the staging folder (path and inode) ties it to this
    output folder. decode_all re-runs a chunk whose cached output has since gone."""
    chunk: Chunk = parameters["chunk"]
    out: Location = parameters["out"]
    if out.is_local:
        staging = (out.local / STAGING_NAME).resolve()
        inode = staging.stat().st_ino if staging.exists() else 0
        place = f"{staging}:{inode}"
    else:
        place = out.root  # a bucket has no inode: a folder emptied and reused is caught by decode_all's check
    where = hashlib.sha256(place.encode()).hexdigest()[:16]
    return f"decode-{chunk.key}-{where}"


@task(
    name="decode-chunk",
    task_run_name="decode-chunk-{chunk.key}",
    cache_key_fn=staged_chunk_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=10,
)
def decode_chunk(
    chunk: Chunk,
    config: PrepareConfig,
    layout: ShardLayout,
    out: Location,
    storage: StorageAccess,
) -> str:
    return process_chunk_isolated(chunk, config, layout, out, storage.options())


@task(name="commit", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def commit(run_plan: CommitPlan, config: PrepareConfig, started: str, storage: StorageAccess) -> Manifest:
    return commit_run(run_plan, config, started, storage.options())


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(manifest: Manifest, out: Location, storage: StorageAccess) -> None:
    create_markdown_artifact(
        key="corpus-report",
        markdown=corpus_report_markdown(manifest, Location.of(out, storage.options())),
        description=f"prepare-corpus into {out.root}",
    )


@flow(name="prepare-corpus", log_prints=True)
def prepare_corpus(
    sources: list[str],
    out: str,
    sample_rate: int = 16_000,
    min_seconds: float = 2.0,
    max_seconds: float = 20.0,
    num_buckets: int = 8,
    shard_mb: float = 256.0,
    chunk_mb: float = 512.0,
    files_per_chunk: int = 10_000,
    workers: int | None = None,
    metadata: str | None = None,
    storage_options: StorageOptions = None,
    credentials_block: str | None = None,
    measure_quality: bool = True,
    vad: str = "energy",
    quality: QualityThresholds | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Prepare shards from SOURCES (folders, globs, list files, s3:// prefixes) into OUT.

    Chunks are decoded by `workers` threads here (each with a child process), or, with `dask_address`
    (tcp://host:8786), by the workers of that Dask cluster: local paths must be the same on every worker,
    URLs (s3://…) work from anywhere. OUT may be a folder or a URL.
    `storage_options` are fsspec options without credentials; those come from the environment or from the
    Prefect Secret block named `credentials_block`, loaded inside each task that reads storage.
    """
    storage = StorageAccess(storage_options, credentials_block).check()  # no credentials in storage_options
    started = utc_now()
    config = PrepareConfig(
        sample_rate=sample_rate,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        num_buckets=num_buckets,
        shard_mb=shard_mb,
        chunk_mb=chunk_mb,
        files_per_chunk=files_per_chunk,
        measure_quality=measure_quality,
        vad=vad,
        quality=quality if quality is not None else QualityThresholds(),
    )
    folder = Location.of(out, storage.storage_options)  # no credentials: it is a task parameter
    with exclusive_writer(Location.of(folder, storage.options())), task_runner(workers, dask_address) as runner:
        listed = list_all(sources, runner, storage, spread=dask_address is not None)
        where = {"out": folder, "config": config, "storage": storage}
        given = {"listed": listed, "metadata": Path(metadata) if metadata else None, **where}
        run_plan = runner.submit(plan, given).result()
        decode_all(run_plan, config, runner, storage)
        given = {"run_plan": run_plan.for_commit(), "config": config, "started": started, "storage": storage}
        manifest = runner.submit(commit, given).result()
    publish_report(manifest, folder, storage)
    return run_summary(manifest)


@contextlib.contextmanager
def task_runner(workers: int | None, dask_address: str | None) -> Iterator[TaskRunner[Any]]:
    """A Dask cluster's workers, or `workers` child processes here served by twice as many threads (one
    chunk decoding and one being written per child; w2v.prepare.isolated)."""
    runner: TaskRunner[Any]
    processes: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:
            raise W2VError("--dask-address needs the dask extra: pip install 'w2v[dask]'") from error
        runner = DaskTaskRunner(address=dask_address)
    else:
        children = workers or os.cpu_count() or 1
        runner = ThreadPoolTaskRunner(max_workers=CHUNKS_PER_CHILD * children)
        processes = child_processes(children)
    with processes, runner:
        yield runner


def list_all(sources: list[str], runner: TaskRunner[Any], storage: StorageAccess, spread: bool) -> pa.Table:
    """The sources (w2v.listing's table), listed by one task here, or (`spread`) split into parts listed by
    the runner's workers."""
    if not spread:
        return list_here(sources, storage)
    parts = split(sources, storage)
    futures = [runner.submit(list_one_part, {"part": part, "storage": storage}) for part in parts]
    return listing_table(merge_listings(sources, parts, [listed_sources(future.result()) for future in futures]))


def decode_all(run_plan: RunPlan, config: PrepareConfig, runner: TaskRunner[Any], storage: StorageAccess) -> None:
    """Submit one decode-chunk task per chunk to the runner, biggest first; then decode again any chunk whose
    cached output has since gone."""
    parameters = {"config": config, "layout": run_plan.layout, "out": run_plan.out, "storage": storage}
    futures: list[PrefectFuture[str]] = [
        runner.submit(decode_chunk, {"chunk": chunk, **parameters}) for chunk in run_plan.chunks_largest_first
    ]
    for future in futures:
        future.result()
    # A cache hit whose output is gone (the folder was cleaned): decode those chunks again.
    folder = Location.of(run_plan.out, storage.options())
    stale = [c for c in run_plan.chunks_largest_first if not chunk_is_complete(folder, c.key)]
    if stale:
        get_run_logger().warning("%d cached chunks lost their output: decoding them again", len(stale))
        again = decode_chunk.with_options(refresh_cache=True)
        for future in [runner.submit(again, {"chunk": c, **parameters}) for c in stale]:
            future.result()
