"""Storage credentials for flows, kept out of everything Prefect stores.

A flow takes only the name of a Prefect Secret block (`credentials_block`); each task that opens storage
loads the block itself and merges it into the fsspec options it uses there. So the credentials are never a
flow or task parameter (Prefect keeps those in plain text and shows them in its UI), a log line, an
artifact, a manifest or a checkpoint. Credential-like keys in the `storage_options` parameter itself are
refused before anything runs. Without a block, s3fs finds credentials the usual ways (AWS_* variables,
AWS_PROFILE and ~/.aws, instance roles).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import WithJsonSchema

from w2v.errors import CredentialsInOptions
from w2v.storage import CREDENTIAL_NAME_PATTERN, refuse_credentials

# The flows' `storage_options` parameter, typed so that the JSON schema Prefect keeps for each deployment
# refuses credential-like keys (top level and one level down, e.g. client_kwargs): the server then rejects a
# deployment run given them before storing anything. Direct calls are checked by StorageAccess.
_NO_CREDENTIAL_NAMES = {"not": {"pattern": CREDENTIAL_NAME_PATTERN}}
_STORAGE_OPTIONS_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": _NO_CREDENTIAL_NAMES,
            "additionalProperties": {
                "anyOf": [{"type": "object", "propertyNames": _NO_CREDENTIAL_NAMES}, {"not": {"type": "object"}}]
            },
        },
        {"type": "null"},
    ],
    "description": "fsspec options without credentials (those come from the environment or credentials_block)",
}
StorageOptions = Annotated[dict[str, Any] | None, WithJsonSchema(_STORAGE_OPTIONS_SCHEMA)]


@dataclass(frozen=True)
class StorageAccess:
    """How tasks reach storage: fsspec options without credentials, and the name of the Secret block (if any)
    that holds the credentials. Safe to pass as a task parameter; `options()` is not."""

    storage_options: Mapping[str, Any] | None = None
    credentials_block: str | None = None

    def __post_init__(self) -> None:
        check_storage_options(self.storage_options)

    def options(self) -> dict[str, Any] | None:
        """The fsspec options with the block's credentials merged in; for use inside a task only."""
        return storage_options_with_credentials(self.storage_options, self.credentials_block)

    def check(self) -> StorageAccess:
        """Load the block once, so that a missing or malformed one fails the flow at once rather than after
        a task's retries; returns self. Raises CredentialsInOptions."""
        self.options()
        return self


def check_storage_options(options: Mapping[str, Any] | None) -> None:
    """Raises CredentialsInOptions when the `storage_options` parameter carries credentials."""
    refuse_credentials(options, "storage_options")


def storage_options_with_credentials(
    options: Mapping[str, Any] | None, credentials_block: str | None
) -> dict[str, Any] | None:
    """`options` plus the fsspec options held by the Secret block `credentials_block` (a JSON object such as
    {"key": "…", "secret": "…"}); call it inside the task that uses them, never pass the result to a task.

    Raises CredentialsInOptions when `options` carry credentials themselves, or the block is missing or does
    not hold a JSON object."""
    check_storage_options(options)
    if not credentials_block:
        return dict(options) if options else None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(credentials_block).get()  # type: ignore[union-attr]
    except ValueError:
        raise CredentialsInOptions(
            f"credentials block {credentials_block!r}: no Secret block of that name on this Prefect API; "
            "create it with: w2v credentials NAME < credentials.json"
        ) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise CredentialsInOptions(
            f"credentials block {credentials_block!r}: expected a JSON object of fsspec options, such as "
            '{"key": "…", "secret": "…"}'
        )
    return {**(options or {}), **value}


def save_credentials(name: str, text: str) -> list[str]:
    """Store `text`, a JSON object of fsspec credential options, as the Prefect Secret block `name`
    (replacing one of that name); returns its keys. Raises CredentialsInOptions when it is not such an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CredentialsInOptions(f"credentials for {name!r}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, dict) or not value:
        raise CredentialsInOptions(
            f'credentials for {name!r}: expected a JSON object such as {{"key": "…", "secret": "…"}}'
        )
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)  # type: ignore[arg-type]  # Secret takes any JSON value
    return sorted(value)
