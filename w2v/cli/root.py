"""The one `w2v` Typer app, its --log-level callback, and what every command shares: the stderr console,
one-line failures (exit 2) and Prefect's offline settings. Command modules register themselves on `app`."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from flows.prefect_api import PrefectApi

# The option of every command that opens shards (pretrain, pipeline, finetune, evaluate).
VerifyShards = Annotated[
    bool,
    typer.Option(
        help="Check every shard's size and sha256 against the manifest first (once per file state: an "
        "unchanged folder is not hashed again); --no-verify-shards is the fast, unsafe choice."
    ),
]

# The option of every command whose flows open storage (prepare, pipeline).
CredentialsBlock = Annotated[
    str | None,
    typer.Option(help="A Prefect Secret block holding storage credentials as JSON (w2v credentials NAME)."),
]

app = typer.Typer(help="w2v: raw speech corpus to pretrained wav2vec 2.0.", no_args_is_help=True)
console = Console(stderr=True)


@app.callback()
def _logging(
    log_level: Annotated[
        str, typer.Option(help="Messages of w2v's library code: debug, info, warning, error.")
    ] = "info",
) -> None:
    """w2v: raw speech corpus to pretrained wav2vec 2.0."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fail(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    library = logging.getLogger("w2v")
    library.handlers = [handler]
    library.setLevel(level)
    library.propagate = False


def offline_prefect_defaults() -> None:
    # Runs happen on machines with no route out: don't let Prefect try to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@contextmanager
def prefect_api() -> Iterator[PrefectApi]:
    """The Prefect API for a command that runs flows (flows.prefect_api): a temporary server starts now, beside
    the command's imports; call `ready()` on it before any output. Its failures end the command in one line."""
    offline_prefect_defaults()
    from flows.prefect_api import prefect_api as api_for_flows
    from w2v.errors import W2VError

    try:
        with api_for_flows() as api:
            if api.first_start:
                console.print(
                    "Starting Prefect's temporary server; the first start on this PREFECT_HOME creates its "
                    "database (up to a minute on a busy machine).",
                    highlight=False,
                    soft_wrap=True,
                )
            yield api
    except W2VError as error:
        fail(str(error))


def fail(message: str) -> NoReturn:
    """Print `message` on one line (with the traceback under --log-level debug) and exit with status 2."""
    if sys.exc_info()[0] is not None and logging.getLogger("w2v").isEnabledFor(logging.DEBUG):
        console.print_exception()
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    raise typer.Exit(2)


StorageOptionsText = Annotated[
    str | None, typer.Option(help='fsspec options without credentials, e.g. \'{"endpoint_url": "http://…"}\'.')
]
CacheLimitText = Annotated[
    str,
    typer.Option(help="Local disk for shards from a URL: bytes (500G), a share of the free disk (10%), or auto."),
]


def storage_options_from_environment(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """`options` and the JSON object in $W2V_STORAGE_OPTIONS merged (it may hold credentials: a process's
    environment is not shown to other users, unlike its command line), or a one-line failure that does not
    repeat the variable's value."""
    from w2v.storage import STORAGE_OPTIONS_ENV

    text = os.environ.get(STORAGE_OPTIONS_ENV)
    if not text:
        return options
    return {**(options or {}), **_options_object(text, f"${STORAGE_OPTIONS_ENV}")}


def _options_object(text: str, where: str) -> dict[str, Any]:
    """`text` as a JSON object of fsspec options, or a one-line failure naming `where` (not quoting `text`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f'{where}: not JSON ({error.msg} at column {error.colno}); expected an object like {{"endpoint_url": …}}')
    if not isinstance(value, dict):
        fail(f"{where}: expected a JSON object of fsspec options, got {type(value).__name__}")
    return value


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """--storage-options: a JSON object of fsspec options, or a one-line failure naming the option."""
    if not text:
        return None
    options = _options_object(text, "--storage-options")
    from w2v.storage import credential_keys

    if found := credential_keys(options):  # a command line is visible to every user of the machine
        from w2v.storage import SAFE_CREDENTIALS

        fail(f"--storage-options: {', '.join(found)} must not be given on the command line; {SAFE_CREDENTIALS}")
    return options
