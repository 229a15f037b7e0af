"""Workers write the final shards; the commit only adds metadata (and rewrites just what a duplicate touches)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tones import write_tones
from w2v.data.corpus import ShardCorpus
from w2v.prepare import pack, shard_writer
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import commit_run, decode_chunks, plan_run, prepare, shard_layout, utc_now
from w2v.prepare.process import MIN_CHUNKS, SourceTask, plan_chunks
from w2v.prepare.progress import STAGING_NAME, staged_progress, write_plan_record
from w2v.prepare.shard_writer import ChunkWriter, ShardLayout, chunk_is_complete, read_chunk_record
from w2v.quality_filters import QualityThresholds
from w2v.shards import index as index_module
from w2v.shards import sources as sources_module
from w2v.shards.histograms import quality_histograms
from w2v.shards.index import utterance_index
from w2v.shards.manifest import MANIFEST_NAME, Manifest, SourceEntry, read_manifest
from w2v.shards.table import Utterance, read_stream
from w2v.shards.verify import verify
from w2v.storage import Source

RATE = 16_000
# Tones are not speech: these tests are about packing, not about the quality filters.
CONFIG = PrepareConfig(max_seconds=8.0, num_buckets=3, quality=QualityThresholds(None, None, None, None))


def _essence(manifest: Manifest) -> dict[str, object]:
    data = manifest.to_json()
    return {k: v for k, v in data.items() if k not in {"created", "updated", "last_run", "versions"}}


def test_the_commit_takes_the_workers_shards_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tones(tmp_path / "raw", [2.5, 3.0, 4.5, 6.0, 7.5, 2.2, 5.1, 3.3, 6.6, 4.0])
    out = tmp_path / "shards"
    plan = plan_run([str(tmp_path / "raw")], out, CONFIG)
    assert len(plan.chunks) >= MIN_CHUNKS  # few small files: split for the workers, not by size
    decode_chunks(plan, CONFIG, 2, None)
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("b*.arrow")}
    assert written, "the workers wrote no shard"

    def no_audio_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the commit copied audio")

    monkeypatch.setattr(pack, "write_shard", no_audio_copy)
    manifest = commit_run(plan, CONFIG, utc_now())
    assert {s.path: s for s in manifest.shards}.keys() == written.keys()
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("b*.arrow")} == written
    assert verify(out) == []
    assert len(ShardCorpus(out)) == manifest.counts()["utterances"] == 10
    assert manifest.quality_histograms == quality_histograms([out / s.path for s in manifest.shards])
    assert not (out / "_staging").exists()


def test_a_duplicate_is_removed_from_the_shard_its_worker_wrote(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first, *_ = write_tones(raw, [3.0, 4.0, 5.0, 6.0])
    (raw / "zz_copy.wav").write_bytes(first.read_bytes())  # same audio, another chunk
    manifest = prepare([str(raw)], tmp_path / "shards", CONFIG, workers=2)
    duplicate = manifest.sources[str((raw / "zz_copy.wav").resolve())]
    assert duplicate.status == "rejected" and duplicate.reason == "duplicate"
    assert manifest.counts()["utterances"] == 4
    assert verify(tmp_path / "shards") == []
    assert manifest.quality_histograms == quality_histograms([tmp_path / "shards" / s.path for s in manifest.shards])
    sources = {
        r for s in manifest.shards for r in read_stream(tmp_path / "shards" / s.path).column("source").to_pylist()
    }
    assert duplicate.uri not in sources


def test_a_chunk_writer_holds_at_most_its_buffer_and_writes_sorted_single_bucket_shards(tmp_path: Path) -> None:
    layout = ShardLayout(generation=1, edges_seconds=(1.0, 2.0, 4.0, 8.0), shard_bytes=200_000, sample_rate=RATE)
    writer = ChunkWriter(tmp_path, "k" * 20, layout, buffer_bytes=300_000)
    rng = np.random.default_rng(3)
    added = 0
    for number in range(30):
        lengths = rng.integers(RATE, 8 * RATE, size=2)
        rows = [
            Utterance(
                f"s{number}-{k}", rng.integers(-999, 999, n).astype(np.int16), f"/raw/s{number}.wav", 0.0, 0.0, 1.0
            )
            for k, n in enumerate(lengths)
        ]
        entry = SourceEntry(f"/raw/{number}", 1, None, None, None, "kept", utterances=tuple(r.id for r in rows))
        writer.add(entry, rows)
        added += len(rows)
        pending = sum(writer._pending_bytes.values())
        assert pending <= 300_000, f"{pending} bytes held after source {number}"
    writer.finish()
    assert chunk_is_complete(tmp_path, "k" * 20)
    record = read_chunk_record(tmp_path, "k" * 20)
    assert sum(s.rows for s in record.shards) == added and len(record.sources) == 30
    for shard in record.shards:
        lengths = read_stream(tmp_path / shard.path).column("num_samples").to_numpy()
        assert lengths.nbytes and 2 * lengths[:-1].sum() < layout.shard_bytes  # full only with its last row
        assert np.all(np.diff(lengths) >= 0)
        assert set(layout.buckets(lengths).tolist()) == {shard.bucket}
    (tmp_path / record.shards[0].path).unlink()
    assert not chunk_is_complete(tmp_path, "k" * 20)


def test_chunks_are_sized_by_source_bytes_and_keyed_by_layout() -> None:
    tasks = [SourceTask(Source(f"/raw/{n:04d}.wav", 300_000, 1.0)) for n in range(400)]
    config = PrepareConfig(chunk_mb=3.0)
    layout = shard_layout(Manifest(sample_rate=RATE), config)
    chunks = plan_chunks(tasks, config, layout)
    assert len(chunks) == math.ceil(400 * 300_000 / (3 << 20))  # a cut every 3 MiB
    assert all(abs(c.source_bytes - (3 << 20)) <= 300_000 for c in chunks[:-1])  # within a file of 3 MiB
    grown = plan_chunks([*tasks, SourceTask(Source("/raw/9999.wav", 300_000, 1.0))], config, layout)
    assert [c.key for c in grown[:-1]] == [c.key for c in chunks[:-1]]  # what a stopped run staged still counts
    assert [t for c in chunks for t in c.tasks] == tasks
    few = plan_chunks(tasks[:20], config, layout)
    assert len(few) == MIN_CHUNKS  # a small run: evenly, not one more holding what the others left
    assert {len(c.tasks) for c in few} <= {2, 3}
    capped = plan_chunks(tasks, PrepareConfig(chunk_mb=3.0, files_per_chunk=4), layout)
    assert max(len(c.tasks) for c in capped) == 4
    next_generation = ShardLayout(layout.generation + 1, layout.edges_seconds, layout.shard_bytes, RATE)
    assert {c.key for c in plan_chunks(tasks, config, next_generation)}.isdisjoint({c.key for c in chunks})


KILLER = """
import os, signal, sys
from pathlib import Path

