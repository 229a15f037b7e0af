"""A folder with more shards than manifest.json carries inline lists them in columnar shard list files, which
every reader, the next run, verify and remote staging follow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.tones import write_tones
from w2v.data.corpus import ShardCorpus
from w2v.errors import ManifestError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.quality_filters import QualityThresholds
from w2v.shards import shard_list
from w2v.shards.manifest import MANIFEST_NAME, read_manifest
from w2v.shards.verify import verify

CONFIG = PrepareConfig(max_seconds=8.0, num_buckets=3, quality=QualityThresholds(None, None, None, None))
LENGTHS = [2.5, 3.0, 4.5, 6.0, 7.5, 2.2, 5.1, 3.3]


def _audio(folder: Path) -> list[bytes]:
    corpus = ShardCorpus(folder)
    return sorted(np.asarray(corpus.audio(k)).tobytes() for k in range(len(corpus)))


def test_a_folder_past_the_inline_limit_lists_its_shards_in_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tones(tmp_path / "raw", LENGTHS)
    inline = prepare([str(tmp_path / "raw")], tmp_path / "inline", CONFIG, workers=1)
    monkeypatch.setattr(shard_list, "SHARDS_INLINE", 2)
    monkeypatch.setattr(shard_list, "SHARD_LIST_ROWS", 3)  # several parts
    listed = prepare([str(tmp_path / "raw")], tmp_path / "listed", CONFIG, workers=1)
    assert len(listed.shards) > 3

    data = json.loads((tmp_path / "listed" / MANIFEST_NAME).read_text())
    assert "shards" not in data and len(data["shard_tables"]) == -(-len(listed.shards) // 3)
    reread = read_manifest(tmp_path / "listed")
    assert sorted(s.sha256 for s in reread.shards) == sorted(s.sha256 for s in inline.shards)
    assert list(reread.shards) == list(listed.shards)
    assert verify(tmp_path / "listed") == []
    assert _audio(tmp_path / "listed") == _audio(tmp_path / "inline")


def test_the_next_run_writes_a_new_list_and_removes_the_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_list, "SHARDS_INLINE", 2)
    write_tones(tmp_path / "raw", LENGTHS)
    out = tmp_path / "out"
    first = prepare([str(tmp_path / "raw")], out, CONFIG, workers=1)
    write_tones(tmp_path / "raw", [4.4, 6.2], seed=1)  # two new files beside the first eight
    second = prepare([str(tmp_path / "raw")], out, CONFIG, workers=1)
    assert second.generation == first.generation + 1
    assert {t.path for t in first.shard_tables}.isdisjoint({t.path for t in second.shard_tables})
    assert sorted(p.name for p in out.glob("shards-*.parquet")) == sorted(t.path for t in second.shard_tables)
    assert {s.path for s in first.shards} < {s.path for s in read_manifest(out).shards}
    assert verify(out) == [] and len(ShardCorpus(out)) == second.counts()["utterances"]

    monkeypatch.setattr(shard_list, "SHARDS_INLINE", 10_000)  # the folder shrinks back to an inline list
    shutil.rmtree(tmp_path / "raw")
    write_tones(tmp_path / "raw", LENGTHS[:1])
    third = prepare([str(tmp_path / "raw")], out, CONFIG, workers=1)
    assert third.shard_tables == () and not list(out.glob("shards-*.parquet")) and verify(out) == []


def test_a_damaged_shard_list_is_named_by_verify_and_by_a_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_list, "SHARDS_INLINE", 2)
    write_tones(tmp_path / "raw", LENGTHS)
    manifest = prepare([str(tmp_path / "raw")], tmp_path / "out", CONFIG, workers=1)
    table = tmp_path / "out" / manifest.shard_tables[0].path
    table.write_bytes(b"PAR1" + b"\0" * (table.stat().st_size - 4))
    problems = verify(tmp_path / "out")
    assert len(problems) == 1 and problems[0].startswith(f"{table}: ")
    with pytest.raises(ManifestError, match=rf"{table.name}: shard list unreadable"):
        ShardCorpus(tmp_path / "out")
