"""Where files live: local paths and fsspec URLs (s3://…), what identifies a source's version, and the rules
that keep credentials out of anything stored or shown. Listing is w2v.listing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from w2v.errors import CredentialsInOptions


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
# A training process started by a flow finds the flow's fsspec options, credentials included, here.
STORAGE_OPTIONS_ENV = "W2V_STORAGE_OPTIONS"
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


def missing_credentials() -> tuple[type[Exception], ...]:
    """botocore's errors for credentials that cannot be found (none when botocore is not installed)."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return ()
    return (NoCredentialsError, PartialCredentialsError)


def open_source(uri: str, storage_options: dict[str, Any] | None = None) -> str | BinaryIO:
    """A local path as is, or an open binary file for a URL (the caller closes it)."""
    if not is_url(uri):
        return uri
    file: BinaryIO = fsspec.open(uri, "rb", **(storage_options or {})).open()
    return file
