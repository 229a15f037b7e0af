"""Shared fixtures: the espeak-ng corpus (built once per session) and one prepared shard folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.corpus import CorpusFile, build_corpus, read_speech
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.shards.manifest import Manifest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
QUALITY_RATE = 16_000


@dataclass(frozen=True)
class Corpus:
    root: Path
    files: list[CorpusFile]

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.jsonl"


@dataclass(frozen=True)
class Prepared:
    corpus: Corpus
    out: Path
    manifest: Manifest
    config: PrepareConfig


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Shard caches and verification records of the whole session (and its subprocesses) in a tmp folder,
    never in the user's ~/.cache."""
    os.environ["W2V_CACHE_DIR"] = str(tmp_path_factory.mktemp("w2v-cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    return Corpus(root, build_corpus(root))


@pytest.fixture(scope="session")
def prepared(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    out = tmp_path_factory.mktemp("shards")
    config = PrepareConfig(files_per_chunk=4)
    manifest = prepare([str(corpus.root)], out, config, workers=2, metadata_path=corpus.metadata)
    return Prepared(corpus, out, manifest, config)


@pytest.fixture(scope="session")
def quality_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean speech, and the same speech clipped, offset; plus noise and a tone with no speech at all."""
    root = tmp_path_factory.mktemp("quality-cases")
    pieces = []
    for text, voice in [
        ("The committee will meet again on Thursday to review the budget.", "en-us"),
        ("Please bring the signed forms and a copy of last year's report.", "en-gb"),
    ]:
        audio, rate = read_speech(text, voice)
        pieces += [
            soxr.resample(audio, rate, QUALITY_RATE).astype(np.float32),
            np.zeros(int(0.4 * QUALITY_RATE), np.float32),
        ]
    speech = np.concatenate(pieces) * np.float32(0.5)
    level = 0.3 * float(np.max(np.abs(speech)))
    seconds = np.arange(5 * QUALITY_RATE) / QUALITY_RATE
    signals = {
        "clean.wav": speech,
        "clipped.wav": np.clip(speech, -level, level),
        "dc_offset.wav": speech + np.float32(0.2),
        "noise.wav": np.random.default_rng(0).normal(0, 0.1, 5 * QUALITY_RATE).astype(np.float32),
        "tone.wav": (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32),
    }
    for name, signal in signals.items():
        sf.write(root / name, signal, QUALITY_RATE, subtype="PCM_16")
    return root
