"""The `w2v` command line: a thin shell over the library and the Prefect flows.

`app` is the one Typer app (`w2v.cli:app`, `python -m w2v`), made in `root`; each other module registers one
group of commands on it.
"""

import sys

from w2v.cli.root import app

# Imported for their side effect, registering commands; in the order `w2v --help` lists them.
# isort: off
from w2v.cli import prepare, shards, pretrain, finetune, checkpoints, doctor, serve, credentials  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    sys.exit(app())
