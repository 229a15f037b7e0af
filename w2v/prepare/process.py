"""Turn raw sources into utterances (decode, downmix, resample, int16, segment), a chunk of files at a time.

A chunk's utterances go straight into its final shards (w2v.prepare.shard_writer); a chunk is done when its
record is in the staging folder, so a re-run after a crash reuses every finished chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2v import audio, quality
from w2v.decode import Decoded, decode
from w2v.errors import RejectedAudio
from w2v.prepare.config import PrepareConfig
from w2v.prepare.metadata import Metadata, metadata_sha256
from w2v.prepare.shard_writer import BUFFER_BYTES, ChunkWriter, ShardLayout, chunk_is_complete, record_url
from w2v.quality_filters import every_piece_failed, first_failure
from w2v.shards.location import Location
from w2v.shards.manifest import SourceEntry
from w2v.shards.table import Utterance
from w2v.storage import Source, open_source
from w2v.vad import speech_detector

# int16 peak at or below this many steps counts as digital silence (dither alone).
SILENT_PEAK_STEPS = 1


@dataclass(frozen=True)
class SourceTask:
    source: Source
    metadata: Metadata | None = None

    def entry_fields(self) -> dict[str, Any]:
        s = self.source
        return {
            "uri": s.uri,
            "size": s.size,
            "mtime": s.mtime,
            "etag": s.etag,
            "metadata_sha256": metadata_sha256(self.metadata),
        }


@dataclass(frozen=True)
class Chunk:
    """A unit of work and of retry: files whose sizes add up to about `chunk_mb`, named by a hash of what
    they are, how they are decoded and where their shards go."""

    key: str
    tasks: tuple[SourceTask, ...]
    number: int = 0  # in the run's plan (URI order)

    @property
    def label(self) -> str:
        """What its shard names carry: the number orders a folder's shards the same wherever its sources
        lie (keys hash absolute URIs); the key keeps names apart across plans."""
        return f"{self.number:05d}-{self.key[:8]}"

    @property
    def source_bytes(self) -> int:
        return sum(t.source.size for t in self.tasks)


# A run is split into at least this many chunks (when it has the files), so every worker stays busy.
MIN_CHUNKS = 8


def plan_chunks(tasks: list[SourceTask], config: PrepareConfig, layout: ShardLayout) -> list[Chunk]:
    """Split tasks (in URI order) into chunks of about `chunk_mb` source bytes and at most `files_per_chunk`
    files, and into MIN_CHUNKS chunks where there are enough files; keys depend only on the files, the
    decode config and the layout.

    A file goes to the chunk its middle byte falls in, counting every byte before it. A run of up to
    MIN_CHUNKS times `chunk_mb` shares its bytes evenly between MIN_CHUNKS chunks (with no small one holding
    what the others left: an odd chunk out runs alone at the end of a run); a larger run cuts every
    `chunk_mb`, so the chunks before a new file keep their keys.
    """
    ordered = sorted(tasks, key=lambda t: t.source.uri)
    total = sum(t.source.size for t in ordered)
    chunk_bytes = config.chunk_mb * (1 << 20)
    # A large run cuts on a fixed grid: a file added at its end leaves every earlier chunk's key, and what an
    # interrupted run staged, as it was. A small run shares its bytes evenly between MIN_CHUNKS chunks.
    target = chunk_bytes if total > MIN_CHUNKS * chunk_bytes else max(1, total / MIN_CHUNKS)
    groups: list[list[SourceTask]] = []
    offset = 0
    boundary = target
    for task in ordered:
        middle = offset + task.source.size / 2
        past = middle >= boundary
        if past:
            boundary = (middle // target + 1) * target
        if not groups or past or len(groups[-1]) >= config.files_per_chunk:
            groups.append([])
        groups[-1].append(task)
        offset += task.source.size
    chunks = []
    for number, group in enumerate(groups):
        h = hashlib.sha256(f"{config.decode_fingerprint()}:{layout.fingerprint()}".encode())
        for task in group:
            h.update(json.dumps(task.entry_fields(), sort_keys=True).encode())
        chunks.append(Chunk(key=h.hexdigest()[:20], tasks=tuple(group), number=number))
    return chunks


def process_chunk(
    chunk: Chunk,
    config: PrepareConfig,
    layout: ShardLayout,
    out: Path | str | Location,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Decode a chunk into its final shards in `out` (a folder or a URL); returns where its record is (at
    once if the chunk is done already)."""
    writer = decode_chunk(chunk, config, layout, out, storage_options)
    if isinstance(writer, str):
        return writer
    try:
        return writer.finish()
    finally:
        writer.close()


