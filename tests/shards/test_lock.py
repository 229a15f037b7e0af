"""One writer per shard folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from w2v.prepare.pipeline import prepare
from w2v.shards.lock import FolderBusy, exclusive_writer


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.wav").write_bytes(b"")
    with exclusive_writer(tmp_path / "out"), pytest.raises(FolderBusy, match=r"another w2v prepare \(pid \d+\)"):
        prepare([str(tmp_path / "raw")], tmp_path / "out", workers=1)
    # Released on exit: the same run now goes through.
    manifest = prepare([str(tmp_path / "raw")], tmp_path / "out", workers=1)
    assert manifest.sources[str((tmp_path / "raw" / "a.wav").resolve())].reason == "empty"
