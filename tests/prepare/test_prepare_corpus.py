"""prepare-corpus end to end on the espeak-ng corpus: what is kept, what is rejected and why, and how exactly."""

from __future__ import annotations

import json
import subprocess
import wave
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import Prepared
from w2v.shards.reader import open_table
from w2v.shards.schema import SCHEMA

pytestmark = pytest.mark.slow


def _utterances_by_source(prepared: Prepared) -> dict[str, list[dict[str, object]]]:
    rows = open_table(prepared.out).to_pylist()
    grouped: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        grouped[str(row["source"])].append(row)
    for pieces in grouped.values():
        pieces.sort(key=lambda r: float(r["start_seconds"]))  # type: ignore[arg-type]
    return grouped


def _ffmpeg_decode(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """An independent decode + resample: FFmpeg's own decoders, a channel-mean downmix, its soxr resampler."""
    mean = "+".join(f"{1 / channels}*c{i}" for i in range(channels))
    filters = f"pan=mono|c0={mean},aresample={sample_rate}:resampler=soxr"
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-af", filters, "-f", "f32le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32)


def test_every_bad_file_is_quarantined_with_its_reason(prepared: Prepared) -> None:
    rejects = [json.loads(line) for line in (prepared.out / "rejects.jsonl").read_text().splitlines()]
    by_source = {Path(r["source"]).name: r for r in rejects}
    expected = {f.name: f.expect for f in prepared.corpus.files if f.expect != "ok"}
    assert {name: r["reason"] for name, r in by_source.items()} == expected
    for name, row in by_source.items():
        assert name in row["error"] and "\n" not in row["error"]
    assert by_source["pcm16_16k_copy.wav"]["duplicate_of"].startswith("pcm16_16k-")


def test_every_good_file_is_kept(prepared: Prepared) -> None:
    kept = {Path(s.uri).name for s in prepared.manifest.kept_sources}
    assert kept == {f.name for f in prepared.corpus.files if f.expect == "ok"}
    decoders = {Path(s.uri).name: s.decoder for s in prepared.manifest.kept_sources}
    assert decoders["speech.m4a"] == "pyav" and decoders["speech.flac"] == "soundfile"


def test_seconds_kept_dropped_and_rejected_add_up_to_seconds_decoded(prepared: Prepared) -> None:
    manifest = prepared.manifest
    rate = manifest.sample_rate
    for source in manifest.sources.values():
        if source.status == "rejected":
            lost = source.decoded_seconds
        else:
            lost = source.dropped_seconds + source.filtered_seconds
        pieces = max(1, len(source.utterances) + source.dropped_pieces + len(source.filtered))
        assert abs(source.kept_seconds + lost - source.decoded_seconds) <= pieces / rate
    totals = manifest.seconds()
    accounted = totals["kept"] + totals["dropped_short"] + totals["filtered"] + totals["rejected"]
    assert accounted == pytest.approx(totals["decoded"])
    assert totals["in_shards"] == pytest.approx(totals["kept"], abs=1 / rate)
    assert totals["rejected"] > 0  # silence, the short clip and the duplicate were decoded, then rejected


def test_kept_audio_matches_an_independent_decode_and_resample(prepared: Prepared) -> None:
    rate = prepared.manifest.sample_rate
    for uri, pieces in _utterances_by_source(prepared).items():
        reference = _ffmpeg_decode(Path(uri), rate, prepared.manifest.sources[uri].channels or 1)
        for piece in pieces:
            audio = np.asarray(piece["audio"], dtype=np.float32) / 32768
            start = round(float(piece["start_seconds"]) * rate)  # type: ignore[arg-type]
            expected = reference[start : start + audio.shape[0]]
            n = min(expected.shape[0], audio.shape[0])
            assert n >= audio.shape[0] - rate // 100, f"{uri}: lengths differ by more than 10 ms"
            gain = prepared.manifest.sources[uri].gain
            error = audio[:n] - gain * expected[:n]
            snr = 10 * np.log10(np.sum((gain * expected[:n]) ** 2) / max(np.sum(error**2), 1e-20))
            assert snr >= 40, f"{uri} at {piece['start_seconds']} s: SNR {snr:.1f} dB against ffmpeg"