def decode_chunk(
    chunk: Chunk,
    config: PrepareConfig,
    layout: ShardLayout,
    out: Path | str | Location,
    storage_options: dict[str, Any] | None = None,
    buffer_bytes: int = BUFFER_BYTES,
) -> ChunkWriter | str:
    """The first half of `process_chunk`: decode every file of the chunk into a writer whose shards may still
    be on their way to the disk; the caller finishes it (record) or closes it. A chunk done already returns
    where its record is instead."""
    folder = Location.of(out, storage_options)
    if chunk_is_complete(folder, chunk.key):
        return record_url(folder, chunk.key)
    writer = ChunkWriter(folder, chunk.key, layout, chunk.label, buffer_bytes)
    try:
        for task in chunk.tasks:
            writer.add(*process_source(task, config, storage_options))
    except BaseException:
        writer.close()
        raise
    return writer


def process_source(
    task: SourceTask, config: PrepareConfig, storage_options: dict[str, Any] | None = None
) -> tuple[SourceEntry, list[Utterance]]:
    """Everything prepare makes of one file; a bad file comes back as a rejected entry, never an exception."""
    base = task.entry_fields()
    if task.source.size == 0:
        return SourceEntry(**base, status="rejected", reason="empty", error=f"{task.source.uri}: 0 bytes"), []
    try:
        return _process(task, config, storage_options, base)
    except RejectedAudio as rejected:
        return SourceEntry(**base, status="rejected", reason=rejected.reason, error=rejected.message), []
    except FileNotFoundError as error:
        message = f"{task.source.uri}: vanished after listing ({error})"
        return SourceEntry(**base, status="rejected", reason="missing", error=message), []


def _process(
    task: SourceTask, config: PrepareConfig, storage_options: dict[str, Any] | None, base: dict[str, Any]
) -> tuple[SourceEntry, list[Utterance]]:
    """decode → mono, resampled, full-scale int16 → reject silence → cut into pieces → measure and filter
    each piece → the source's entry and its utterances. Raises RejectedAudio for a file that yields nothing."""
    uri = task.source.uri
    decoded, highest, lowest = _decode_finite(uri, storage_options)
    mono = audio.downmix(decoded.samples)
    resampled = audio.resample(mono, decoded.sample_rate, config.sample_rate, config.resample_quality)
    scaled, gain = audio.fit_to_full_scale(resampled)
    pcm = audio.to_int16(scaled)
    decoded_seconds = pcm.shape[0] / config.sample_rate
    measured_source = {
        "decoder": decoded.decoder,
        "original_sample_rate": decoded.sample_rate,
        "channels": decoded.samples.shape[1],
        "gain": gain,
        "decoded_seconds": decoded_seconds,
    }
    peak = max(int(pcm.max()), -int(pcm.min()))  # as int: -(-32768) does not fit int16
    if peak <= SILENT_PEAK_STEPS:
        error = f"{uri}: digitally silent (peak {peak} of 32767 over {decoded_seconds:.2f} s)"
        return SourceEntry(**base, **measured_source, status="rejected", reason="silent", error=error), []

    plan = audio.plan_segments(pcm, config.sample_rate, config.max_seconds, config.search_seconds)
    kept = plan.kept(config.min_samples)
    dropped = plan.dropped(config.min_samples)
    if not kept:
        error = f"{uri}: {decoded_seconds:.2f} s is shorter than min_seconds={config.min_seconds}"
        entry = SourceEntry(**base, **measured_source, status="rejected", reason="too_short", error=error)
        return entry, []
    # The clipping scan runs on the decoded samples, before resampling, once per recording.
    clipping = quality.Clipping.find(decoded.samples, highest, lowest) if config.measure_quality else None
    ratio = decoded.sample_rate / config.sample_rate
    rows, filtered = _pieces(
        task, config, pcm, scaled, kept, whole=len(plan.bounds) == 1, clipping=clipping, ratio=ratio
    )
    if not rows:
        error = every_piece_failed(uri, filtered)
        return SourceEntry(**base, **measured_source, status="rejected", reason=filtered[0]["reason"], error=error), []
    entry = SourceEntry(
        **base,
        **measured_source,
        status="kept",
        utterances=tuple(r.id for r in rows),
        kept_seconds=sum(r.audio.shape[0] for r in rows) / config.sample_rate,
        dropped_seconds=sum(e - s for s, e in dropped) / config.sample_rate,
        dropped_pieces=len(dropped),
        filtered=tuple(filtered),
        filtered_seconds=sum(f["seconds"] for f in filtered),
        audio_sha256=hashlib.sha256(pcm.tobytes()).hexdigest(),
    )
    return entry, rows


