"""`w2v finetune`: a pretrained checkpoint fine-tuned for speech recognition (CTC), classification or speakers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from w2v.cli.progress import training_progress
from w2v.cli.root import VerifyShards, app, console, fail
from w2v.errors import W2VError


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
    random_init: Annotated[
        bool | None,
        typer.Option(
            help="Fresh weights of --pretrained's architecture: the anchor that shows what pretraining bought."
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Updates (default: the task's epochs).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: lr=3e-5 (repeatable).")] = (
        None
    ),
    resume: Annotated[str, typer.Option(help="auto (newest checkpoint), never, or a checkpoint folder.")] = "auto",
    workers: Annotated[int, typer.Option(help="Loader worker processes.")] = 2,
    verify_shards: VerifyShards = True,
) -> None:
    """Fine-tune a pretrained checkpoint for ASR (CTC), classification or speaker identification."""
    from w2v.data.loader import LoaderConfig
    from w2v.finetune.config import FinetuneConfig
    from w2v.finetune.recipe import finetune as run_finetuning

    overrides = list(set_ or [])
    for key, value in (
        ("freeze.layers", freeze_layers),
        ("freeze.head_only", head_only),
        ("random_init", random_init),
        ("max_steps", max_steps),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        settings = FinetuneConfig.from_yaml(task, config, overrides)
        with training_progress(f"finetune {task}") as on_step:
            result = run_finetuning(
                settings,
                pretrained,
                train,
                valid,
                output,
                resume=resume,
                loader=LoaderConfig(num_workers=workers),
                verify_shards=verify_shards,
                on_step=on_step,
            )
    except W2VError as error:
        fail(str(error))
    console.print(f"[green]{output}[/]: {result.steps} steps; best model {result.best}", soft_wrap=True)
    print(json.dumps(result.evaluation, indent=1))
