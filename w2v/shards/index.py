"""The training index of a shard folder: per utterance, what the batch planner and the loader need before any
audio is read (its shard and place there, its length and normalization, where its recording falls in the
held-out split), as Arrow columns mapped from disk.

Each commit writes one index file (`index-gGGGGG.arrow`, Arrow IPC file format, uncompressed) for the shards
it wrote, so a nightly run adds a file instead of rewriting one; the manifest lists the index files with
their size, sha256 and the shards each covers. `ShardCorpus` opens a folder by mapping them: no Python per
row, no shard opened. Shards that no index file covers (folders written before the index existed) are read
as before, one shard at a time, and give the same arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from w2v.errors import ShardError
from w2v.shards.location import Location
from w2v.shards.manifest import IndexEntry
from w2v.shards.schema import ROWS_PER_BATCH

INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.dictionary(pa.int32(), pa.string()), nullable=False),  # the shard file's name
        pa.field("position", pa.int32(), nullable=False),  # row number in the shard
        pa.field("batch", pa.int32(), nullable=False),  # the shard's record batch holding it
        pa.field("row", pa.int32(), nullable=False),  # its row in that batch
        pa.field("num_samples", pa.int32(), nullable=False),
        pa.field("mean", pa.float32(), nullable=False),
        pa.field("std", pa.float32(), nullable=False),
        pa.field("source_position", pa.float64(), nullable=False),  # in [0, 1): see split_position
    ]
)


@dataclass(frozen=True)
class UtteranceIndex:
    """Per utterance of a folder, in manifest shard order then row order (numpy arrays of equal length)."""

    shard: np.ndarray  # int32: number of the shard in the manifest's list
    batch: np.ndarray  # int32
    row: np.ndarray  # int32
    num_samples: np.ndarray  # int64
    mean: np.ndarray  # float32
    std: np.ndarray  # float32
    source_position: np.ndarray  # float64


# Rows per index file (36 bytes each: about 600 MB): a commit that indexes more writes several files.
INDEX_FILE_ROWS = 1 << 24


def index_file_name(generation: int, part: int = 0) -> str:
    return f"index-g{generation:05d}{f'-p{part:04d}' if part else ''}.arrow"


def split_key(source: str) -> str:
    """What the held-out split hashes of a source URI: its last two path parts ("episode12/seg_0001.wav").

    Not the whole URI: the same recordings prepared from another folder, disk or bucket split the same way.
    The parent folder keeps recordings of the same name in different folders apart."""
    path = source.split("://", 1)[-1].split("?", 1)[0].rstrip("/")
    return "/".join(path.split("/")[-2:])


def split_position(source: str) -> float:
    """Where a recording falls in [0, 1) for the held-out split: a stable hash of its split_key."""
    return int.from_bytes(hashlib.sha256(split_key(source).encode()).digest()[:8], "big") / 2.0**64


def shard_index(folder: Path | Location, shard: str) -> pa.Table:
    """The index rows of one shard file, read from its small columns (one hash per distinct source).
    Raises ShardError when the file cannot be read as a shard."""
    place = Location.of(folder)
    try:
        table = place.read_stream(shard)
    except (OSError, pa.ArrowInvalid) as error:
        raise ShardError(f"{place.url(shard)}: cannot be read as a shard ({error}); run w2v shards verify") from error
    return table_index(table, shard)


def table_index(table: pa.Table, shard: str) -> pa.Table:
    """The index rows of a shard's table under the shard file name `shard`: the table as read, or as about to
    be written (each of its chunks becomes record batches of at most ROWS_PER_BATCH rows)."""
    lengths = [len(chunk) for chunk in table.column("audio").chunks]
    chunk_rows = [min(ROWS_PER_BATCH, n - start) for n in lengths for start in range(0, n, ROWS_PER_BATCH)]
    batch = np.repeat(np.arange(len(chunk_rows), dtype=np.int32), chunk_rows)
    row = np.concatenate([np.arange(n, dtype=np.int32) for n in chunk_rows] or [np.zeros(0, np.int32)])
    sources = table.column("source").combine_chunks().dictionary_encode()
    positions = np.array([split_position(s) for s in sources.dictionary.to_pylist()], dtype=np.float64)
    source_position = positions[sources.indices.to_numpy(zero_copy_only=False)] if len(table) else positions[:0]
    names = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(table), np.int32)), pa.array([shard]))
    columns = [
        names,
        pa.array(np.arange(len(table), dtype=np.int32)),
        pa.array(batch),
        pa.array(row),
        table.column("num_samples").combine_chunks(),
        table.column("mean").combine_chunks(),
        table.column("std").combine_chunks(),
        pa.array(source_position),
    ]
    return pa.Table.from_arrays(columns, schema=INDEX_SCHEMA)


def write_index(folder: Path | Location, name: str, tables: Sequence[pa.Table]) -> IndexEntry:
    """Write the index rows `tables` (from shard_index) as one index file `name` in `folder`, atomically."""
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks() if tables else INDEX_SCHEMA.empty_table()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    Location.of(folder).write_bytes(name, data)
    shards = tuple(dict.fromkeys(table.column("shard").combine_chunks().dictionary.to_pylist())) if tables else ()
    return IndexEntry(name, table.num_rows, len(data), hashlib.sha256(data).hexdigest(), shards)


def write_index_files(folder: Path | Location, generation: int, tables: Sequence[pa.Table]) -> tuple[IndexEntry, ...]:
    """Write the index rows `tables` (each holding whole shards: one shard's rows, or one chunk's) as the
    generation's index files, starting a new file before one would pass INDEX_FILE_ROWS rows: no metadata
    file grows with the corpus, and a shard's rows stay in one file."""
    parts: list[list[pa.Table]] = [[]]
    rows = 0
    for table in tables:
        if not table.num_rows:
            continue
        if rows and rows + table.num_rows > INDEX_FILE_ROWS:
            parts.append([])
            rows = 0
        parts[-1].append(table)
        rows += table.num_rows
    return tuple(write_index(folder, index_file_name(generation, k), part) for k, part in enumerate(parts) if part)


