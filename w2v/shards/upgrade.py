"""Upgrade a version-2 shard folder to version 3 in place, without decoding or rewriting any audio.

Version 2 kept every source's record inline in manifest.json and may lack a training index. The upgrade is a
commit of its own (the next generation): it writes the records as a source table, indexes the shards no
index file covers (reading their small columns), and switches the manifest, last and atomically. A crash
before the switch leaves the version-2 folder as it was; the next prepare or upgrade deletes the leftovers.
"""

from __future__ import annotations

import json
from pathlib import Path

from w2v.errors import ManifestError
from w2v.shards.index import shard_index, write_index_files
from w2v.shards.lock import exclusive_writer
from w2v.shards.manifest import MANIFEST_NAME, Manifest, read_manifest, summary_of, write_manifest
from w2v.shards.schema import VERSION
from w2v.shards.sources import SourceRecords, source_rows, write_source_files


def folder_version(folder: Path) -> int:
    """The format version manifest.json declares (after read_manifest accepted it)."""
    return int(json.loads((Path(folder) / MANIFEST_NAME).read_text())["version"])


def upgrade(folder: Path, now: str) -> tuple[Manifest, bool]:
    """Bring `folder` to the current version; returns its manifest and whether anything was done."""
    folder = Path(folder)
    read_manifest(folder)  # a folder that is not one fails here, before the lock would create it
    with exclusive_writer(folder):
        manifest = read_manifest(folder)
        version = folder_version(folder)
        if version == VERSION:
            return manifest, False
        if version != 2:
            raise ManifestError(f"{folder / MANIFEST_NAME}: version {version} cannot be upgraded; prepare it again")
        generation = manifest.generation + 1
        records = dict(manifest.sources)
        tables = write_source_files(folder, generation, source_rows(records.values()))
        covered = {name for entry in manifest.index for name in entry.shards}
        missing = [s.path for s in manifest.shards if s.path not in covered]
        index = manifest.index
        if missing:
            rows = [shard_index(folder, name) for name in missing]
            index = (*index, *write_index_files(folder, generation, rows))
        upgraded = manifest.with_changes(
            generation=generation,
            index=index,
            sources=SourceRecords(folder, tables),
            source_tables=tables,
            summary=summary_of(manifest),
            last_run={"started": now, "finished": now, "upgraded_from_version": version},
            updated=now,
        )
        upgraded = write_manifest(folder, upgraded)
        return upgraded, True