def _decode_finite(uri: str, storage_options: dict[str, Any] | None) -> tuple[Decoded, float, float]:
    """The file decoded, with its highest and lowest sample. Raises RejectedAudio when it decodes to nothing
    or to NaN or infinite samples."""
    opened = open_source(uri, storage_options)
    try:
        decoded = decode(opened, uri)
    finally:
        if not isinstance(opened, str):
            opened.close()
    if decoded.samples.shape[0] == 0:
        raise RejectedAudio("empty", f"{uri}: decodes to 0 samples")
    # NaN and infinities carry through max and min: two passes that also serve the clipping scan.
    highest, lowest = float(decoded.samples.max()), float(decoded.samples.min())
    if not (math.isfinite(highest) and math.isfinite(lowest)):
        finite = np.isfinite(decoded.samples)
        bad = int(finite.size - np.count_nonzero(finite))
        raise RejectedAudio("non_finite", f"{uri}: {bad} of {finite.size} samples are NaN or infinite")
    return decoded, highest, lowest


def _pieces(
    task: SourceTask,
    config: PrepareConfig,
    pcm: np.ndarray,
    scaled: np.ndarray,
    kept: Sequence[tuple[int, int]],
    *,
    whole: bool,
    clipping: quality.Clipping | None,
    ratio: float,
) -> tuple[list[Utterance], list[dict[str, Any]]]:
    """The utterances of the `kept` (start, end) pieces of `pcm`, and the pieces a quality filter removed
    (id, start_seconds, seconds, reason, value, threshold). With `clipping` (quality measured) each piece is
    measured on `scaled`, the float audio it was quantized from; `ratio` maps its samples to the decoded
    file's for the clipping scan. A transcript goes with the audio only when the recording is one piece."""
    uri = task.source.uri
    meta = task.metadata or {}
    text = meta.get("text") if whole else None
    prefix = utterance_prefix(uri)
    detector = speech_detector(config.vad)
    rows: list[Utterance] = []
    filtered: list[dict[str, Any]] = []
    for k, (start, end) in enumerate(kept):
        piece = pcm[start:end]
        measured = None
        if clipping is not None:
            clipped = clipping.share(round(start * ratio), round(end * ratio))
            measured = quality.measure(scaled[start:end], config.sample_rate, clipped, detector)
            failure = first_failure(measured, config.quality)
            if failure is not None:
                filtered.append(
                    {
                        "id": f"{prefix}-{k:04d}",
                        "start_seconds": start / config.sample_rate,
                        "seconds": (end - start) / config.sample_rate,
                        "reason": failure.reason,
                        "value": failure.value,
                        "threshold": failure.threshold,
                    }
                )
                continue
        mean, std = audio.mean_std(piece)
        rows.append(
            Utterance(
                id=f"{prefix}-{k:04d}",
                audio=piece,
                source=uri,
                start_seconds=start / config.sample_rate,
                mean=mean,
                std=std,
                text=text,
                speaker=meta.get("speaker"),
                label=meta.get("label"),
                quality=measured,
            )
        )
    return rows, filtered


def utterance_prefix(uri: str) -> str:
    """A readable, unique id prefix: the file's stem plus a hash of its full URI."""
    stem = Path(uri.split("://", 1)[-1]).stem
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:48] or "audio"
    return f"{safe}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"
