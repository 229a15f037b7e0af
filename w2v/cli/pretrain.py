"""`w2v pretrain` (the training loop in this process, or one rank of it) and `w2v pipeline` (the whole
pretrain flow: check, train, evaluate, upload, report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from w2v.cli.progress import training_progress
from w2v.cli.root import (
    CacheLimitText,
    CredentialsBlock,
    StorageOptionsText,
    VerifyShards,
    app,
    console,
    fail,
    parse_storage_options,
    prefect_api,
    storage_options_from_environment,
)
from w2v.errors import W2VError


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
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where shards from a URL are cached (default RUN/shard-cache).")
    ] = None,
    cache_limit: CacheLimitText = "auto",
    fetch_retry_seconds: Annotated[
        float, typer.Option(help="How long a shard that cannot be fetched is retried before the run stops.")
    ] = 300.0,
    workers: Annotated[int, typer.Option(help="Loader worker processes per rank.")] = 2,
    verify_shards: VerifyShards = True,
    upload_to: Annotated[
        str | None,
        typer.Option(help="Mirror each checkpoint here as it is written (URL/checkpoints/); --resume auto looks too."),
    ] = None,
    storage_options: StorageOptionsText = None,
) -> None:
    """Pretrain Wav2Vec2ForPreTraining on prepared shards (one process, or each rank under accelerate launch).

    Shards at a URL stream through a local cache of --cache-limit, fetched in the order the batch plan reads
    them (batch.shuffle_window_shards keeps a small cache from fetching a shard more than once per epoch).
    With --upload-to, a preempted machine loses only the updates since the last checkpoint: the same command
    on a new machine resumes from the bucket. Credentials: the environment (AWS_*, or W2V_STORAGE_OPTIONS,
    a JSON object of fsspec options that the pretrain flow sets from its credentials block)."""
    from w2v.data.loader import LoaderConfig
    from w2v.data.streaming import StreamingOptions, parse_cache_limit
    from w2v.run.mirror import MirrorConfig
    from w2v.train.config import TrainConfig, apply_overrides
    from w2v.train.recipe import pretrain as run_pretraining

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
        options = storage_options_from_environment(parse_storage_options(storage_options))
        if fetch_retry_seconds < 0:
            raise W2VError(f"--fetch-retry-seconds {fetch_retry_seconds}: must be 0 or more")
        streaming = StreamingOptions(limit=parse_cache_limit(cache_limit), retry_seconds=fetch_retry_seconds)
        mirror = MirrorConfig(upload_to, options, keep_last=train_config.keep_last) if upload_to else None
        with training_progress("pretrain") as on_step:
            result = run_pretraining(
                train_config,
                shards,
                output,
                resume=resume,
                cache_dir=cache_dir,
                storage_options=options,
                loader=LoaderConfig(num_workers=workers),
                on_step=on_step,
                verify_shards=verify_shards,
                mirror=mirror,
                streaming=streaming,
            )
    except W2VError as error:
        fail(str(error))
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
    cache_limit: CacheLimitText = "auto",
    storage_options: StorageOptionsText = None,
    credentials_block: CredentialsBlock = None,
    verify_shards: VerifyShards = True,
) -> None:
    """The pretrain flow, as the nightly deployment runs it: check → train → evaluate → upload → report."""
    options = parse_storage_options(storage_options)
    with prefect_api() as api:  # a temporary server starts beside the import below
        from flows.pretrain import pretrain_flow

        api.ready()
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
            cache_limit=cache_limit,
            verify_shards=verify_shards,
            storage_options=options,
            credentials_block=credentials_block,
        )
    console.print(f"[green]{result['run']}[/]: best checkpoint {result['checkpoint']}")
    for name in ("evaluation", "upload"):
        console.print(f"{name}: {json.dumps(result[name])}", soft_wrap=True)
    console.print(
        f"report: {result['report']}; TensorBoard: tensorboard --logdir {result['tensorboard']}", soft_wrap=True
    )
