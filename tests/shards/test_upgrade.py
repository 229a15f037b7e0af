"""`w2v shards upgrade`: a version-2 folder becomes version 3 without decoding or rewriting audio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from w2v.data.corpus import ShardCorpus
from w2v.shards.manifest import MANIFEST_NAME, read_manifest
from w2v.shards.upgrade import folder_version, upgrade
from w2v.shards.verify import verify

FIXTURE = Path(__file__).parent.parent / "fixtures" / "v2_folder"


def _corpus_arrays(folder: Path) -> dict[str, np.ndarray]:
    corpus = ShardCorpus(folder)
    arrays = {name: getattr(corpus, name) for name in ("num_samples", "mean", "std", "row", "source_position")}
    arrays["shard"] = np.array([corpus.paths[k].name for k in corpus.shard])
    return arrays


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_an_upgraded_folder_holds_the_same_utterances_records_and_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    shutil.copytree(FIXTURE, folder)
    before, arrays = read_manifest(folder), _corpus_arrays(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MANIFEST_NAME}

    upgraded, changed = upgrade(folder, "2026-12-02T00:00:00+00:00")
    assert changed and folder_version(folder) == 3 and upgraded.last_run["upgraded_from_version"] == 2
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert "sources" not in data and data["generation"] == before.generation + 1
    reread = read_manifest(folder)
    assert dict(reread.sources) == dict(before.sources)
    assert reread.counts() == before.counts() and reread.seconds() == before.seconds()
    assert reread.shards == before.shards and reread.quality_histograms == before.quality_histograms
    assert _same(_corpus_arrays(folder), arrays)
    assert all((folder / name).read_bytes() == content for name, content in files.items())  # nothing rewritten
    assert verify(folder) == []
    assert upgrade(folder, "2026-12-02T00:00:01+00:00") == (reread, False)


def test_a_version_2_folder_without_an_index_gets_one(tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    shutil.copytree(FIXTURE, folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in data.pop("index"):  # as written before the index existed
        (folder / entry["path"]).unlink()
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    arrays = _corpus_arrays(folder)  # read from the shards

    upgraded, changed = upgrade(folder, "2026-12-02T00:00:00+00:00")
    assert changed and [i.path for i in upgraded.index] == ["index-g00002.arrow"]
    assert set(upgraded.index[0].shards) == {s.path for s in upgraded.shards}
    assert _same(_corpus_arrays(folder), arrays)
    assert verify(folder) == []


def test_the_upgrade_command_says_what_it_did(tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    shutil.copytree(FIXTURE, folder)
    command = [sys.executable, "-m", "w2v", "shards", "upgrade", str(folder)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "upgraded from version 2 to 3" in _said(first) and "no audio decoded" in _said(first)
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already version 3" in _said(again)
    missing = subprocess.run([*command[:-1], str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no manifest" in _said(missing)
    assert not (tmp_path / "nothing").exists()


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """What the command printed, as one line (the console wraps long lines)."""
    return " ".join((result.stdout + result.stderr).split())
