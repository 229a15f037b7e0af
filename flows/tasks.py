"""Tasks more than one flow runs: stage (or check) shards, train (or fine-tune) in `accelerate launch` subprocesses,
upload a checkpoint; and the one builder of the `accelerate launch` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.credentials import StorageAccess
from flows.retries import retry_unless_permanent
from w2v.data.integrity import check_local_shards
from w2v.data.mixture import parse_shards_arg
from w2v.data.staging import default_records_dir, stage_shards
from w2v.errors import W2VError
from w2v.storage import STORAGE_OPTIONS_ENV, is_url
from w2v.upload import upload_folder

TRAINING_TAG = "w2v-training"


@task(
    name="stage-shards",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless_permanent,
)
def stage(shards: list[str], cache_dir: Path, storage: StorageAccess, verify: bool = True) -> list[str]:
    """Local folders for every --shards argument (weights kept), so that training ranks never download;
    with `verify`, each checked against its manifest (training and evaluation then find it on record)."""
    staged = []
    options = storage.options()
    for arg in shards:
        parsed = parse_shards_arg(arg)
        result = stage_shards(parsed.location, cache_dir, options, verify=verify)
        if result.shards:
            get_run_logger().info("%s: %d shards staged, %d bytes fetched", arg, result.shards, result.fetched_bytes)
        if result.hashed_bytes:
            get_run_logger().info("%s: %d bytes of shards checked against the manifest", arg, result.hashed_bytes)
        staged.append(f"{result.folder}:{parsed.weight}")
    return staged


@task(name="check-shards", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_unless_permanent)  # fmt: skip
def check_local(shards: list[str], verify: bool = True) -> None:
    """Check every local folder among the --shards arguments against its manifest (training and evaluation
    then find it on record); a URL is left to training, which streams it and checks each shard on arrival."""
    for arg in shards:
        location = parse_shards_arg(arg).location
        if verify and not is_url(location):
            hashed = check_local_shards(Path(location), default_records_dir()).hashed_bytes
            if hashed:
                get_run_logger().info("%s: %d bytes of shards checked against the manifest", arg, hashed)


@task(name="train", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def train(command: list[str], storage: StorageAccess | None = None) -> None:
    """Run training in its own processes; a retry of this task resumes from the newest checkpoint (in the
    bucket too, when checkpoints are mirrored). The processes reach storage with `storage`'s options, given
    in their environment (never on the command line, which every user of the machine can read)."""
    logger = get_run_logger()
    logger.info("%s", " ".join(command))
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    options = storage.options() if storage is not None else None
    if options:
        environment[STORAGE_OPTIONS_ENV] = json.dumps(options)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment) as p:
        assert p.stdout is not None
        for line in p.stdout:
            if line.strip():
                logger.info("%s", line.rstrip())
    if p.returncode != 0:
        raise W2VError(f"training exited with status {p.returncode}; the log above says why")


@task(
    name="upload", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=60, retry_condition_fn=retry_unless_permanent
)
def upload(checkpoint: Path, url: str, storage: StorageAccess) -> dict[str, Any]:
    result = upload_folder(checkpoint, url, storage.options())
    return {"url": result.url, "files": result.files, "bytes_put": result.bytes_put}


def cpu_threads_per_process(num_processes: int) -> int:
    """Torch threads for each rank: OMP_NUM_THREADS when the user set it, else this machine's cores (those this
    process may run on) shared among the ranks. Left to itself, `accelerate launch` without --cpu sets
    OMP_NUM_THREADS=1: a CPU-only run then trained on one core of two, at two thirds of the speed."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, len(os.sched_getaffinity(0)) // max(num_processes, 1))


def _configured_processes(accelerate_config: str) -> int:
    """The ranks an Accelerate config file asks for on this machine (1 when it cannot say)."""
    try:
        values = yaml.safe_load(Path(accelerate_config).read_text()) or {}
        return max(1, int(values.get("num_processes", 1)) // max(1, int(values.get("num_machines", 1))))
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return 1  # accelerate itself says what is wrong with the file


def accelerate_launch(num_processes: int = 1, accelerate_config: str | None = None) -> list[str]:
    """The `accelerate launch` prefix of a training command: the user's accelerate config file when given,
    otherwise `num_processes` ranks on this machine (CPU ranks over gloo where there is no GPU). Precision
    and compilation are left to the run's own config."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        ranks = _configured_processes(accelerate_config)
        return [*command, "--config_file", accelerate_config, "--num_cpu_threads_per_process",
                str(cpu_threads_per_process(ranks))]  # fmt: skip
    threads = ["--num_cpu_threads_per_process", str(cpu_threads_per_process(num_processes))]
    command += ["--num_processes", str(num_processes), "--num_machines", "1", "--dynamo_backend", "no"]
    command += ["--mixed_precision", "no", *threads]
    if num_processes > 1:
        command.append("--multi_gpu")
    return command
