"""Open shards the ways the ecosystem does: a pyarrow memory map, or a `datasets.Dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from w2v.shards.manifest import read_manifest
from w2v.shards.table import read_stream

if TYPE_CHECKING:
    import datasets


def shard_paths(folder: Path) -> list[Path]:
    """The shards a folder's manifest names, in bucket order."""
    return [folder / s.path for s in read_manifest(folder).shards]


def open_table(folder: Path) -> pa.Table:
    """All shards as one zero-copy table over memory maps (nothing is read until used)."""
    tables = [read_stream(p) for p in shard_paths(folder)]
    return pa.concat_tables(tables) if tables else pa.table({})


def open_dataset(folder: Path) -> datasets.Dataset:
    """All shards as one Hugging Face dataset (memory-mapped, no copy)."""
    import datasets

    parts = [datasets.Dataset.from_file(str(p)) for p in shard_paths(folder)]
    return datasets.concatenate_datasets(parts)
