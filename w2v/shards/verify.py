"""Check a shard folder against its manifest: files, sizes, checksums, schema, row counts, ids."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from w2v.errors import ManifestError, ShardError
from w2v.shards.index import UtteranceIndex, read_index_file, utterance_index
from w2v.shards.manifest import Manifest, read_manifest
from w2v.shards.schema import SCHEMA
from w2v.shards.table import read_stream, sha256_file


def verify(folder: Path) -> list[str]:
    """Every problem found, one line each naming the file; an empty list means the folder is sound."""
    try:
        manifest = read_manifest(folder)
    except ManifestError as error:
        return [str(error)]
    return list(_problems(folder, manifest))


def _problems(folder: Path, manifest: Manifest) -> Iterator[str]:
    seen_ids: set[str] = set()
    all_read = True
    for entry in manifest.shards:
        path = folder / entry.path
        problem = file_problem(path, entry.bytes, entry.sha256)
        if problem is None:
            try:
                table = read_stream(path)
            except (pa.ArrowInvalid, OSError) as error:
                problem = f"{path}: not a readable Arrow stream ({error})"
        if problem is not None:
            all_read = False
            yield problem
            continue
        yield from _table_problems(path, table, entry.rows, entry.seconds, manifest.sample_rate)
        for utterance_id in table.column("id").to_pylist():
            if utterance_id in seen_ids:
                yield f"{path}: utterance id {utterance_id} also appears in another shard"
            seen_ids.add(utterance_id)
    index_sound = yield from _index_file_problems(folder, manifest)
    if all_read and index_sound:
        yield from _index_content_problems(folder, manifest)
    tables_sound = True
    for table_entry in manifest.source_tables:
        problem = file_problem(folder / table_entry.path, table_entry.bytes, table_entry.sha256)
        if problem is not None:
            tables_sound = False
            yield problem
    if not tables_sound:
        return
    try:
        expected = {u for s in manifest.kept_sources for u in s.utterances}
    except ManifestError as error:
        yield str(error)
        return
    if all_read and expected != seen_ids:
        missing = sorted(expected - seen_ids)[:3]
        extra = sorted(seen_ids - expected)[:3]
        yield (
            f"{folder / 'manifest.json'}: sources list {len(expected)} utterances, shards hold {len(seen_ids)} "
            f"(missing e.g. {missing}, unlisted e.g. {extra})"
        )


def _index_file_problems(folder: Path, manifest: Manifest) -> Generator[str, None, bool]:
    """The index files' sizes, checksums, schemas and row counts; returns whether they are all sound."""
    sound = True
    for entry in manifest.index:
        path = folder / entry.path
        problem = file_problem(path, entry.bytes, entry.sha256)
        if problem is None:
            try:
                rows = read_index_file(path).num_rows
                if rows != entry.rows:
                    problem = f"{path}: {rows} rows, manifest says {entry.rows}"
            except ShardError as error:
                problem = str(error)
        if problem is not None:
            sound = False
            yield problem
    return sound


def _index_content_problems(folder: Path, manifest: Manifest) -> Iterator[str]:
    """What the index says of every utterance equals what its shard holds."""
    shards = [s.path for s in manifest.shards]
    indexed, scanned = utterance_index(folder, shards, manifest.index), utterance_index(folder, shards, ())
    for name in UtteranceIndex.__dataclass_fields__:
        if not np.array_equal(getattr(indexed, name), getattr(scanned, name)):
            yield (
                f"{folder}: the index's {name} differs from the shards' ({len(getattr(indexed, name))} indexed "
                f"utterances, {len(getattr(scanned, name))} in the shards); prepare the folder again"
            )


def file_problem(path: Path, expected_bytes: int, expected_sha256: str) -> str | None:
    """One line naming `path` when it is missing, of another size (found without reading it) or of another
    sha256; None when it matches."""
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != expected_bytes:
        return f"{path}: {size} bytes, manifest says {expected_bytes}"
    digest = sha256_file(path)
    if digest != expected_sha256:
        return f"{path}: sha256 {digest[:12]}…, manifest says {expected_sha256[:12]}… (corrupted or replaced)"
    return None


def _table_problems(path: Path, table: pa.Table, rows: int, seconds: float, sample_rate: int) -> Iterator[str]:
    if not table.schema.equals(SCHEMA, check_metadata=False):
        yield f"{path}: schema differs from the shard schema ({table.schema.names})"
        return
    if table.num_rows != rows:
        yield f"{path}: {table.num_rows} rows, manifest says {rows}"
    lengths = table.column("num_samples").to_numpy()
    actual = np.concatenate(
        [np.diff(chunk.offsets.to_numpy()) for chunk in table.column("audio").chunks] or [np.zeros(0)]
    )
    if not np.array_equal(lengths, actual):
        yield f"{path}: num_samples disagrees with the audio column"
    if abs(float(lengths.sum()) / sample_rate - seconds) > 1e-6 * max(1.0, seconds):
        yield f"{path}: holds {lengths.sum() / sample_rate:.3f} s, manifest says {seconds:.3f} s"
    if np.any(np.diff(lengths) < 0):
        yield f"{path}: rows are not sorted by length"
