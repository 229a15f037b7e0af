"""Per-file metadata (text, speaker, label) from a CSV or JSONL file with a `path` column."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from w2v.errors import W2VError
from w2v.shards.schema import METADATA_COLUMNS
from w2v.storage import is_url

Metadata = dict[str, str | None]


def load_metadata(path: Path) -> dict[str, Metadata]:
    """Map each source URI to its metadata; relative paths are taken from the metadata file's folder."""
    rows = _read_rows(path)
    table: dict[str, Metadata] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{path}:{number}"
        if "path" not in row or not row["path"]:
            raise W2VError(f"{where}: row has no 'path' (columns: path, and any of {', '.join(METADATA_COLUMNS)})")
        raw = str(row["path"])
        uri = raw if is_url(raw) else str((path.parent / raw).resolve())
        table[uri] = {name: (None if row.get(name) in (None, "") else str(row[name])) for name in METADATA_COLUMNS}
    return table


def metadata_sha256(metadata: Metadata | None) -> str | None:
    if metadata is None:
        return None
    return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:16]


def _read_rows(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise W2VError(f"{path}: metadata file not found")
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise W2VError(f"{path}:{number}: not a JSON object ({error.msg})") from error
        return rows
    if path.suffix.lower() in {".csv", ".tsv"}:
        with open(path, newline="") as f:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            return list(csv.DictReader(f, delimiter=delimiter))
    raise W2VError(f"{path}: metadata must be .csv, .tsv or .jsonl")
