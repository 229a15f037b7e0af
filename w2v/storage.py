"""Where files live: local paths and fsspec URLs (s3://…) behind one small interface.

Sources are listed with their fingerprint (size, mtime, ETag) so an incremental run can tell what changed.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from w2v.errors import CredentialsInOptions, SourceError

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm",
        ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64", ".sph", ".wma", ".mka",
    }
)  # fmt: skip
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """A raw audio file as listed: where it is, and what identifies this version of it."""

    uri: str
    size: int
    mtime: float | None = None
    etag: str | None = None


# fsspec/s3fs spellings (key, secret, token), botocore's (aws_access_key_id, aws_secret_access_key,
# aws_session_token), and the generic ones (password, credentials, access_key, secret_key) of other backends.
CREDENTIAL_NAME_PATTERN = (
    r"^(key|secret|token)$|(^|_)(secret|token|password|passwd|credentials?)($|_)|access_key|secret_key"
)
_CREDENTIAL_NAME = re.compile(CREDENTIAL_NAME_PATTERN, re.IGNORECASE)
SAFE_CREDENTIALS = (
    "give credentials through the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE: "
    "s3fs reads them) or a Prefect Secret block (--credentials-block NAME)"
)


def credential_keys(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the entries of fsspec `options` that hold credentials, nested mappings included
    (client_kwargs.aws_secret_access_key); [] when there are none."""
    found = []
    for name, value in options.items():
        dotted = f"{prefix}{name}"
        if _CREDENTIAL_NAME.search(str(name)):
            found.append(dotted)
        elif isinstance(value, Mapping):
            found += credential_keys(value, f"{dotted}.")
    return found


def without_credentials(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` less every entry that holds credentials, nested mappings included."""
    kept: dict[str, Any] = {}
    for name, value in options.items():
        if _CREDENTIAL_NAME.search(str(name)):
            continue
        kept[name] = without_credentials(value) if isinstance(value, Mapping) else value
    return kept


def refuse_credentials(options: Mapping[str, Any] | None, where: str) -> None:
    """Raises CredentialsInOptions when `options` hold credentials; `where` names the option or parameter.

    Flow parameters are stored by Prefect in plain text and shown in its UI, and command lines are visible
    to every user of the machine: credentials never travel either way."""
    found = credential_keys(options or {})
    if found:
        raise CredentialsInOptions(
            f"{where}: {', '.join(found)} would be stored and shown in plain text; {SAFE_CREDENTIALS}"
        )


def is_url(path: str) -> bool:
    return "://" in path


def list_sources(args: list[str], storage_options: dict[str, Any] | None = None) -> list[Source]:
    """Expand folders, globs, list files and URL prefixes into unique sources sorted by URI."""
    found: dict[str, Source] = {}
    for arg in args:
        sources = _list_url(arg, storage_options or {}) if is_url(arg) else _list_local(arg)
        if not sources:
            raise SourceError(f"{arg}: no audio files found (folder, glob, list file or URL prefix expected)")
        for source in sources:
            found[source.uri] = source
    return [found[uri] for uri in sorted(found)]


def _list_local(arg: str) -> list[Source]:
    if _GLOB_CHARS & set(arg):
        return [_local_source(p) for p in sorted(glob.glob(arg, recursive=True)) if os.path.isfile(p)]
    path = Path(arg)
    if path.is_dir():
        return [
            _local_source(str(p))
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")
        ]
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        return _list_file(path)
    if path.is_file():
        return [_local_source(arg)]
    raise SourceError(f"{arg}: no such file, folder or glob match")


def _list_file(path: Path) -> list[Source]:
    """A text file naming one source per line (relative to the list file); '#' starts a comment."""
    sources: list[Source] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if is_url(entry):
            sources.extend(_list_url(entry, {}))
            continue
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not target.is_file():
            raise SourceError(f"{path}:{number}: {entry}: no such file")
        sources.append(_local_source(str(target)))
    return sources


def _local_source(path: str) -> Source:
    stat = os.stat(path)
    return Source(uri=str(Path(path).resolve()), size=stat.st_size, mtime=stat.st_mtime)


def _list_url(url: str, storage_options: dict[str, Any]) -> list[Source]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    protocol = url.split("://", 1)[0]
    try:
        if _GLOB_CHARS & set(path):
            infos = fs.glob(path, detail=True)
        elif fs.isdir(path):
            infos = {
                p: info
                for p, info in fs.find(path, detail=True).items()
                if os.path.splitext(p)[1].lower() in AUDIO_EXTENSIONS
            }
        else:
            infos = {path: fs.info(path)}
    except FileNotFoundError as error:
        raise SourceError(f"{url}: not found") from error
    except OSError as error:
        raise SourceError(f"{url}: cannot list ({error})") from error
    except _missing_credentials() as error:
        raise SourceError(f"{url}: no credentials for this store ({error}); {SAFE_CREDENTIALS}") from None
    return [_url_source(protocol, p, info) for p, info in sorted(infos.items()) if info.get("type") != "directory"]


def _missing_credentials() -> tuple[type[Exception], ...]:
    """botocore's errors for credentials that cannot be found (none when botocore is not installed)."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return ()
    return (NoCredentialsError, PartialCredentialsError)


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


def open_source(uri: str, storage_options: dict[str, Any] | None = None) -> str | BinaryIO:
    """A local path as is, or an open binary file for a URL (the caller closes it)."""
    if not is_url(uri):
        return uri
    file: BinaryIO = fsspec.open(uri, "rb", **(storage_options or {})).open()
    return file
