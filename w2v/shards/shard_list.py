"""The shard list as a columnar table, once a folder holds more shards than manifest.json should carry.

Up to SHARDS_INLINE shards the manifest lists them inline (about 240 bytes of JSON each). Past that it names
the generation's shard list files instead: Parquet tables of (path, bucket, rows, seconds, bytes, sha256), at
most SHARD_LIST_ROWS rows each. At 10^6 hours (≈ 1.8 M shards) that is ≈ 100 MB of Parquet read a column at a
time, where the JSON would be ≈ 430 MB parsed whole by every reader. The files are immutable and named by
generation; like every other file, they are written before the manifest that names them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import pyarrow as pa
import pyarrow.parquet as pq

from w2v.errors import ManifestError
from w2v.shards.location import Location
from w2v.shards.manifest import FileEntry, ShardEntry

SHARDS_INLINE = 10_000
SHARD_LIST_ROWS = 1 << 22
SHARD_LIST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("bucket", pa.int32()),
        ("rows", pa.int64()),
        ("seconds", pa.float64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


def shard_list_name(generation: int, part: int = 0) -> str:
    return f"shards-g{generation:05d}{f'-p{part:04d}' if part else ''}.parquet"


def write_shard_list(folder: Path | Location, generation: int, shards: Sequence[ShardEntry]) -> tuple[FileEntry, ...]:
    """Write `shards` as the generation's shard list files (at most SHARD_LIST_ROWS rows each), atomically
    each; returns their entries for the manifest."""
    entries = []
    for part, start in enumerate(range(0, len(shards), SHARD_LIST_ROWS)):
        table = shard_table(shards[start : start + SHARD_LIST_ROWS])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        name = shard_list_name(generation, part)
        Location.of(folder).write_bytes(name, data)
        entries.append(FileEntry(name, table.num_rows, len(data), hashlib.sha256(data).hexdigest()))
    return tuple(entries)


def shard_table(shards: Sequence[ShardEntry]) -> pa.Table:
    """`shards` as a SHARD_LIST_SCHEMA table, in order."""
    columns = {name: [getattr(s, name) for s in shards] for name in SHARD_LIST_SCHEMA.names}
    return pa.table(columns, schema=SHARD_LIST_SCHEMA)


def read_shard_list(
    folder: Path | Location, files: Sequence[FileEntry], columns: Sequence[str] | None = None
) -> pa.Table:
    """The shard list files `files` as one table (only `columns`, given them), in the manifest's order. Raises
    ManifestError naming a file that is missing or unreadable (`w2v shards verify` also checks its checksum)."""
    place = Location.of(folder)
    tables = []
    for entry in files:
        try:
            tables.append(place.read_parquet(entry.path, columns=list(columns) if columns else None))
        except (OSError, pa.ArrowInvalid) as error:
            raise ManifestError(
                f"{place.url(entry.path)}: shard list unreadable ({error}); run w2v shards verify"
            ) from error
    schema = SHARD_LIST_SCHEMA if columns is None else pa.schema([SHARD_LIST_SCHEMA.field(n) for n in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()


class ShardList(Sequence[ShardEntry]):
    """A folder's shard list files as a sequence of ShardEntry, read on first use."""

    def __init__(self, folder: Path | Location, files: Sequence[FileEntry]) -> None:
        self.folder = Location.of(folder)
        self.files = tuple(files)
        self._loaded: tuple[ShardEntry, ...] | None = None

    def _entries(self) -> tuple[ShardEntry, ...]:
        if self._loaded is None:
            table = read_shard_list(self.folder, self.files)
            columns = [table.column(name).to_pylist() for name in SHARD_LIST_SCHEMA.names]
            self._loaded = tuple(ShardEntry(*row) for row in zip(*columns, strict=True))
        return self._loaded

    @overload
    def __getitem__(self, position: int) -> ShardEntry: ...

    @overload
    def __getitem__(self, position: slice) -> Sequence[ShardEntry]: ...

    def __getitem__(self, position: int | slice) -> ShardEntry | Sequence[ShardEntry]:
        return self._entries()[position]

    def __iter__(self) -> Iterator[ShardEntry]:
        return iter(self._entries())

    def __len__(self) -> int:
        return sum(entry.rows for entry in self.files)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ShardList) and other.files == self.files:
            return True
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]
