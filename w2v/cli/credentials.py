"""`w2v credentials NAME`: storage credentials into a Prefect Secret block, read from standard input so they
never appear on a command line, in shell history or in a flow's parameters."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from w2v.cli.root import app, console, fail, prefect_api


@app.command()
def credentials(
    name: Annotated[str, typer.Argument(help="The Secret block's name, for --credentials-block NAME.")],
) -> None:
    """Save a JSON object of fsspec credentials from stdin, e.g. {"key": "…", "secret": "…"}, as a Prefect
    Secret block that flows load inside their tasks (w2v prepare/pipeline/finetune --credentials-block NAME)."""
    if sys.stdin.isatty():
        fail("credentials: pipe the JSON object in, e.g. w2v credentials NAME < credentials.json")
    text = sys.stdin.read()
    with prefect_api() as api:
        from flows.credentials import save_credentials

        api.ready()
        keys = save_credentials(name, text)
    where = api.url if not api.temporary else "this PREFECT_HOME's database (temporary servers read it too)"
    console.print(f"[green]{name}[/]: Secret block with {', '.join(keys)} saved in {where}", soft_wrap=True)
