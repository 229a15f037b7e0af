"""The training index: a corpus opened through it equals one read from its shards, opens no shard, follows
changed sources, and a damaged or wrong index is caught before training and by verify."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

import w2v.data.corpus
import w2v.shards.index
from tests.conftest import Corpus, Prepared
from w2v.data.corpus import ShardCorpus
from w2v.data.integrity import check_local_shards
from w2v.errors import ShardError
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.shards.index import INDEX_SCHEMA, UtteranceIndex, read_index_file, utterance_index, write_index
from w2v.shards.location import Location
from w2v.shards.manifest import MANIFEST_NAME, read_manifest, write_manifest
from w2v.shards.verify import verify

FIELDS = tuple(UtteranceIndex.__dataclass_fields__)


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _arrays(corpus: ShardCorpus) -> dict[str, np.ndarray]:
    return {name: getattr(corpus, name) for name in FIELDS}


def test_a_corpus_opened_through_its_index_equals_one_read_from_its_shards(prepared: Prepared, tmp_path: Path) -> None:
    manifest = read_manifest(prepared.out)
    assert manifest.index and {s for i in manifest.index for s in i.shards} == {s.path for s in manifest.shards}
    older = _copy(prepared.out, tmp_path / "without-index")  # as a version without the index wrote it
    write_manifest(older, dataclasses.replace(read_manifest(older), index=()))
    indexed, scanned = _arrays(ShardCorpus(prepared.out)), _arrays(ShardCorpus(older))
    for name in FIELDS:
        assert indexed[name].dtype == scanned[name].dtype and np.array_equal(indexed[name], scanned[name]), name
    assert len(indexed["num_samples"]) == sum(s.rows for s in manifest.shards)


def test_opening_an_indexed_folder_opens_no_shard(prepared: Prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path | str] = []
    real, real_in_folder = w2v.data.corpus.read_stream, Location.read_stream

    def counted(path: Path) -> pa.Table:
        opened.append(path)
        return real(path)

    def counted_in_folder(folder: Location, name: str) -> pa.Table:
        opened.append(name)
        return real_in_folder(folder, name)

    monkeypatch.setattr(Location, "read_stream", counted_in_folder)  # how the index reads an unindexed shard
    monkeypatch.setattr(w2v.data.corpus, "read_stream", counted)
    corpus = ShardCorpus(prepared.out)
    assert opened == []
    assert corpus.audio(0).size == corpus.num_samples[0]  # the audio is read on demand
    assert len(opened) == 1


def test_the_index_follows_changed_sources_and_keeps_only_files_it_needs(corpus: Corpus, tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "shards"
    raw.mkdir()
    config = PrepareConfig(files_per_chunk=2, max_seconds=6.0)
    for name in ("pcm16_16k.wav", "long_3min.wav"):
        shutil.copy(corpus.path(name), raw / name)
    prepare([str(raw)], out, config, workers=1)
    shutil.copy(corpus.path("speech.flac"), raw / "speech.flac")
    grown = prepare([str(raw)], out, config, workers=1)
    assert [i.path for i in grown.index] == ["index-g00001.arrow", "index-g00002.arrow"]

    audio, rate = sf.read(raw / "long_3min.wav", dtype="float32")  # its shards are rewritten under new names
    sf.write(raw / "long_3min.wav", audio[: len(audio) // 3], rate)
    changed = prepare([str(raw)], out, config, workers=1)
    names = [s.path for s in changed.shards]
    assert np.array_equal(
        ShardCorpus(out).num_samples, utterance_index(out, names, ()).num_samples
    )  # the index, as the shards say
    assert verify(out) == []
    on_disk = {p.name for p in [*out.glob("*.arrow"), *out.glob("*.parquet")]}
    assert on_disk == {f.path for f in changed.files}  # no index file left that the manifest does not name
    covered = {s for i in changed.index for s in i.shards}
    assert set(names) <= covered


def test_a_damaged_index_file_stops_training_before_step_one(prepared: Prepared, tmp_path: Path) -> None:
    folder = _copy(prepared.out, tmp_path / "shards")
    index = folder / read_manifest(folder).index[0].path
    time.sleep(0.05)  # a later timestamp tick than the copy
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{index.name}: sha256 .* run w2v shards verify"):
        check_local_shards(folder, tmp_path / "records")
    assert any(index.name in problem for problem in verify(folder))


def test_verify_finds_an_index_that_disagrees_with_its_shards(prepared: Prepared, tmp_path: Path) -> None:
    folder = _copy(prepared.out, tmp_path / "shards")
    manifest = read_manifest(folder)
    entry = manifest.index[0]
    table = read_index_file(folder / entry.path)
    lengths = table.column("num_samples").to_numpy().copy()
    lengths[0] += 1  # a well-formed index file whose checksum matches the manifest, but wrong
    field = INDEX_SCHEMA.field("num_samples")
    wrong = table.set_column(INDEX_SCHEMA.get_field_index("num_samples"), field, pa.array(lengths, pa.int32()))
    rewritten = write_index(folder, entry.path, [wrong])
    write_manifest(folder, dataclasses.replace(manifest, index=(rewritten, *manifest.index[1:])))
    problems = verify(folder)
    assert any("the index's num_samples differs from the shards'" in p for p in problems), problems


def test_an_index_entry_survives_the_manifests_json(prepared: Prepared) -> None:
    document = json.loads((prepared.out / MANIFEST_NAME).read_text())
    (entry,) = document["index"][:1]
    assert set(entry) == {"path", "rows", "bytes", "sha256", "shards"}
    assert read_manifest(prepared.out).index[0].shards == tuple(entry["shards"])
