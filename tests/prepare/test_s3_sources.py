"""Sources on S3, read through s3fs from moto's standalone server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from tests.conftest import Corpus
from tests.servers import S3Server, moto_s3_server
from w2v.listing import list_sources, split_sources
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.shards.reader import open_table
from w2v.shards.verify import verify

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3_server() as server:
        yield server


def test_prepare_reads_an_s3_prefix_and_skips_unchanged_objects_by_etag(
    corpus: Corpus, s3: S3Server, tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir("raw-audio")
    names = ("speech.flac", "speech.mp3", "notaudio.wav", "speech.m4a")
    for name in names:
        fs.put(str(corpus.path(name)), f"raw-audio/corpus/{name}")
    out = tmp_path / "shards"
    config = PrepareConfig(files_per_chunk=2)

    manifest = prepare(["s3://raw-audio/corpus/"], out, config, workers=2, storage_options=s3.storage_options)
    assert set(manifest.sources) == {
        f"s3://raw-audio/corpus/{n}" for n in ("speech.flac", "speech.mp3", "notaudio.wav", "speech.m4a")
    }
    assert all(s.etag for s in manifest.sources.values())
    assert manifest.sources["s3://raw-audio/corpus/notaudio.wav"].reason == "decode_error"
    assert {r["source"] for r in open_table(out).to_pylist()} == {
        "s3://raw-audio/corpus/speech.flac", "s3://raw-audio/corpus/speech.mp3", "s3://raw-audio/corpus/speech.m4a"
    }  # fmt: skip
    assert verify(out) == []

    fs.put(str(corpus.path("speech.ogg")), "raw-audio/corpus/speech.ogg")
    again = prepare(["s3://raw-audio/corpus/"], out, config, workers=2, storage_options=s3.storage_options)
    assert again.last_run["files_decoded"] == 1 and again.last_run["files_unchanged"] == 4


def test_a_prefix_is_listed_in_parts_with_each_objects_etag(s3: S3Server) -> None:
    fs = s3fs.S3FileSystem(**s3.storage_options)  # type: ignore[arg-type]
    fs.mkdir("nested")
    keys = {"top.wav", "notes.txt", *(f"s{s}/c{c}/{k}.flac" for s in range(3) for c in range(2) for k in range(2))}
    for key in keys:
        fs.pipe_file(f"nested/corpus/{key}", key.encode())
    parts = split_sources(["s3://nested/corpus/"], s3.storage_options, parts=6)
    assert len(parts) >= 6 and {p.kind for p in parts} == {"top", "tree"}
    sources = list_sources(["s3://nested/corpus/"], s3.storage_options)
    audio = sorted(k for k in keys if not k.endswith(".txt"))
    assert [s.uri for s in sources] == [f"s3://nested/corpus/{k}" for k in audio]
    assert all(
        s.etag == fs.info(s.uri)["ETag"].strip('"') and s.size == len(s.uri.split("corpus/")[1]) for s in sources
    )
