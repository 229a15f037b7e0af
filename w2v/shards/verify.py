"""Check a shard folder against its manifest: files, sizes, checksums, schema, row counts, ids."""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from w2v.errors import ManifestError, ShardError
from w2v.shards.index import UtteranceIndex, read_index, table_index, utterance_index
from w2v.shards.location import Location
from w2v.shards.manifest import Manifest, read_manifest
from w2v.shards.schema import SCHEMA
from w2v.shards.table import sha256_file

EMPTY = SCHEMA.empty_table()


def verify(folder: Path | Location) -> list[str]:
    """Every problem found, one line each naming the file; an empty list means the folder (local, or at a URL
    given as a Location with its storage options) is sound."""
    place = Location.of(folder)
    try:
        manifest = read_manifest(place)
    except ManifestError as error:
        return [str(error)]
    return list(_problems(place, manifest))


def _problems(folder: Location, manifest: Manifest) -> Iterator[str]:
    seen_ids: set[str] = set()
    scanned: dict[str, pa.Table] = {}  # each shard's index rows, as read: the index is checked against them
    all_read = True
    listed = [file_problem(folder, t.path, t.bytes, t.sha256) for t in manifest.shard_tables]
    if any(listed):  # without its shard list the folder's shards are unknown
        yield from (problem for problem in listed if problem is not None)
        return
    for entry in manifest.shards:
        path = folder.url(entry.path)
        problem, table = _checked_shard(folder, entry.path, entry.bytes, entry.sha256)
        if problem is not None:
            all_read = False
            yield problem
            continue
        yield from _table_problems(path, table, entry.rows, entry.seconds, manifest.sample_rate)
        scanned[entry.path] = table_index(table, entry.path)
        for utterance_id in table.column("id").to_pylist():
            if utterance_id in seen_ids:
                yield f"{path}: utterance id {utterance_id} also appears in another shard"
            seen_ids.add(utterance_id)
    index_sound = yield from _index_file_problems(folder, manifest)
    if all_read and index_sound:
        yield from _index_content_problems(folder, manifest, scanned)
    tables_sound = True
    for table_entry in manifest.source_tables:
        problem = file_problem(folder, table_entry.path, table_entry.bytes, table_entry.sha256)
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
            f"{folder.url('manifest.json')}: sources list {len(expected)} utterances, shards hold {len(seen_ids)} "
            f"(missing e.g. {missing}, unlisted e.g. {extra})"
        )


def _index_file_problems(folder: Location, manifest: Manifest) -> Generator[str, None, bool]:
    """The index files' sizes, checksums, schemas and row counts; returns whether they are all sound."""
    sound = True
    for entry in manifest.index:
        path = folder.url(entry.path)
        problem = file_problem(folder, entry.path, entry.bytes, entry.sha256)
        if problem is None:
            try:
                rows = read_index(folder, entry.path).num_rows
                if rows != entry.rows:
                    problem = f"{path}: {rows} rows, manifest says {entry.rows}"
            except ShardError as error:
                problem = str(error)
        if problem is not None:
            sound = False
            yield problem
    return sound


def _index_content_problems(folder: Location, manifest: Manifest, rows: dict[str, pa.Table]) -> Iterator[str]:
    """What the index says of every utterance equals what its shard holds."""
    shards = [s.path for s in manifest.shards]
    indexed, scanned = utterance_index(folder, shards, manifest.index), utterance_index(folder, shards, (), rows)
    for name in UtteranceIndex.__dataclass_fields__:
        if not np.array_equal(getattr(indexed, name), getattr(scanned, name)):
            yield (
                f"{folder.root}: the index's {name} differs from the shards' ({len(getattr(indexed, name))} indexed "
                f"utterances, {len(getattr(scanned, name))} in the shards); prepare the folder again"
            )


def _checked_shard(
    folder: Location, name: str, expected_bytes: int, expected_sha256: str
) -> tuple[str | None, pa.Table]:
    """A shard checked against its size and sha256, then read: mapped from a local disk, or downloaded once
    from a store (the bytes that were hashed are the ones read)."""
    path = folder.url(name)
    if folder.is_local:
        problem = file_problem(folder, name, expected_bytes, expected_sha256)
        if problem is not None:
            return problem, EMPTY
        try:
            return None, folder.read_stream(name)
        except (pa.ArrowInvalid, OSError) as error:
            return f"{path}: not a readable Arrow stream ({error})", EMPTY
    try:
        data = folder.read_bytes(name)
    except FileNotFoundError:
        return f"{path}: missing", EMPTY
    problem = _content_problem(path, len(data), hashlib.sha256(data).hexdigest(), expected_bytes, expected_sha256)
    if problem is not None:
        return problem, EMPTY
    try:
        return None, pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        return f"{path}: not a readable Arrow stream ({error})", EMPTY


def file_problem(folder: Path | Location, name: str, expected_bytes: int, expected_sha256: str) -> str | None:
    """One line naming the file when it is missing, of another size (found without reading it) or of another
    sha256; None when it matches."""
    place = Location.of(folder)
    path = place.url(name)
    try:
        size = place.size(name)
    except FileNotFoundError:
        return f"{path}: missing"
    if size != expected_bytes:
        return f"{path}: {size} bytes, manifest says {expected_bytes}"
    digest = sha256_file(place.local / name) if place.is_local else hashlib.sha256(place.read_bytes(name)).hexdigest()
    return _content_problem(path, size, digest, expected_bytes, expected_sha256)


def _content_problem(path: str, size: int, digest: str, expected_bytes: int, expected_sha256: str) -> str | None:
    if size != expected_bytes:
        return f"{path}: {size} bytes, manifest says {expected_bytes}"
    if digest != expected_sha256:
        return f"{path}: sha256 {digest[:12]}…, manifest says {expected_sha256[:12]}… (corrupted or replaced)"
    return None


def _table_problems(path: str, table: pa.Table, rows: int, seconds: float, sample_rate: int) -> Iterator[str]:
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
