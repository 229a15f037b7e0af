"""w2v: raw speech corpus to pretrained wav2vec 2.0.

The library knows nothing of Prefect or of the command line; `flows/` composes it and `w2v.cli` drives both.
"""

__version__ = "0.1.0"