def test_16_bit_16_khz_mono_source_is_stored_bit_exact(prepared: Prepared) -> None:
    path = prepared.corpus.path("pcm16_16k.wav")
    with wave.open(str(path)) as wav:
        original = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    (piece,) = _utterances_by_source(prepared)[str(path.resolve())]
    assert np.array_equal(np.asarray(piece["audio"], dtype=np.int16), original)


def test_long_recording_is_cut_into_pieces_under_the_maximum_at_quiet_frames(prepared: Prepared) -> None:
    path = prepared.corpus.path("long_3min.wav")
    rate = prepared.manifest.sample_rate
    pieces = _utterances_by_source(prepared)[str(path.resolve())]
    lengths = [int(p["num_samples"]) for p in pieces]  # type: ignore[call-overload]
    assert len(pieces) >= 180 / prepared.config.max_seconds
    assert max(lengths) <= prepared.config.max_seconds * rate
    assert sum(lengths) == 180 * rate
    audio = np.concatenate([np.asarray(p["audio"], dtype=np.float64) for p in pieces])
    frame = rate // 40

    def energy(at: int) -> float:
        return float(np.sum(audio[max(0, at - frame // 2) : at + frame // 2] ** 2))

    cuts = np.cumsum(lengths)[:-1]
    even = [round(k * audio.shape[0] / len(pieces)) for k in range(1, len(pieces))]
    # Each cut is at least as quiet as the fixed-offset cut it replaces, and most are far quieter.
    assert all(energy(c) <= energy(e) + 1e-9 for c, e in zip(cuts, even, strict=True))
    assert np.median([energy(c) for c in cuts]) < 0.01 * np.median([energy(e) for e in even])


def test_metadata_columns_are_carried_into_the_shards(prepared: Prepared) -> None:
    rows = {Path(str(r["source"])).name: r for r in open_table(prepared.out).to_pylist()}
    meta = {json.loads(line)["path"]: json.loads(line) for line in prepared.corpus.metadata.read_text().splitlines()}
    row = rows["pcm16_16k.wav"]
    assert row["text"] == meta["pcm16_16k.wav"]["text"] and row["speaker"] == meta["pcm16_16k.wav"]["speaker"]
    long_rows = [r for r in open_table(prepared.out).to_pylist() if str(r["source"]).endswith("long_3min.wav")]
    assert all(r["text"] is None and r["speaker"] == "mixed" for r in long_rows)


def test_shards_open_with_datasets_and_a_pyarrow_memory_map(prepared: Prepared) -> None:
    total = 0
    for shard in prepared.manifest.shards:
        path = prepared.out / shard.path
        dataset = datasets.Dataset.from_file(str(path))
        assert dataset.num_rows == shard.rows
        assert set(SCHEMA.names) <= set(dataset.column_names)
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        assert table.schema.equals(SCHEMA, check_metadata=False)
        audio = table.column("audio").chunk(0).values
        assert audio.type == pa.int16()
        total += table.num_rows
    assert total == prepared.manifest.counts()["utterances"]


def test_each_shard_holds_one_bucket_sorted_by_length(prepared: Prepared) -> None:
    edges = prepared.manifest.bucket_edges_seconds
    rate = prepared.manifest.sample_rate
    assert len(edges) >= 3 and list(edges) == sorted(edges)
    for shard in prepared.manifest.shards:
        table = pa.ipc.open_stream(pa.memory_map(str(prepared.out / shard.path))).read_all()
        seconds = table.column("num_samples").to_numpy() / rate
        assert np.all(np.diff(seconds) >= 0)
        low = edges[shard.bucket] if shard.bucket > 0 else 0.0
        assert np.all(seconds > low - 1e-9) and np.all(seconds <= edges[shard.bucket + 1] + 1e-9)
