"""`--shards LOCATION[:WEIGHT]` arguments: which shard folders training mixes, and in what proportion.

LOCATION is a shard folder or its manifest.json, local or at an fsspec URL (staged into a local cache, or
streamed through a bounded one: w2v.data.streaming).
WEIGHT is the share of micro-batches drawn from it (normalized over all --shards; default 1). Micro-batches
hold about the same audio under the duration budget, so this is also about the share of audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2v.data.corpus import ShardCorpus
from w2v.data.staging import stage_shards
from w2v.data.streaming import CorpusCache, StreamedFolder, StreamingOptions, make_cache, open_streamed
from w2v.errors import W2VError
from w2v.shards.manifest import MANIFEST_NAME
from w2v.storage import is_url


@dataclass(frozen=True)
class ShardsArg:
    location: str
    weight: float = 1.0


def parse_shards_arg(arg: str) -> ShardsArg:
    """'a/manifest.json:0.7' → (a, 0.7); a colon that is part of a URL ('s3://…') is not a weight."""
    location, weight = arg, 1.0
    head, sep, tail = arg.rpartition(":")
    if sep and head and "/" not in tail:
        try:
            weight = float(tail)
        except ValueError:
            raise W2VError(f"--shards {arg}: the part after the last ':' must be a weight, like a/:0.7") from None
        location = head
    if not weight > 0:
        raise W2VError(f"--shards {arg}: the weight must be positive")
    location = location.rstrip("/")
    if location.endswith(MANIFEST_NAME):
        location = location[: -len(MANIFEST_NAME)].rstrip("/") or "."
    return ShardsArg(location, weight)


def open_corpora(
    args: Sequence[str],
    cache_dir: Path,
    storage_options: dict[str, Any] | None = None,
    *,
    verify: bool = True,
) -> tuple[list[ShardCorpus], list[float]]:
    """Stage (when remote), check against the manifest (unless `verify` is False: fast and unsafe) and open
    every --shards argument; returns the corpora and their weights. Every folder is checked before any opens."""
    if not args:
        raise W2VError("no --shards given: name at least one folder w2v prepare wrote")
    parsed = [parse_shards_arg(a) for a in args]
    folders = [stage_shards(p.location, cache_dir, storage_options, verify=verify).folder for p in parsed]
    return [ShardCorpus(folder) for folder in folders], [p.weight for p in parsed]


@dataclass
class OpenedCorpora:
    corpora: list[ShardCorpus]
    weights: list[float]
    cache: CorpusCache | None  # the streamed corpora's shards (None: every corpus is local)


def open_streaming_corpora(
    args: Sequence[str],
    cache_dir: Path,
    options: StreamingOptions,
    storage_options: dict[str, Any] | None = None,
    *,
    verify: bool = True,
    local_rank: int = 0,
) -> OpenedCorpora:
    """Open every --shards argument: a URL is streamed through one cache of `options.limit` (its shards are
    checked as they arrive), a local folder checked (unless `verify` is False) and read in place."""
    if not args:
        raise W2VError("no --shards given: name at least one folder w2v prepare wrote")
    parsed = [parse_shards_arg(a) for a in args]
    folders: list[StreamedFolder | None] = []
    corpora = []
    for arg in parsed:
        if is_url(arg.location):
            streamed = open_streamed(arg.location, cache_dir, storage_options)
            folders.append(streamed)
            corpora.append(ShardCorpus(streamed.folder, streamed.shards_dir))
        else:
            folders.append(None)
            corpora.append(ShardCorpus(stage_shards(arg.location, cache_dir, verify=verify).folder))
    cache = make_cache(folders, options, local_rank) if any(f is not None for f in folders) else None
    return OpenedCorpora(corpora, [p.weight for p in parsed], cache)
