"""The room the caches of a node share: what is on disk is counted from the folder, each shard once at its
manifest size (whole or on its way), and a transfer begins only when it fits."""

from __future__ import annotations

from pathlib import Path

from w2v.data.node_room import ROOM_LOCK, NodeRoom


def _room(tmp_path: Path, limit: int) -> tuple[NodeRoom, list[Path]]:
    shards = [tmp_path / f"s{k}.arrow" for k in range(4)]
    return NodeRoom.over([(local, 100) for local in shards], limit), shards


def test_the_disk_counts_each_shard_once_at_its_manifest_size_whole_or_arriving(tmp_path: Path) -> None:
    room, shards = _room(tmp_path, 300)
    assert room.on_disk() == 0 and room.lock == tmp_path / ROOM_LOCK
    shards[0].write_bytes(b"x" * 100)
    (tmp_path / "s1.arrow.part").write_bytes(b"x" * 10)  # a transfer under way counts whole
    shards[2].write_bytes(b"x" * 100)
    (tmp_path / "s2.arrow.part").touch()  # fetched again (damaged): still one shard
    (tmp_path / "other.arrow").write_bytes(b"x" * 100)  # not the room's
    assert room.on_disk() == 300


def test_a_transfer_begins_only_when_it_fits_and_then_counts(tmp_path: Path) -> None:
    room, shards = _room(tmp_path, 200)
    assert room.reserve(shards[0], 200) and (tmp_path / "s0.arrow.part").is_file()
    assert room.reserve(shards[1], 200)
    assert not room.reserve(shards[2], 200) and not (tmp_path / "s2.arrow.part").exists()
    assert room.reserve(shards[2], 300)  # a cache over the limit by its own reservations
    assert room.on_disk() == 300


def test_a_shard_already_counted_is_not_counted_twice(tmp_path: Path) -> None:
    room, shards = _room(tmp_path, 100)
    shards[0].write_bytes(b"x" * 100)  # on disk, found damaged: its new transfer takes no more room
    assert room.reserve(shards[0], 100)
    (tmp_path / "s1.arrow.part").touch()  # an interrupted transfer of this shard, resumed
    assert room.reserve(shards[1], 100)
    assert room.on_disk() == 200
