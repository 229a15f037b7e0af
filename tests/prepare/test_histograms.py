"""The manifest's quality histograms follow the change: a commit adds the new rows' counts and subtracts the
removed ones', and always equals a count over every shard; a run with nothing new reads no shard for them, and
a changed source costs a read of only the shards that held it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from tests.conftest import Corpus
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.shards.histograms import quality_histograms
from w2v.shards.location import Location
from w2v.shards.manifest import MANIFEST_NAME, Manifest
from w2v.shards.table import read_stream

CONFIG = PrepareConfig(files_per_chunk=2, max_seconds=6.0)


def _counted_from_every_shard(out: Path, manifest: Manifest) -> dict[str, object]:
    return quality_histograms([out / s.path for s in manifest.shards])


def test_histograms_after_adding_changing_and_nothing_equal_a_count_over_every_shard(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "shards"
    raw.mkdir()
    for name in ("pcm16_16k.wav", "speech.flac"):
        shutil.copy(corpus.path(name), raw / name)
    first = prepare([str(raw)], out, CONFIG, workers=1)
    assert first.quality_histograms == _counted_from_every_shard(out, first)

    for name in ("speech.ogg", "long_3min.wav"):  # the long one is cut into many pieces, in several buckets
        shutil.copy(corpus.path(name), raw / name)
    grown = prepare([str(raw)], out, CONFIG, workers=1)
    assert grown.quality_histograms == _counted_from_every_shard(out, grown)
    assert grown.quality_histograms["snr_db"]["measured"] > first.quality_histograms["snr_db"]["measured"]

    reads: list[str] = []
    real = Location.read_stream

    def counted(folder: Location, name: str) -> pa.Table:
        reads.append(name)
        return real(folder, name)

    monkeypatch.setattr(Location, "read_stream", counted)  # how a commit reads a shard
    holding = {s.path for s in grown.shards if "long_3min" in str(read_stream(out / s.path).column("source"))}
    assert 0 < len(holding) < len(grown.shards)
    audio, rate = sf.read(raw / "long_3min.wav", dtype="float32")  # changed: its old rows are removed
    sf.write(raw / "long_3min.wav", audio[: len(audio) // 2] * np.float32(0.5), rate)
    changed = prepare([str(raw)], out, CONFIG, workers=1)
    assert changed.last_run["files_decoded"] == 1
    assert changed.quality_histograms == _counted_from_every_shard(out, changed)
    assert changed.quality_histograms != grown.quality_histograms
    assert sorted(reads) == sorted(holding)  # the index says which shards held it: no other is read

    reads.clear()
    again = prepare([str(raw)], out, CONFIG, workers=1)
    assert again.last_run["files_decoded"] == 0 and reads == []
    assert again.quality_histograms == changed.quality_histograms


def test_histograms_on_other_bins_are_counted_again_from_every_shard(corpus: Corpus, tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "shards"
    raw.mkdir()
    shutil.copy(corpus.path("pcm16_16k.wav"), raw / "a.wav")
    prepare([str(raw)], out, CONFIG, workers=1)
    document = json.loads((out / MANIFEST_NAME).read_text())
    document["quality_histograms"]["snr_db"] = {"edges": [0.0, 50.0], "counts": [1], "measured": 1}  # an old version's
    (out / MANIFEST_NAME).write_text(json.dumps(document))
    shutil.copy(corpus.path("speech.flac"), raw / "b.flac")
    grown = prepare([str(raw)], out, CONFIG, workers=1)
    assert grown.quality_histograms == _counted_from_every_shard(out, grown)
