"""Tasks retry what may pass and give up at once on what cannot."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from flows.retries import retry_unless_permanent
from w2v.errors import CredentialsInOptions, ManifestError, ShardError, SourceError


@pytest.mark.parametrize(
    "error", [ShardError("s.arrow: sha256 differs"), ManifestError("bad"), CredentialsInOptions("x")]
)
def test_a_damaged_shard_or_refused_credential_is_not_retried(error: Exception) -> None:
    assert retry_unless_permanent(None, None, Failed(data=error)) is False


@pytest.mark.parametrize("error", [OSError("connection reset"), SourceError("s3://b/: cannot list (timeout)")])
def test_transport_errors_are_retried(error: Exception) -> None:
    assert retry_unless_permanent(None, None, Failed(data=error)) is True