def read_index_file(path: Path) -> pa.Table:
    """A local index file, memory-mapped. Raises ShardError when it cannot be read as one."""
    return read_index(path.parent, path.name)


def read_index(folder: Path | Location, name: str) -> pa.Table:
    """The index file `name` of a folder (mapped from a local disk). Raises ShardError when it is not one."""
    place = Location.of(folder)
    path = place.url(name)
    try:
        table = place.read_ipc_file(name)
    except (OSError, pa.ArrowInvalid) as error:
        raise ShardError(f"{path}: cannot be read as an index file ({error}); run w2v shards verify") from error
    if not table.schema.equals(INDEX_SCHEMA):
        raise ShardError(f"{path}: not a w2v index file (schema {table.schema.names}); run w2v shards verify")
    return table


def utterance_index(
    folder: Path | Location,
    shards: Sequence[str],
    index: Sequence[IndexEntry],
    rows: Mapping[str, pa.Table] | None = None,
) -> UtteranceIndex:
    """The index of every utterance of the shards `shards` (the manifest's, in its order): mapped from the
    `index` files where they cover a shard, read from the shard itself where none does (or taken from
    `rows`, shard name -> its index rows, for shards a caller has already read)."""
    numbers = {name: number for number, name in enumerate(shards)}
    covered = {name for entry in index for name in entry.shards if name in numbers}
    at_hand = rows or {}
    tables = [read_index(folder, entry.path) for entry in index if numbers.keys() & set(entry.shards)]
    tables += [
        at_hand[name] if name in at_hand else shard_index(folder, name) for name in shards if name not in covered
    ]
    table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()  # each chunk keeps its dictionary
    # Each chunk's dictionary names few shards: map those names to manifest numbers, then index by the codes.
    shard_numbers = []
    for chunk in table.column("shard").chunks:
        by_code = np.array([numbers.get(name, -1) for name in chunk.dictionary.to_pylist()], dtype=np.int32)
        shard_numbers.append(by_code[chunk.indices.to_numpy(zero_copy_only=False)] if len(chunk) else by_code[:0])
    shard = np.concatenate(shard_numbers) if shard_numbers else np.zeros(0, np.int32)
    position = _numpy(table, "position")
    keep = np.flatnonzero(shard >= 0)  # an index file also covers shards since rewritten
    order = keep[np.lexsort((position[keep], shard[keep]))]
    return UtteranceIndex(
        shard=shard[order],
        batch=_numpy(table, "batch")[order],
        row=_numpy(table, "row")[order],
        num_samples=_numpy(table, "num_samples")[order].astype(np.int64),
        mean=_numpy(table, "mean")[order],
        std=_numpy(table, "std")[order],
        source_position=_numpy(table, "source_position")[order],
    )


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=False)
    return column.to_numpy()
