"""Part (c) of benchmarks/scale.py (`--shard-list N`): the manifest of a folder of N shards with its shard list
inline as JSON, against columnar shard list files (w2v/shards/shard_list.py): bytes on disk, the time to read
the manifest and its summary, then every shard's entry, each in a fresh process with its peak RSS."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def shard_list(shards: int) -> dict[str, Any]:
    """Part (c): manifest.json with `shards` shards inline, against the same with shard list files."""
    from w2v.shards import shard_list as lists
    from w2v.shards.manifest import Manifest, ShardEntry, write_manifest

    def entry(k: int) -> ShardEntry:
        digest = hashlib.sha256(k.to_bytes(8, "big")).hexdigest()  # checksums do not compress
        return ShardEntry(f"b{k % 8:02d}-g00001-{digest[:12]}-{k:06d}.arrow", k % 8, 1600, 6000.0, 1 << 26, digest)

    entries = tuple(entry(k) for k in range(shards))
    figures: dict[str, Any] = {"shards": shards}
    with tempfile.TemporaryDirectory(prefix="w2v-shard-list-") as tmp:
        for form, inline in (("json", shards + 1), ("columnar", lists.SHARDS_INLINE)):
            folder = Path(tmp) / form
            folder.mkdir()
            lists.SHARDS_INLINE = inline
            written = write_manifest(folder, Manifest(sample_rate=16_000, generation=1, shards=entries))
            metadata = [folder / "manifest.json", *(folder / t.path for t in written.shard_tables)]
            code = (
                "import sys, time; sys.path.insert(0, sys.argv[2]); from benchmarks.memory import own_peak_rss_mb; "
                "from w2v.shards.manifest import read_manifest; t = time.perf_counter(); "
                "m = read_manifest(sys.argv[1]); m.counts(); u = time.perf_counter(); "
                "paths = [s.path for s in m.shards]; "
                "print(u - t, time.perf_counter() - t, own_peak_rss_mb())"
            )
            command = [sys.executable, "-c", code, str(folder), str(Path(__file__).resolve().parents[1])]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            summary_seconds, seconds, rss = map(float, done.stdout.split())
            figures[form] = {
                "bytes": sum(p.stat().st_size for p in metadata),
                "manifest_bytes": metadata[0].stat().st_size,
                "manifest_and_summary_s": round(summary_seconds, 3),
                "every_shard_read_s": round(seconds, 3),
                "reader_peak_rss_mb": round(rss, 1),
            }
    return figures
