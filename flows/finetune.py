"""finetune: a pretrained checkpoint + labelled shards → a fine-tuned model transformers' pipelines load.

stage shards (remote ones into a local cache; every shard checked against its manifest) → fine-tune
(`accelerate launch`, its log streamed into the flow run; a retry resumes from the newest checkpoint) →
upload the best model → publish a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.credentials import StorageAccess, StorageOptions
from flows.tasks import TRAINING_TAG, accelerate_launch, stage, train, upload
from w2v.atomic import write_text_atomic
from w2v.run.metrics import read_metrics

REPORT = "report.md"


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(run_dir: Path, task_name: str, extra: dict[str, Any]) -> Path:
    """The last evaluation and the metrics log as a flow-run artifact, and as RUN/report.md."""
    records = read_metrics(run_dir)
    evaluations = [r for r in records if any(k.startswith("val_") for k in r)]
    lines = [f"# Fine-tuning report ({task_name}): `{run_dir}`", ""]
    if evaluations:
        names = [k for k in evaluations[-1] if k != "step"]
        lines += ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for record in evaluations:
            cells = [f"{record.get(n, float('nan')):.4g}" for n in names]
            lines.append(f"| {record['step']} | " + " | ".join(cells) + " |")
    lines += ["", *[f"**{key}**: {value}" for key, value in extra.items()]]
    markdown = "\n".join(lines) + "\n"
    create_markdown_artifact(key="finetuning-report", markdown=markdown, description=f"finetune into {run_dir}")
    path = run_dir / REPORT
    write_text_atomic(path, markdown)
    return path


@flow(name="finetune", log_prints=True)
def finetune_flow(
    task: str,
    pretrained: str,
    train_shards: list[str],
    valid_shards: list[str],
    output: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    upload_to: str | None = None,
    storage_options: StorageOptions = None,
    credentials_block: str | None = None,
    loader_workers: int = 2,
    concurrency_tag: str = TRAINING_TAG,
    verify_shards: bool = True,
) -> dict[str, Any]:
    """Fine-tune PRETRAINED for TASK (ctc, classify, speaker) on labelled shards into OUTPUT, then upload the
    best model (to OUTPUT/uploaded unless `upload_to` is given). Shards are checked against their manifest
    first, once per file state; `verify_shards=False` skips that (fast, unsafe). Storage credentials come
    from the environment or the Secret block `credentials_block`, never from `storage_options`."""
    storage = StorageAccess(storage_options, credentials_block).check()
    run_dir = Path(output)
    staged_train = stage(train_shards, run_dir / "shard-cache", storage, verify_shards)
    staged_valid = stage(valid_shards, run_dir / "shard-cache", storage, verify_shards)
    command = finetune_command(
        task, pretrained, staged_train, staged_valid, run_dir, config, overrides or [], verify_shards=verify_shards
    )
    command += ["--workers", str(loader_workers)]
    with tags(concurrency_tag):
        train(command)
    best = run_dir / "best"
    uploaded = upload(best, upload_to or str(run_dir / "uploaded"), storage)
    report = publish_report(run_dir, task, {"uploaded to": uploaded["url"]})
    return {"run": str(run_dir), "best": str(best / "model"), "upload": uploaded, "report": str(report)}


def finetune_command(
    task: str,
    pretrained: str,
    train_shards: list[str],
    valid_shards: list[str],
    run_dir: Path,
    config: str | None,
    overrides: list[str],
    *,
    verify_shards: bool = True,
) -> list[str]:
    command = [*accelerate_launch(), "-m", "w2v", "finetune", "--task", task]
    command += ["--pretrained", pretrained, "--output", str(run_dir)]
    for shard in train_shards:
        command += ["--train", shard]
    for shard in valid_shards:
        command += ["--valid", shard]
    if config:
        command += ["--config", config]
    for item in overrides:
        command += ["--set", item]
    if not verify_shards:
        command.append("--no-verify-shards")
    return command
