"""Typed errors, so that flows can quarantine one bad input and go on.

Each message is one line for a person: the file or parameter, what was expected, what to do.
"""

from __future__ import annotations


class W2VError(Exception):
    """Base class of every error w2v raises on purpose."""


class RejectedAudio(W2VError):
    """A source yields no usable audio; `reason` is a stable code written to rejects.jsonl."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CorruptAudioError(RejectedAudio):
    """Neither decoder can read the file, or it ends before its header says it does."""

    def __init__(self, message: str) -> None:
        super().__init__("decode_error", message)


class ManifestError(W2VError):
    """A shard folder's manifest is missing, malformed, or of a format this version cannot read."""


class ShardError(W2VError):
    """A shard file does not match its manifest entry (checksum, rows, schema)."""


class SourceError(W2VError):
    """A source argument (folder, glob, list file, s3:// prefix) cannot be listed."""


class CredentialsInOptions(W2VError):
    """Storage options carry a credential where it would be kept in plain text (a flow parameter, the
    command line); the message names the keys and the safe ways to give credentials."""
