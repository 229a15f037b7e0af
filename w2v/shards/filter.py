"""`w2v shards filter`: a filtered copy of a shard folder, from the stored measurements (nothing is decoded).

Shards whose rows all pass are linked (or copied) unchanged; only shards that lose rows are rewritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from w2v.atomic import write_text_atomic
from w2v.errors import ManifestError
from w2v.quality import Quality
from w2v.quality_filters import Failure, QualityThresholds, every_piece_failed, first_failure
from w2v.shards.histograms import quality_histograms
from w2v.shards.index import shard_index, write_index_files
from w2v.shards.lock import exclusive_writer
from w2v.shards.manifest import (
    MANIFEST_NAME,
    REJECTS_NAME,
    IndexEntry,
    Manifest,
    ShardEntry,
    SourceEntry,
    read_manifest,
    rejects_jsonl,
    write_manifest,
)
from w2v.shards.schema import QUALITY_COLUMNS
from w2v.shards.sources import source_rows, write_source_files
from w2v.shards.table import read_stream, write_stream_atomic


def stricter(a: QualityThresholds, b: QualityThresholds) -> QualityThresholds:
    """Each threshold as the stricter of the two (a None is no constraint)."""

    def lowest(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else min(x, y)

    def highest(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else max(x, y)

    return QualityThresholds(
        max_clipped_share=lowest(a.max_clipped_share, b.max_clipped_share),
        min_snr_db=highest(a.min_snr_db, b.min_snr_db),
        min_speech_share=highest(a.min_speech_share, b.min_speech_share),
        max_dc_offset=lowest(a.max_dc_offset, b.max_dc_offset),
    )


def filter_folder(src: Path, dst: Path, thresholds: QualityThresholds, now: str) -> Manifest:
    """Write to `dst` the utterances of `src` that pass `thresholds`; returns the new manifest."""
    if dst.resolve() == src.resolve():
        raise ManifestError(f"{dst}: filter writes a new folder; choose an --out other than the source")
    if (dst / MANIFEST_NAME).exists():
        raise ManifestError(f"{dst}: already holds shards; choose an empty --out")
    manifest = read_manifest(src)
    failures: dict[str, tuple[str, Failure, float, float]] = {}  # id -> (source, failure, start, seconds)
    shards: list[ShardEntry] = []
    with exclusive_writer(dst):
        for number, shard in enumerate(manifest.shards):
            table = read_stream(src / shard.path)
            failed = _failures(table, thresholds, src / shard.path, manifest.sample_rate)
            failures.update(failed)
            if not failed:
                _link_or_copy(src / shard.path, dst / shard.path)
                shards.append(shard)
                continue
            keep = pa.array([i not in failed for i in table.column("id").to_pylist()])
            remaining = table.filter(keep).combine_chunks()
            if remaining.num_rows:
                name = f"b{shard.bucket:02d}-g{manifest.generation + 1:05d}-f{number:04d}.arrow"
                written = write_stream_atomic(remaining, dst / name)
                seconds = sum(remaining.column("num_samples").to_pylist()) / manifest.sample_rate
                shards.append(
                    ShardEntry(name, shard.bucket, remaining.num_rows, seconds, written.bytes, written.sha256)
                )
        sources = {uri: _without(entry, failures) for uri, entry in manifest.sources.items()}
        config = dict(manifest.config)
        before = QualityThresholds(**config.get("quality", {}))
        config["quality"] = dataclasses.asdict(stricter(before, thresholds))
        filtered = manifest.with_changes(
            generation=manifest.generation + 1,
            shards=tuple(shards),
            sources=sources,
            config=config,
            quality_histograms=quality_histograms([dst / s.path for s in shards]),
            index=_index_of(dst, shards, manifest.generation + 1),
            source_tables=write_source_files(dst, manifest.generation + 1, source_rows(sources.values())),
            last_run={"started": now, "finished": now, "filtered_from": str(src), "removed": len(failures)},
            updated=now,
        )
        write_text_atomic(dst / REJECTS_NAME, rejects_jsonl(sources.values()))
        filtered = write_manifest(dst, filtered)
    return filtered


def _index_of(folder: Path, shards: list[ShardEntry], generation: int) -> tuple[IndexEntry, ...]:
    return write_index_files(folder, generation, [shard_index(folder, s.path) for s in shards])


def _failures(
    table: pa.Table, thresholds: QualityThresholds, path: Path, sample_rate: int
) -> dict[str, tuple[str, Failure, float, float]]:
    columns = {name: table.column(name).to_pylist() for name in QUALITY_COLUMNS}
    if table.num_rows and any(v is None for v in columns["snr_db"]):
        raise ManifestError(f"{path}: has no quality measurements (prepared with measure_quality off)")
    ids = table.column("id").to_pylist()
    sources = table.column("source").to_pylist()
    starts = table.column("start_seconds").to_pylist()
    lengths = table.column("num_samples").to_pylist()
    found = {}
    for row, utterance_id in enumerate(ids):
        measured = Quality(**{name: columns[name][row] for name in QUALITY_COLUMNS})
        failure = first_failure(measured, thresholds)
        if failure is not None:
            found[utterance_id] = (sources[row], failure, starts[row], lengths[row] / sample_rate)
    return found


def _without(entry: SourceEntry, failures: dict[str, tuple[str, Failure, float, float]]) -> SourceEntry:
    removed = [u for u in entry.utterances if u in failures]
    if not removed:
        return entry
    pieces: tuple[dict[str, Any], ...] = tuple(
        {
            "id": u,
            "start_seconds": failures[u][2],
            "seconds": failures[u][3],
            "reason": failures[u][1].reason,
            "value": failures[u][1].value,
            "threshold": failures[u][1].threshold,
        }
        for u in removed
    )
    seconds = sum(p["seconds"] for p in pieces)
    kept = tuple(u for u in entry.utterances if u not in failures)
    if kept:
        return dataclasses.replace(
            entry,
            utterances=kept,
            kept_seconds=entry.kept_seconds - seconds,
            filtered=entry.filtered + pieces,
            filtered_seconds=entry.filtered_seconds + seconds,
        )
    return entry.rejected_as(str(pieces[0]["reason"]), every_piece_failed(entry.uri, pieces))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
