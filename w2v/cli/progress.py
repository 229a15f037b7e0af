"""The progress bar `w2v pretrain` and `w2v finetune` draw: updates done of the run's total, the latest loss
and throughput. Drawn on a terminal only (silent in logs, e.g. under Prefect)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from w2v.cli.root import console

if TYPE_CHECKING:
    from w2v.run.harness import OnStep, StepReport


@contextmanager
def training_progress(name: str) -> Iterator[OnStep]:
    """A callback for the recipes' `on_step` that draws the bar while the context is open."""
    columns = [TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(name, total=None, status="")

        def on_step(report: StepReport) -> None:
            status = f"loss {report.loss:.3f}  {report.audio_seconds_per_second:.0f} audio-s/s"
            progress.update(task, completed=report.step, total=report.max_steps, status=status)

        yield on_step