import w2v.shards.location as location
from w2v.prepare.config import PrepareConfig
from w2v.quality_filters import QualityThresholds

_write = location.write_buffer_atomic
_calls = []


def write_then_die(data, path):
    _calls.append(path)
    if len(_calls) == 2:  # the second shard of this worker: half of it on disk, then the whole run dies
        Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}").write_bytes(bytes(data)[: len(data) // 2])
        os.killpg(0, signal.SIGKILL)
    return _write(data, path)


location.write_buffer_atomic = write_then_die

if __name__ == "__main__":
    from w2v.prepare.pipeline import prepare

    config = PrepareConfig(max_seconds=8.0, num_buckets=3, quality=QualityThresholds(None, None, None, None))
    prepare([sys.argv[1], sys.argv[2]], Path(sys.argv[3]), config, workers=1)
"""


def test_a_run_killed_while_a_worker_writes_a_shard_leaves_the_last_commit_and_resumes(tmp_path: Path) -> None:
    old = write_tones(tmp_path / "old", [3.0, 5.0, 7.0], seed=1)
    new = write_tones(tmp_path / "new", [2.5, 4.5, 6.5, 3.5, 5.5], seed=2)
    sources = [str(old[0].parent), str(new[0].parent)]
    reference, out = tmp_path / "reference", tmp_path / "out"
    for folder in (reference, out):
        prepare(sources[:1], folder, CONFIG, workers=1)
    committed = (out / MANIFEST_NAME).read_bytes()
    prepare(sources, reference, CONFIG, workers=1)

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = subprocess.run(
        [sys.executable, str(script), *sources, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert (out / MANIFEST_NAME).read_bytes() == committed
    assert verify(out) == []
    assert any(p.name.startswith(".") for p in out.iterdir()), "the killed worker left no half-written shard"

    resumed = prepare(sources, out, CONFIG, workers=1)
    assert _essence(resumed) == _essence(read_manifest(reference))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for shard in resumed.shards:
        assert (out / shard.path).read_bytes() == (reference / shard.path).read_bytes()
    assert json.loads((out / MANIFEST_NAME).read_text())["generation"] == 2
    assert os.listdir(out)  # nothing else to clean: a later run starts from a tidy folder


def test_progress_counts_the_files_of_chunks_still_being_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_writer, "PROGRESS_SECONDS", 0.0)  # a chunk holds thousands of files: tell often
    write_plan_record(tmp_path / STAGING_NAME, files_to_decode=7, chunks=2)
    layout = ShardLayout(generation=1, edges_seconds=(1.0, 8.0), shard_bytes=1 << 20, sample_rate=RATE)
    first, second = ChunkWriter(tmp_path, "a" * 20, layout), ChunkWriter(tmp_path, "b" * 20, layout)
    for number in range(3):
        first.add(SourceEntry(f"/raw/a{number}", 1, None, None, None, "rejected", reason="empty"), [])
    second.add(SourceEntry("/raw/b0", 1, None, None, None, "rejected", reason="empty"), [])
    second.add(SourceEntry("/raw/b1", 1, None, None, None, "rejected", reason="empty"), [])
    assert staged_progress(tmp_path) == (5, 7)  # neither chunk is done
    first.finish()
    assert staged_progress(tmp_path) == (5, 7)  # 3 from the record, 2 from the other's progress
    second.add(SourceEntry("/raw/b2", 1, None, None, None, "rejected", reason="empty"), [])
    second.finish()
    assert staged_progress(tmp_path) == (6, 7)


def test_a_corpus_prepared_from_another_folder_comes_out_in_the_same_order(tmp_path: Path) -> None:
    write_tones(tmp_path / "here" / "raw", [2.5, 3.0, 4.5, 6.0, 7.5, 2.2, 5.1], seed=5)
    shutil.copytree(tmp_path / "here" / "raw", tmp_path / "elsewhere" / "deeper" / "raw")
    here = prepare([str(tmp_path / "here" / "raw")], tmp_path / "a", CONFIG, workers=2)
    there = prepare([str(tmp_path / "elsewhere" / "deeper" / "raw")], tmp_path / "b", CONFIG, workers=2)

    def layout(manifest: Manifest) -> list[tuple[str, int]]:  # shard names without the path-dependent key
        return [(re.sub(r"-[0-9a-f]{8}-", "-", s.path), s.rows) for s in manifest.shards]

    assert layout(here) == layout(there) and len(here.shards) > 1
    assert np.array_equal(ShardCorpus(tmp_path / "a").num_samples, ShardCorpus(tmp_path / "b").num_samples)


def test_a_commit_writes_its_index_and_source_table_as_bounded_files_that_read_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durations = [2.5, 3.0, 4.5, 6.0, 7.5, 2.2, 5.1, 3.3, 6.6, 4.0, 2.8, 3.9]
    write_tones(tmp_path / "raw", durations)
    whole = prepare([str(tmp_path / "raw")], tmp_path / "whole", CONFIG, workers=1)
    with monkeypatch.context() as small:  # the limits of a corpus thousands of times larger
        small.setattr(index_module, "INDEX_FILE_ROWS", 3)
        small.setattr(sources_module, "SOURCE_FILE_ROWS", 5)
        split = prepare([str(tmp_path / "raw")], tmp_path / "split", CONFIG, workers=1)
    assert len(whole.index) == len(whole.source_tables) == 1
    assert [t.rows for t in split.source_tables] == [5, 5, 2]
    assert len(split.index) > 1 and sum(e.rows for e in split.index) == whole.index[0].rows
    chunk_rows = max(len(c.tasks) for c in plan_run([str(tmp_path / "raw")], tmp_path / "x", CONFIG).chunks)
    assert all(e.rows <= max(3, chunk_rows) for e in split.index)  # a chunk's rows are never split
    assert verify(tmp_path / "split") == []
    assert dict(split.sources).keys() == dict(whole.sources).keys()
    for uri, entry in whole.sources.items():
        assert split.sources[uri].utterances == entry.utterances
    index = [
        utterance_index(tmp_path / folder, [s.path for s in manifest.shards], manifest.index)
        for folder, manifest in (("whole", whole), ("split", split))
    ]
    for column in ("num_samples", "source_position", "mean", "std", "batch", "row"):
        assert np.array_equal(getattr(index[0], column), getattr(index[1], column)), column
