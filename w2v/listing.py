"""Listing sources: folders, globs, list files and URL prefixes → unique sources sorted by URI, each with the
fingerprint (size, mtime, ETag) that lets an incremental run tell what changed.

A big corpus is listed in parts that run side by side: here on threads, or as tasks on a cluster's workers
(flows/prepare_corpus.py). `split_sources` cuts each folder or prefix at its top levels into the files directly
inside and one part per sub-folder, a level deeper while there are fewer parts than asked for; globs, list
files and single files are one part each. `list_part` lists one part anywhere; `merge_listings` checks that
every argument found something and puts the parts together.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
import pyarrow as pa

from w2v.errors import SourceError
from w2v.storage import SAFE_CREDENTIALS, Source, is_url, missing_credentials

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm",
        ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64", ".sph", ".wma", ".mka",
    }
)  # fmt: skip
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
_GLOB_CHARS = set("*?[")
PARTS = 64  # enough to keep a cluster's workers (or a store's request latency) busy
MAX_SPLIT_DEPTH = 3  # levels of sub-folders looked into to find that many parts
THREADS = 8

PartKind = Literal["tree", "top", "glob", "list", "file"]
# A listing as one Arrow table: compact to send between a cluster's processes, and opaque to an orchestrator
# that would otherwise look inside every listed file (Prefect walks a task's inputs, ~20 µs per object).
LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()), ("etag", pa.string())])


@dataclass(frozen=True)
class ListingPart:
    """One piece of a source argument, listed by one worker. `where` is a folder path or URL: "tree" lists
    every audio file below it, "top" only the audio files directly inside; "glob", "list" and "file" are the
    argument itself (a pattern, a list file, one file). `arg` is the argument as given, named in errors."""

    arg: str
    where: str
    kind: PartKind


def list_sources(
    args: list[str], storage_options: dict[str, Any] | None = None, threads: int = THREADS
) -> list[Source]:
    """Expand folders, globs, list files and URL prefixes into unique sources sorted by URI, listing their
    parts on `threads` threads. Raises SourceError naming an argument that cannot be listed or finds no audio."""
    parts = split_sources(args, storage_options)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        listings = list(pool.map(lambda part: list_part(part, storage_options), parts))
    return merge_listings(args, parts, listings)


def split_sources(
    args: Sequence[str], storage_options: dict[str, Any] | None = None, parts: int = PARTS
) -> list[ListingPart]:
    """The parts to list `args` in: folders and prefixes split into sub-folders, a level at a time (at most
    MAX_SPLIT_DEPTH), until all together give `parts` or more. Raises SourceError for an argument that names
    nothing."""
    found: list[ListingPart] = []
    for arg in args:
        found.extend(_split_url(arg, storage_options or {}, parts) if is_url(arg) else _split_local(arg, parts))
    return found


def list_part(part: ListingPart, storage_options: dict[str, Any] | None = None) -> list[Source]:
    """The sources of one part, in no particular order. Raises SourceError when it cannot be listed."""
    options = storage_options or {}
    if is_url(part.where):
        return _list_url_part(part, options)
    if part.kind == "tree":
        return list(_walk(part.where, recursive=True))
    if part.kind == "top":
        return list(_walk(part.where, recursive=False))
    if part.kind == "glob":
        return [_local_source(p) for p in glob.glob(part.where, recursive=True) if os.path.isfile(p)]
    if part.kind == "list":
        return _list_file(Path(part.where), options)
    return [_local_source(part.where)]


def merge_listings(args: Sequence[str], parts: Sequence[ListingPart], listings: Iterable[list[Source]]) -> list[Source]:
    """Unique sources sorted by URI from the listings of `parts` (in the same order). Raises SourceError
    naming an argument none of whose parts found audio."""
    found: dict[str, Source] = {}
    args_with_audio: set[str] = set()
    for part, sources in zip(parts, listings, strict=True):
        if sources:
            args_with_audio.add(part.arg)
        for source in sources:
            found[source.uri] = source
    for arg in args:
        if arg not in args_with_audio:
            raise SourceError(f"{arg}: no audio files found (folder, glob, list file or URL prefix expected)")
    return [found[uri] for uri in sorted(found)]


def listing_table(sources: Iterable[Source]) -> pa.Table:
    """`sources` as a LISTING_SCHEMA table, in the same order."""
    listed = list(sources)
    columns = {
        "uri": [s.uri for s in listed],
        "size": [s.size for s in listed],
        "mtime": [s.mtime for s in listed],
        "etag": [s.etag for s in listed],
    }
    return pa.table(columns, schema=LISTING_SCHEMA)


def listed_sources(table: pa.Table) -> list[Source]:
    """The sources of a LISTING_SCHEMA table, in its order."""
    columns = [table.column(name).to_pylist() for name in LISTING_SCHEMA.names]
    return [Source(uri, size, mtime, etag) for uri, size, mtime, etag in zip(*columns, strict=True)]


# ------------------------------------------------------------------------------------------------- local


def _split_local(arg: str, parts: int) -> list[ListingPart]:
    if _GLOB_CHARS & set(arg):
        return [ListingPart(arg, arg, "glob")]
    path = Path(arg)
    if path.is_dir():
        return _split_tree(arg, str(path.resolve()), parts, _local_subfolders)
    if path.is_file():
        return [ListingPart(arg, arg, "list" if path.suffix.lower() in LIST_EXTENSIONS else "file")]
    raise SourceError(f"{arg}: no such file, folder or glob match")


def _split_tree(arg: str, root: str, parts: int, subfolders: Callable[[str], list[str]]) -> list[ListingPart]:
    """Replace trees by their top and their sub-folders' trees, a level at a time, while there are fewer than
    `parts` parts."""
    tops: list[ListingPart] = []
    trees = [root]
    for _ in range(MAX_SPLIT_DEPTH):
        if len(tops) + len(trees) >= parts:
            break
        deeper: list[str] = []
        for tree in trees:
            tops.append(ListingPart(arg, tree, "top"))
            deeper.extend(subfolders(tree))
        trees = deeper
    return tops + [ListingPart(arg, tree, "tree") for tree in trees]


def _local_subfolders(folder: str) -> list[str]:
    """Sub-folders to descend into: as rglob does, symbolic links to folders are not followed."""
    with _listing_errors(folder), os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))


def _walk(folder: str, recursive: bool) -> Iterable[Source]:
    """Audio files (not hidden) in `folder`, below it too when `recursive`. `folder` is already resolved, so a
    file's URI is the folder joined with its name, resolved only when the file is a symbolic link (one stat per
    file, where resolving every path costs a call per path component)."""
    pending = [folder]
    while pending:
        current = pending.pop()
        with _listing_errors(current), os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(entry.path)
                elif _is_audio(entry.name) and entry.is_file():
                    if entry.is_symlink():
                        yield _local_source(entry.path)
                    else:
                        stat = entry.stat()
                        yield Source(uri=entry.path, size=stat.st_size, mtime=stat.st_mtime)


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _list_file(path: Path, storage_options: dict[str, Any]) -> list[Source]:
    """A text file naming one source per line (relative to the list file); '#' starts a comment."""
    sources: list[Source] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if is_url(entry):
            sources.extend(_list_url_part(ListingPart(str(path), entry, "tree"), storage_options))
            continue
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not target.is_file():
            raise SourceError(f"{path}:{number}: {entry}: no such file")
        sources.append(_local_source(str(target)))
    return sources


def _local_source(path: str) -> Source:
    stat = os.stat(path)
    return Source(uri=str(Path(path).resolve()), size=stat.st_size, mtime=stat.st_mtime)


# --------------------------------------------------------------------------------------------------- URLs


def _split_url(url: str, storage_options: dict[str, Any], parts: int) -> list[ListingPart]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    protocol = url.split("://", 1)[0]
    if _GLOB_CHARS & set(path):
        return [ListingPart(url, url, "glob")]
    with _listing_errors(url):
        if not fs.isdir(path):
            return [ListingPart(url, url, "file")]

        def subfolders(where: str) -> list[str]:
            with _listing_errors(where):
                inside = fs.ls(where.split("://", 1)[1], detail=True)
            return sorted(f"{protocol}://{i['name']}" for i in inside if i.get("type") == "directory")

        return _split_tree(url, f"{protocol}://{path.rstrip('/')}", parts, subfolders)


def _list_url_part(part: ListingPart, storage_options: dict[str, Any]) -> list[Source]:
    fs, path = fsspec.core.url_to_fs(part.where, **storage_options)
    protocol = part.where.split("://", 1)[0]
    with _listing_errors(part.where):
        if part.kind == "glob":
            infos = fs.glob(path, detail=True)
        elif part.kind == "top":
            infos = {i["name"]: i for i in fs.ls(path, detail=True) if _is_audio_url(i["name"])}
        elif part.kind == "tree" and fs.isdir(path):
            infos = {p: i for p, i in fs.find(path, detail=True).items() if _is_audio_url(p)}
        else:
            infos = {path: fs.info(path)}
    return [_url_source(protocol, p, info) for p, info in infos.items() if info.get("type") != "directory"]


def _is_audio_url(path: str) -> bool:
    """Audio by extension; unlike local files, hidden names are listed (a store has no such convention)."""
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


@contextmanager
def _listing_errors(where: str) -> Iterator[None]:
    """Turn what goes wrong while listing `where` (a folder or URL) into a one-line SourceError."""
    try:
        yield
    except SourceError:
        raise
    except FileNotFoundError as error:
        raise SourceError(f"{where}: not found") from error
    except OSError as error:
        raise SourceError(f"{where}: cannot list ({error})") from error
    except missing_credentials() as error:
        raise SourceError(f"{where}: no credentials for this store ({error}); {SAFE_CREDENTIALS}") from None


def _url_source(protocol: str, path: str, info: dict[str, Any]) -> Source:
    etag = info.get("ETag") or info.get("etag")
    modified: Any = info.get("LastModified") or info.get("mtime")
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else modified
    return Source(
        uri=f"{protocol}://{path}",
        size=int(info.get("size") or 0),
        mtime=float(mtime) if mtime is not None else None,
        etag=str(etag).strip('"') if etag else None,
    )
