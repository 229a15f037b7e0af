"""Upload a checkpoint (any folder) to an fsspec URL: retried, read back and checked, marked complete last.

Each file is put (s3fs splits large ones into multipart uploads; a file identical to one already there,
such as a checkpoint's weights saved twice, is copied by the destination instead), then every remote file
is read back and its sha256 compared with the local file's; files that are missing or differ are put again,
until all match or the retries run out. Only then is `_UPLOAD_COMPLETE.json` written, listing every file and its sha256:
a reader that finds the marker finds the whole checkpoint. Uploading again is cheap when the marker
already lists the same files. The local folder is never modified.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from w2v.errors import W2VError

MARKER = "_UPLOAD_COMPLETE.json"
BLOCK_BYTES = 8 << 20
T = TypeVar("T")


class UploadError(W2VError):
    """The upload did not complete; the marker was not written."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    first_wait_seconds: float = 1.0
    max_wait_seconds: float = 60.0


@dataclass(frozen=True)
class UploadResult:
    url: str
    files: int
    # Bytes sent by this call (0 when the destination already held the same checkpoint); a file identical to
    # another is copied by the destination, not sent again.
    bytes_put: int
    already_complete: bool


def upload_folder(
    local: Path, url: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = RetryPolicy()
) -> UploadResult:
    local = Path(local)
    if not local.is_dir():
        raise UploadError(f"{local}: not a folder to upload")
    files = {p.relative_to(local).as_posix(): file_sha256(p) for p in sorted(local.rglob("*")) if p.is_file()}
    if not files:
        raise UploadError(f"{local}: nothing to upload (empty folder)")
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    expected = {name: {"sha256": sha, "bytes": (local / name).stat().st_size} for name, sha in files.items()}
    if retrying(lambda: _marker_lists(fs, root, expected), retry, f"{url}: reading {MARKER}"):
        return UploadResult(url, len(files), 0, True)
    retrying(lambda: _remove(fs, f"{root}/{MARKER}"), retry, f"{url}: removing a stale {MARKER}")
    sent = 0
    for _round in range(retry.attempts):
        wrong = retrying(lambda: _mismatches(fs, root, files), retry, f"{url}: checking uploaded files")
        if not wrong:
            completed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            marker = json.dumps({"files": expected, "completed": completed}).encode()
            retrying(functools.partial(fs.pipe_file, f"{root}/{MARKER}", marker), retry, f"{url}: writing {MARKER}")
            return UploadResult(url, len(files), sent, False)
        holding = {files[name]: name for name in files if name not in wrong}  # checked remote copies
        for name in wrong:
            source = holding.get(files[name])
            if source is not None:  # the same bytes are there (a checkpoint's weights, twice): copy remotely
                copy = functools.partial(_copy, fs, f"{root}/{source}", f"{root}/{name}")
                retrying(copy, retry, f"{url}/{name}: copy")
                continue
            put = functools.partial(_put, fs, local / name, f"{root}/{name}")
            retrying(put, retry, f"{url}/{name}: upload")
            sent += (local / name).stat().st_size
            holding[files[name]] = name
    raise UploadError(f"{url}: files still differ from {local} after {retry.attempts} rounds; no marker written")


def _put(fs: Any, source: Path, target: str) -> None:
    parent = target.rsplit("/", 1)[0]
    # A bucket that is gone (or new) is made again where allowed; without the right to, the put tells.
    with contextlib.suppress(PermissionError):
        fs.makedirs(parent, exist_ok=True)
    fs.put_file(str(source), target)


def _copy(fs: Any, source: str, target: str) -> None:
    """A copy made by the destination itself (S3: CopyObject), so identical files are sent once."""
    with contextlib.suppress(PermissionError):
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.copy(source, target)


def _mismatches(fs: Any, root: str, files: dict[str, str]) -> list[str]:
    """Files whose remote copy is missing or whose bytes (read back) differ from the local sha256."""
    fs.invalidate_cache()
    wrong = []
    for name, sha in files.items():
        try:
            with fs.open(f"{root}/{name}", "rb", block_size=BLOCK_BYTES) as remote:
                digest = hashlib.sha256()
                while block := remote.read(BLOCK_BYTES):
                    digest.update(block)
        except FileNotFoundError:
            wrong.append(name)
            continue
        if digest.hexdigest() != sha:
            wrong.append(name)
    return wrong


def _marker_lists(fs: Any, root: str, expected: dict[str, dict[str, Any]]) -> bool:
    try:
        listed = json.loads(fs.cat_file(f"{root}/{MARKER}"))
    except FileNotFoundError:
        return False
    except ValueError:
        return False  # a marker that is not JSON is not a marker
    return bool(listed.get("files") == expected)


def _remove(fs: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def retrying(action: Callable[[], T], retry: RetryPolicy, what: str) -> T:
    """Run `action`, retrying transport errors with exponential backoff; the last error is reported."""
    wait = retry.first_wait_seconds
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except _TRANSIENT as error:
            if isinstance(error, PermissionError) or attempt == retry.attempts:
                raise UploadError(
                    f"{what}: failed {attempt} times, last with {type(error).__name__}: {error}"
                ) from error
            time.sleep(wait)
            wait = min(wait * 2, retry.max_wait_seconds)
    raise AssertionError("unreachable")


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no s3fs: local and other filesystems raise OSError
        pass
    return tuple(errors)


_TRANSIENT = _transient_errors()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
