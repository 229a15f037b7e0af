"""Shard folders of synthetic utterances, written with w2v's own writer, whose samples say who they are.

Utterance k's samples are (k * 7 + t) mod 65521 - 32760 at sample t, so a test can tell from the audio
which window of utterance k a batch row holds (unambiguous for utterances under 65521 samples, about 4 s).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from w2v.audio import mean_std
from w2v.shards.index import shard_index, write_index_files
from w2v.shards.manifest import Manifest, ShardEntry, SourceEntry, write_manifest
from w2v.shards.sources import sources_file_name, write_sources
from w2v.shards.table import Utterance, utterance_table, write_stream_atomic

RATE = 16_000
MODULUS = 65521


def samples_of(k: int, length: int) -> np.ndarray:
    return (((k * 7 + np.arange(length, dtype=np.int64)) % MODULUS) - MODULUS // 2).astype(np.int16)


def window_start(row: np.ndarray, k: int, mean: float, std: float) -> int:
    """Where in utterance k a normalized row starts; fails if the row is not a contiguous window of it."""
    scale = np.sqrt(std * std + 1e-7)
    pcm = np.rint((row.astype(np.float64) * scale + mean) * 32768).astype(np.int64)
    first = int((pcm[0] + MODULUS // 2) % MODULUS)
    assert np.array_equal((pcm + MODULUS // 2) % MODULUS, (first + np.arange(pcm.size)) % MODULUS)
    return (first - 7 * k) % MODULUS


Labels = tuple[str | None, str | None, str | None]  # text, speaker, label


def write_shard_folder(
    folder: Path,
    lengths: list[int],
    rows_per_shard: int = 50,
    labels: Callable[[int], Labels] | None = None,
    audio_of: Callable[[int, int], np.ndarray] = samples_of,
    indexed: bool = False,
) -> Path:
    """Utterances of these lengths (in samples) in shards of `rows_per_shard`, with a manifest; `labels(k)`
    gives utterance k's text, speaker and label columns (none when not given), `audio_of(k, length)` its int16
    samples (by default the ones that say who they are); `indexed` adds the training index prepare writes."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, start in enumerate(range(0, len(lengths), rows_per_shard)):
        rows = []
        for k in range(start, min(start + rows_per_shard, len(lengths))):
            audio = audio_of(k, lengths[k])
            mean, std = mean_std(audio)
            text, speaker, label = labels(k) if labels is not None else (None, None, None)
            rows.append(Utterance(f"utt-{k:06d}", audio, f"synthetic://{k}", 0.0, mean, std, text, speaker, label))
        name = f"b00-g00001-{number:04d}.arrow"
        written = write_stream_atomic(utterance_table(rows), folder / name)
        seconds = sum(r.audio.size for r in rows) / RATE
        entries.append(ShardEntry(name, 0, len(rows), seconds, written.bytes, written.sha256))
    # One source per utterance, as prepare lists them, so that `w2v shards verify` finds the folder whole.
    sources = {
        f"synthetic://{k}": SourceEntry(
            uri=f"synthetic://{k}",
            size=2 * n,
            mtime=0.0,
            etag=None,
            metadata_sha256=None,
            status="kept",
            utterances=(f"utt-{k:06d}",),
            decoded_seconds=n / RATE,
            kept_seconds=n / RATE,
        )
        for k, n in enumerate(lengths)
    }
    table = write_sources(folder, sources_file_name(1), list(sources.values()))
    index = write_index_files(folder, 1, [shard_index(folder, e.path) for e in entries]) if indexed else ()
    manifest = Manifest(sample_rate=RATE, generation=1, shards=tuple(entries), index=index, sources=sources,
                        source_tables=(table,))  # fmt: skip
    write_manifest(folder, manifest)
    return folder
