"""`python -m w2v` is the `w2v` command."""

from w2v.cli import app

app()
