"""`w2v evaluate` and `w2v upload`: what is done with a checkpoint folder once trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from w2v.cli.root import (
    CacheLimitText,
    StorageOptionsText,
    VerifyShards,
    app,
    console,
    fail,
    parse_storage_options,
    storage_options_from_environment,
)
from w2v.errors import W2VError


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder (RUN/best, RUN/checkpoints/step-…).")],
    shards: Annotated[list[str], typer.Option(help="The shard folders (or URLs) the run trained on.")],
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where remote shards are cached (default: $W2V_CACHE_DIR or ~/.cache/w2v/shards)."),
    ] = None,
    cache_limit: CacheLimitText = "auto",
    storage_options: StorageOptionsText = None,
    val_share: Annotated[
        float | None, typer.Option(help="Held-out share of recordings (default: the run's own).")
    ] = None,
    probe: Annotated[
        bool, typer.Option(help="Linear probes for the shards' speaker and label columns, vs a random init.")
    ] = True,
    probe_layer: Annotated[
        int, typer.Option(help="Hidden state the probes read: 0 the transformer's input, k block k, -1 the last.")
    ] = -1,
    verify_shards: VerifyShards = True,
) -> None:
    """Validation loss, contrastive accuracy and perplexity on the held-out recordings, as JSON; where the
    shards carry speaker or label, linear probe accuracy on frozen features ("probe"). Shards at a URL stream
    through a cache of --cache-limit, read as the run's validation read them."""
    from w2v.data.streaming import StreamingOptions, parse_cache_limit
    from w2v.train.evaluate import evaluate_checkpoint
    from w2v.train.probe import ProbeConfig

    model_dir = checkpoint / "model" if (checkpoint / "model").is_dir() else checkpoint
    try:
        probe_config = ProbeConfig(layer=probe_layer) if probe else None
        result = evaluate_checkpoint(
            model_dir,
            shards,
            cache_dir=cache_dir,
            storage_options=storage_options_from_environment(parse_storage_options(storage_options)),
            val_share=val_share,
            probe=probe_config,
            verify_shards=verify_shards,
            streaming=StreamingOptions(limit=parse_cache_limit(cache_limit)),
        )
    except W2VError as error:
        fail(str(error))
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

    options: dict[str, Any] = parse_storage_options(storage_options) or {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    try:
        result = upload_folder(checkpoint, url, options or None, RetryPolicy(attempts=attempts))
    except W2VError as error:
        fail(str(error))
    done = "already complete there" if result.already_complete else f"{result.bytes_put / 1e6:.1f} MB sent"
    console.print(f"[green]{url}[/]: {result.files} files verified ({done})")
