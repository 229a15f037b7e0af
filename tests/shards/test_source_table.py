"""Per-source records live in Parquet source tables, one per generation; manifest.json keeps summaries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tones import write_tones
from w2v.data.corpus import ShardCorpus
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.quality_filters import QualityThresholds
from w2v.shards.manifest import MANIFEST_NAME, Manifest, SourceEntry, read_manifest, sources_summary
from w2v.shards.sources import FINGERPRINT_COLUMNS, SourceRecords, read_sources, source_rows, table_summary
from w2v.shards.verify import verify

FIXTURE = Path(__file__).parent.parent / "fixtures" / "v2_folder"
# The fixture's settings (tests/fixtures/README.md): a folder takes only files decoded the same way.
V2_CONFIG = PrepareConfig(
    sample_rate=8000, min_seconds=1.0, max_seconds=4.0, num_buckets=2, quality=QualityThresholds(None, None, None, None)
)


def test_manifest_json_keeps_summaries_and_the_source_table_every_record(tmp_path: Path) -> None:
    write_tones(tmp_path / "raw", [1.5, 2.0, 2.5, 3.0, 0.3], seed=1, rate=8000)
    (tmp_path / "raw" / "broken.wav").write_bytes(b"RIFF....WAVE")
    committed = prepare([str(tmp_path / "raw")], tmp_path / "out", V2_CONFIG, workers=1)
    data = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert data["version"] == 3 and "sources" not in data
    assert [t["path"] for t in data["source_tables"]] == ["sources-g00001.parquet"]

    reread = read_manifest(tmp_path / "out")
    assert dict(reread.sources) == dict(committed.sources) and len(reread.sources) == 6
    assert reread.counts() == committed.counts() == data["counts"]
    assert reread.counts()["rejected"] == {"decode_error": 1, "too_short": 1}
    assert reread.seconds() == committed.seconds()
    assert verify(tmp_path / "out") == []


def test_a_nightly_run_adds_a_table_of_what_it_decided_and_a_uris_latest_row_holds(tmp_path: Path) -> None:
    first = write_tones(tmp_path / "raw", [1.5, 2.0, 2.5], seed=2, rate=8000)
    out = tmp_path / "out"
    before = prepare([str(tmp_path / "raw")], out, V2_CONFIG, workers=1)
    write_tones(tmp_path / "raw", [3.5], seed=3, rate=8000)
    sf.write(first[0], np.zeros(8000 * 2, np.float32) + np.float32(0.2) * np.sin(np.arange(16000)), 8000)
    after = prepare([str(tmp_path / "raw")], out, V2_CONFIG, workers=1)

    assert [t.path for t in after.source_tables] == ["sources-g00001.parquet", "sources-g00002.parquet"]
    assert after.source_tables[1].rows == 2  # the changed file and the new one: not the whole corpus
    changed = str(first[0].resolve())
    assert after.sources[changed].audio_sha256 != before.sources[changed].audio_sha256
    assert read_manifest(out).sources[changed] == after.sources[changed]
    fingerprints = read_sources(out, after.source_tables, FINGERPRINT_COLUMNS)
    assert fingerprints.column_names == list(FINGERPRINT_COLUMNS) and fingerprints.num_rows == 4
    assert verify(out) == []

    again = prepare([str(tmp_path / "raw")], out, V2_CONFIG, workers=1)  # nothing new: no table added
    assert again.source_tables == after.source_tables


def test_a_nightly_commit_reads_only_the_records_it_changes_and_keeps_the_summary_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    first = write_tones(raw, [1.5, 2.0, 2.5, 3.0, 0.4], seed=6, rate=8000)
    (raw / "broken.wav").write_bytes(b"RIFF....WAVE")
    prepare([str(raw)], out, V2_CONFIG, workers=1)

    def whole_table(self: SourceRecords) -> None:
        raise AssertionError("the whole source table was read")

    monkeypatch.setattr(SourceRecords, "_entries", whole_table)
    write_tones(raw, [2.2, 0.3], seed=7, rate=8000)  # one kept, one too short
    (raw / "copy.wav").write_bytes(first[1].read_bytes())  # a duplicate of a kept file
    sf.write(first[0], np.zeros(8000 * 2, np.float32), 8000)  # kept before, now digitally silent
    (raw / "broken.wav").unlink()  # no longer listed: its record stays
    (raw / "fixed.wav").write_bytes(first[2].read_bytes()[:-8000])  # a new file
    grown = prepare([str(raw)], out, V2_CONFIG, workers=1)
    summary = grown.to_json()
    monkeypatch.undo()

    recount = Manifest(sample_rate=8000, sources=dict(read_manifest(out).sources), shards=grown.shards)
    assert summary["counts"] == recount.counts()
    assert summary["seconds"] == pytest.approx(recount.seconds())
    assert summary["seconds_removed_by_reason"] == pytest.approx(recount.seconds_removed_by_reason())
    assert summary["counts"]["rejected"] == {"decode_error": 1, "duplicate": 1, "silent": 1, "too_short": 2}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["decode_error", "duplicate", "silent", "too_short", "too_short"]
    assert verify(out) == []


def test_a_damaged_source_table_is_reported_by_verify(tmp_path: Path) -> None:
    write_tones(tmp_path / "raw", [1.5, 2.0], seed=4, rate=8000)
    manifest = prepare([str(tmp_path / "raw")], tmp_path / "out", V2_CONFIG, workers=1)
    table = tmp_path / "out" / manifest.source_tables[0].path
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    (problem,) = verify(tmp_path / "out")
    assert str(table) in problem and "sha256" in problem


def test_a_version_2_folder_reads_as_it_is_and_the_next_prepare_makes_it_version_3(tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    shutil.copytree(FIXTURE, folder)
    old = read_manifest(folder)
    assert json.loads((folder / MANIFEST_NAME).read_text())["version"] == 2
    assert len(old.sources) == 4 and old.counts()["utterances"] == 3
    assert verify(folder) == [] and len(ShardCorpus(folder)) == 3
    shard_bytes = {s.path: (folder / s.path).read_bytes() for s in old.shards}

    write_tones(tmp_path / "raw", [1.5, 3.5], seed=5, rate=8000)
    grown = prepare([str(tmp_path / "raw")], folder, V2_CONFIG, workers=1)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert data["version"] == 3 and "sources" not in data
    reread = read_manifest(folder)
    assert set(reread.sources) == set(old.sources) | {str(p.resolve()) for p in (tmp_path / "raw").iterdir()}
    assert all(reread.sources[uri] == entry for uri, entry in old.sources.items())
    assert reread.counts()["utterances"] == 5 and grown.counts() == reread.counts()
    assert all((folder / path).read_bytes() == data for path, data in shard_bytes.items())  # no audio rewritten
    assert reread.bucket_edges_seconds == old.bucket_edges_seconds
    assert verify(folder) == [] and len(ShardCorpus(folder)) == 5
    assert "broken.wav" in (folder / "rejects.jsonl").read_text()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["kept", "rejected"]),
            st.sampled_from([None, "too_short", "silent", "duplicate"]),
            st.floats(0, 100, allow_nan=False),
            st.integers(0, 3),
            st.lists(st.tuples(st.sampled_from(["low_snr", "clipping"]), st.floats(0, 10)), max_size=3),
        ),
        max_size=30,
    )
)
def test_the_summary_of_source_rows_equals_the_summary_of_their_records(
    rows: list[tuple[str, str | None, float, int, list[tuple[str, float]]]],
) -> None:
    entries = [
        SourceEntry(
            uri=f"/raw/{n:03d}.wav",
            size=1,
            mtime=None,
            etag=None,
            metadata_sha256=None,
            status=status,
            reason=reason if status == "rejected" else None,
            decoded_seconds=seconds,
            kept_seconds=seconds / 2 if status == "kept" else 0.0,
            dropped_seconds=0.5 * dropped,
            dropped_pieces=dropped,
            filtered=tuple({"id": f"u{n}-{k}", "reason": r, "seconds": s} for k, (r, s) in enumerate(pieces)),
            filtered_seconds=sum(s for _, s in pieces),
        )
        for n, (status, reason, seconds, dropped, pieces) in enumerate(rows)
    ]
    expected, found = sources_summary(entries), table_summary(source_rows(entries))
    assert found["counts"] == expected["counts"]
    assert found["seconds"] == pytest.approx(expected["seconds"])
    assert found["seconds_removed_by_reason"] == pytest.approx(expected["seconds_removed_by_reason"])
