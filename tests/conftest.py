"""Shared fixtures: the espeak-ng corpus (built once per session) and one prepared shard folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.corpus import CorpusFile, build_corpus
from w2v.prepare.config import PrepareConfig
from w2v.prepare.pipeline import prepare
from w2v.shards.manifest import Manifest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


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
