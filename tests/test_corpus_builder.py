"""Checks that tests/corpus.py builds the corpus it promises: names, formats, durations, broken files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from tests.corpus import CORPUS_NAMES, LONG_SECONDS, REJECT_REASONS, CorpusFile, build_corpus

# name -> (format, subtype, samplerate, channels) as soundfile.info reports them
CLAIMED: dict[str, tuple[str, str, int, int]] = {
    "mulaw_8k.wav": ("WAV", "ULAW", 8000, 1),
    "pcm16_16k.wav": ("WAV", "PCM_16", 16000, 1),
    "pcm24_48k_stereo.wav": ("WAV", "PCM_24", 48000, 2),
    "float32_44k.wav": ("WAV", "FLOAT", 44100, 1),
    "speech.flac": ("FLAC", "PCM_16", 22050, 1),
    "speech.mp3": ("MP3", "MPEG_LAYER_III", 44100, 1),
    "speech.ogg": ("OGG", "VORBIS", 32000, 1),
    "speech.opus": ("OGG", "OPUS", 48000, 1),
    "nans.wav": ("WAV", "FLOAT", 16000, 1),
    "silent.wav": ("WAV", "PCM_16", 16000, 1),
    "long_3min.wav": ("WAV", "PCM_16", 16000, 1),
    "short_0p5s.wav": ("WAV", "PCM_16", 16000, 1),
}
SPEECH = [n for n in CLAIMED if n not in ("nans.wav", "silent.wav", "long_3min.wav", "short_0p5s.wav")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusFile]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def test_every_file_exists_with_claimed_format(built: tuple[Path, list[CorpusFile]]) -> None:
    root, files = built
    assert [f.name for f in files] == list(CORPUS_NAMES)
    for f in files:
        assert f.path == root / f.name and f.path.is_file(), f.name
        assert f.expect == "ok" or f.expect in REJECT_REASONS, f
    expect = {f.name: f.expect for f in files}
    assert expect["empty.wav"] == "empty" and (root / "empty.wav").stat().st_size == 0
    assert expect["truncated.flac"] == expect["notaudio.wav"] == "decode_error"
    assert expect["short_0p5s.wav"] == "too_short"
    assert expect["pcm16_16k_copy.wav"] == "duplicate"
    assert (root / "pcm16_16k_copy.wav").read_bytes() == (root / "pcm16_16k.wav").read_bytes()

    for name, claimed in CLAIMED.items():
        info = sf.info(str(root / name))
        assert (info.format, info.subtype, info.samplerate, info.channels) == claimed, name
    for name in SPEECH:
        assert 3.0 <= sf.info(str(root / name)).duration <= 6.0, name

    with av.open(str(root / "speech.m4a")) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        decoded = sum(frame.samples for frame in container.decode(stream))
    assert 3.0 <= decoded / stream.rate <= 6.5

    with pytest.raises(sf.LibsndfileError):
        sf.info(str(root / "notaudio.wav"))


def test_each_file_holds_the_audio_its_name_promises(built: tuple[Path, list[CorpusFile]]) -> None:
    root, _ = built
    long, rate = sf.read(root / "long_3min.wav", dtype="float32")
    assert abs(len(long) / rate - LONG_SECONDS) <= 1.0
    frames = long[: len(long) // 320 * 320].reshape(-1, 320)
    level_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    assert 0.5 < np.mean(level_db > -40) < 0.95  # mostly speech, with pauses
    assert -66 < np.median(level_db[level_db < -50]) < -54  # pauses are ~-60 dBFS noise, not digital zero

    short, rate = sf.read(root / "short_0p5s.wav", dtype="float32")
    assert len(short) == rate // 2 and np.sqrt(np.mean(short**2)) > 0.01

    nans, _ = sf.read(root / "nans.wav", dtype="float32")
    assert len(nans) == 32000 and np.isnan(nans).all()
    silent, _ = sf.read(root / "silent.wav", dtype="int16")
    assert len(silent) == 48000 and not silent.any()

    stereo, _ = sf.read(root / "pcm24_48k_stereo.wav", dtype="float32")
    assert not np.allclose(stereo[:, 0], stereo[:, 1], atol=1e-3)
    peak = float(np.max(np.abs(sf.read(root / "float32_44k.wav", dtype="float32")[0])))
    assert peak == pytest.approx(0.8, abs=1e-3)


def test_truncated_flac_is_broken(built: tuple[Path, list[CorpusFile]]) -> None:
    root, _ = built
    path = root / "truncated.flac"
    header_frames = sf.info(str(path)).frames
    assert header_frames >= 4 * 16000  # the header still describes the whole ~5 s recording
    try:
        data, _ = sf.read(path, dtype="float32")
    except (sf.LibsndfileError, RuntimeError):
        return
    assert len(data) < header_frames


def test_metadata_lists_every_good_file_with_a_unique_text_and_a_speaker(built: tuple[Path, list[CorpusFile]]) -> None:
    root, files = built
    lines = (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["path"] for r in rows] == [f.name for f in files if f.expect == "ok"]
    for row in rows:
        assert set(row) == {"path", "text", "speaker"} and row["speaker"]
        assert (row["text"] is None) == (row["path"] == "long_3min.wav")
        assert row["text"] is None or len(row["text"].split()) >= 5
    assert len({r["text"] for r in rows}) == len(rows)
    assert len({r["speaker"] for r in rows}) >= 5


def test_build_is_deterministic(built: tuple[Path, list[CorpusFile]], tmp_path: Path) -> None:
    root, _ = built
    build_corpus(tmp_path)
    for name in (*CORPUS_NAMES, "metadata.jsonl"):
        first = hashlib.sha256((root / name).read_bytes()).hexdigest()
        second = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert first == second, name
