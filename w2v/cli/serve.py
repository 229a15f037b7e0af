"""`w2v serve` and `w2v server`: the deployments of prefect.yaml served from this process, alone or beside a
local Prefect server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from w2v.cli.root import app, console, fail, offline_prefect_defaults, prefect_api
from w2v.errors import W2VError


@app.command()
def serve(
    deployments: Annotated[Path | None, typer.Option(help="A prefect.yaml (default: the project's).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="W2V_DATA: raw/, shards/, runs/ and bucket/ live here (default ./w2v-data).")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="W2V_TIMEZONE of the nightly schedule (default UTC).")] = None,
    limit: Annotated[int | None, typer.Option(help="Flow runs at a time from this process.")] = None,
) -> None:
    """Serve prepare-corpus/default and pretrain/nightly (all of prefect.yaml) from this one process."""
    with prefect_api() as api:  # the server PREFECT_API_URL names, or a temporary one for this process
        from flows.deployments import PREFECT_YAML, read_specs, serve_deployments

        _set_deployment_variables(data, timezone)
        specs = read_specs(deployments or PREFECT_YAML)
        api.ready()
        console.print(f"serving {len(specs)} deployments through the Prefect API at {api.url}", soft_wrap=True)
        serve_deployments(specs, limit=limit)


@app.command()
def server(
    home: Annotated[Path, typer.Option(help="PREFECT_HOME: the server's SQLite database and logs.")] = Path(
        "w2v-data/prefect"
    ),
    port: Annotated[int, typer.Option(help="Port of the API and UI on 127.0.0.1.")] = 4200,
    data: Annotated[Path | None, typer.Option(help="W2V_DATA for the deployments (default ./w2v-data).")] = None,
    timezone: Annotated[str | None, typer.Option(help="W2V_TIMEZONE of the nightly schedule.")] = None,
) -> None:
    """A local Prefect server (SQLite) with every deployment served beside it; Ctrl-C stops both."""
    offline_prefect_defaults()
    from flows.deployments import PREFECT_YAML, read_specs, serve_deployments
    from flows.local_server import local_prefect_server

    _set_deployment_variables(data, timezone)
    try:
        with local_prefect_server(home.resolve(), port=port) as running:
            os.environ.update(running.environment)
            console.print(f"Prefect UI: [bold]{running.ui_url}[/]  (API {running.api_url}, log {running.log})")
            console.print(f"in another shell: export PREFECT_API_URL={running.api_url}")
            serve_deployments(read_specs(PREFECT_YAML))
    except W2VError as error:
        fail(str(error))
    except KeyboardInterrupt:
        console.print("stopped")


def _set_deployment_variables(data: Path | None, timezone: str | None) -> None:
    if data is not None:
        os.environ["W2V_DATA"] = str(data.resolve())
    if timezone is not None:
        os.environ["W2V_TIMEZONE"] = timezone
