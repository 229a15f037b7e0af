"""prepare-corpus without an orchestrator: plan what is new, decode it in worker processes, commit.

`flows/prepare_corpus.py` composes the same three steps as Prefect tasks; this module is what a library
user (or a benchmark) calls directly.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import soundfile
import soxr

import w2v
from w2v.errors import ManifestError
from w2v.listing import list_sources
from w2v.prepare.buckets import log_spaced_edges
from w2v.prepare.config import PrepareConfig
from w2v.prepare.isolated import CHUNKS_PER_CHILD, child_processes, process_chunk_isolated
from w2v.prepare.metadata import Metadata, load_metadata
from w2v.prepare.pack import commit
from w2v.prepare.process import Chunk, SourceTask, plan_chunks
from w2v.prepare.progress import STAGING_NAME, write_plan_record
from w2v.prepare.shard_writer import ShardLayout
from w2v.shards.location import Location
from w2v.shards.lock import exclusive_writer
from w2v.shards.manifest import Manifest, read_manifest_or_none
from w2v.shards.sources import Fingerprint, fingerprints
from w2v.storage import Source


@dataclass(frozen=True)
class RunPlan:
    """What a run will do: every listed file, and the chunks of those that are new or changed. `out` carries
    no credentials (a plan is a task's result): storage options are passed again to the steps that need them."""

    out: Location
    previous: Manifest
    layout: ShardLayout
    listed: int
    unchanged: int
    chunks: tuple[Chunk, ...]

    @property
    def staging(self) -> Location:
        return self.out.child(STAGING_NAME)

    @property
    def chunks_largest_first(self) -> list[Chunk]:
        """The order to decode in: the biggest chunks first, so no worker is left with a long one at the end.
        (Keys and outputs do not depend on the order.)"""
        return sorted(self.chunks, key=lambda c: -c.source_bytes)

    @property
    def files_to_decode(self) -> int:
        return sum(len(c.tasks) for c in self.chunks)

    def for_commit(self) -> CommitPlan:
        """What the commit needs of this plan: the chunks' keys, not their files."""
        return CommitPlan(
            out=self.out,
            previous=self.previous,
            layout=self.layout,
            chunk_keys=tuple(c.key for c in self.chunks),
            listed=self.listed,
            unchanged=self.unchanged,
            files_to_decode=self.files_to_decode,
        )


@dataclass(frozen=True)
class CommitPlan:
    """A RunPlan without its files' lists (small enough to hand to any worker): what the commit reads."""

    out: Location
    previous: Manifest
    layout: ShardLayout
    chunk_keys: tuple[str, ...]
    listed: int
    unchanged: int
    files_to_decode: int


def plan_run(
    sources: list[str],
    out: Path | str | Location,
    config: PrepareConfig,
    metadata_path: Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RunPlan:
    """List the sources (w2v.listing: in parts, on threads) and plan what to decode: `plan_listed`."""
    metadata = load_metadata(metadata_path) if metadata_path else {}
    return plan_listed(list_sources(sources, storage_options), out, config, metadata, storage_options)


def plan_listed(
    listed: list[Source],
    out: Path | str | Location,
    config: PrepareConfig,
    metadata: Mapping[str, Metadata] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RunPlan:
    """Keep the listed files the shard folder (local or at a URL) does not already hold in this exact
    version (with the same `metadata` row, by URI), and cut them into chunks. `storage_options` serve the
    folder. Raises ManifestError when the folder was prepared with other decode settings."""
    folder = Location.of(out, storage_options)
    previous = read_manifest_or_none(folder)
    if previous is None:
        previous = Manifest(sample_rate=config.sample_rate)
    else:
        check_compatible(previous, config, folder.root)
    metadata = metadata or {}
    tasks = [SourceTask(s, metadata.get(s.uri)) for s in listed]
    known = fingerprints(folder, previous)
    todo = [t for t in tasks if known.get(t.source.uri) != _fingerprint(t)]
    layout = shard_layout(previous, config)
    run_plan = RunPlan(
        out=Location.of(out),
        previous=previous,
        layout=layout,
        listed=len(tasks),
        unchanged=len(tasks) - len(todo),
        chunks=tuple(plan_chunks(todo, config, layout)),
    )
    write_plan_record(folder.child(STAGING_NAME), run_plan.files_to_decode, len(run_plan.chunks))
    return run_plan


def shard_layout(previous: Manifest, config: PrepareConfig) -> ShardLayout:
    """The next generation's layout: the folder's bucket edges (a new folder's from the config), so that
    every worker buckets alike before anything is decoded."""
    edges = previous.bucket_edges_seconds or log_spaced_edges(
        config.min_seconds, config.max_seconds, config.num_buckets
    )
    return ShardLayout(
        generation=previous.generation + 1,
        edges_seconds=tuple(edges),
        shard_bytes=max(1, round(config.shard_mb * (1 << 20))),
        sample_rate=config.sample_rate,
    )


def check_compatible(previous: Manifest, config: PrepareConfig, out: Path | str) -> None:
    """Refuse to mix shards made with different decode settings into one folder."""
    before = PrepareConfig.from_dict(previous.config) if previous.config else None
    if before is not None and before.decode_fingerprint() != config.decode_fingerprint():
        now = config.decoding_settings()
        changed = [f"{k}: {v} -> {now[k]}" for k, v in before.decoding_settings().items() if v != now[k]]
        raise ManifestError(
            f"{out}: prepared with other settings ({'; '.join(changed)}); use a new --out or the same settings"
        )


def _fingerprint(task: SourceTask) -> Fingerprint:
    """What says a listed file is the one already decoded: the same size, mtime, ETag and metadata row."""
    fields = task.entry_fields()
    return (fields["size"], fields["mtime"], fields["etag"], fields["metadata_sha256"])


def commit_run(
    run_plan: RunPlan | CommitPlan, config: PrepareConfig, started: str, storage_options: dict[str, Any] | None = None
) -> Manifest:
    """Commit what the plan's chunks wrote (w2v.prepare.pack.commit); returns the new manifest."""
    plan = run_plan.for_commit() if isinstance(run_plan, RunPlan) else run_plan
    now = utc_now()
    last_run = {
        "started": started,
        "finished": now,
        "files_listed": plan.listed,
        "files_unchanged": plan.unchanged,
        "files_decoded": plan.files_to_decode,
    }
    folder = Location.of(plan.out, storage_options)
    return commit(folder, plan.previous, list(plan.chunk_keys), config, plan.layout, library_versions(), last_run, now)


def prepare(
    sources: list[str],
    out: Path | str | Location,
    config: PrepareConfig | None = None,
    workers: int | None = None,
    metadata_path: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    on_chunk_done: Callable[[Chunk], None] | None = None,
) -> Manifest:
    """Run prepare-corpus in this process and `workers` worker processes; returns the committed manifest."""
    config = config or PrepareConfig()
    started = utc_now()
    with exclusive_writer(Location.of(out, storage_options)):
        plan = plan_run(sources, out, config, metadata_path, storage_options)
        decode_chunks(plan, config, workers, storage_options, on_chunk_done)
        return commit_run(plan, config, started, storage_options)


def decode_chunks(
    plan: RunPlan,
    config: PrepareConfig,
    workers: int | None,
    storage_options: dict[str, Any] | None,
    on_chunk_done: Callable[[Chunk], None] | None = None,
) -> None:
    """Decode the plan's chunks with `workers` child processes, each given two chunks at a time (one
    decoding, one being written: w2v.prepare.isolated); the threads here only wait."""
    children = workers or os.cpu_count() or 1
    with child_processes(children), ThreadPoolExecutor(max_workers=CHUNKS_PER_CHILD * children) as pool:
        futures = {
            pool.submit(
                contextvars.copy_context().run,
                process_chunk_isolated,
                c,
                config,
                plan.layout,
                plan.out,
                storage_options,
            ): c
            for c in plan.chunks_largest_first
        }
        for future in as_completed(futures):
            future.result()
            if on_chunk_done:
                on_chunk_done(futures[future])


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """The versions that decide what a file decodes to, recorded in the manifest."""
    versions = {
        "w2v": w2v.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "soundfile": soundfile.__version__,
        "soxr": soxr.__version__,
    }
    for package in ("av", "pyarrow", "numpy"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions
