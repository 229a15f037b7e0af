"""Diagnose a shard folder: is it whole, and will it train well with the configured batches?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from w2v.data.collate import batch_width
from w2v.data.plan import BatchConfig, plan_batches
from w2v.doctor.findings import Finding, error, ok, warning
from w2v.shards.inspect import utterance_seconds
from w2v.shards.manifest import read_manifest
from w2v.shards.verify import verify

SHORT_SECONDS, LONG_SECONDS = 2.0, 30.0
EXTREME_SHARE = 0.3  # of the audio, in very short or very long utterances
BUCKET_RATIO = 4.0  # largest bucket's hours over the smallest's
REJECT_SHARE = 0.1  # of the files seen
WASTE_SHARE = 0.1  # of the audio lost to cropping or padding by the batch plan


def diagnose_shards(folder: Path, batch: BatchConfig | None = None) -> list[Finding]:
    batch = batch or BatchConfig()
    manifest = read_manifest(folder)
    problems = verify(folder)
    findings = [
        error(
            "integrity",
            f"{len(problems)} problems, first: {problems[0]}",
            "re-run w2v prepare into the folder (it resumes) or restore the damaged shards",
            problems=len(problems),
        )
        if problems
        else ok("integrity", f"{len(manifest.shards)} shards match the manifest (sizes, sha256, rows)")
    ]
    if problems:  # the other checks read the shards: not until they are whole
        return findings
    seconds = utterance_seconds(folder, manifest)
    if seconds.size == 0:
        return [*findings, warning("empty", "the folder holds no utterances", "prepare some audio into it")]
    findings += [
        _extremes(seconds),
        _buckets(folder),
        _rejects(folder),
        _waste(seconds, batch, manifest.sample_rate),
    ]
    return findings


def _extremes(seconds: np.ndarray) -> Finding:
    total = float(seconds.sum())
    short = float(seconds[seconds < SHORT_SECONDS].sum()) / total
    long = float(seconds[seconds > LONG_SECONDS].sum()) / total
    if short > EXTREME_SHARE:
        return warning(
            "durations",
            f"{100 * short:.0f} % of the audio is in utterances under {SHORT_SECONDS:.0f} s: too short for "
            "span masking (10 frames = 0.2 s per span) and many negatives",
            "prepare with a higher --min-seconds, or join short files upstream",
            short_share=short,
        )
    if long > EXTREME_SHARE:
        return warning(
            "durations",
            f"{100 * long:.0f} % of the audio is in utterances over {LONG_SECONDS:.0f} s: they are cropped to "
            "batch.max_sample_seconds and the rest is never seen in that epoch",
            "prepare with a lower --max-seconds (recordings are cut at quiet frames)",
            long_share=long,
        )
    return ok(
        "durations",
        f"{100 * short:.0f} % of the audio under {SHORT_SECONDS:.0f} s, {100 * long:.0f} % over {LONG_SECONDS:.0f} s",
        short_share=short,
        long_share=long,
    )


def _buckets(folder: Path) -> Finding:
    manifest = read_manifest(folder)
    hours: dict[int, float] = {}
    for shard in manifest.shards:
        hours[shard.bucket] = hours.get(shard.bucket, 0.0) + shard.seconds / 3600
    if len(hours) < 2:
        return ok("buckets", f"{len(hours)} length bucket")
    ratio = max(hours.values()) / max(min(hours.values()), 1e-9)
    if ratio > BUCKET_RATIO:
        return warning(
            "buckets",
            f"length buckets hold from {min(hours.values()):.3f} h to {max(hours.values()):.3f} h ({ratio:.1f}×): "
            "batches from the small buckets come rarely and epochs mix lengths unevenly",
            "prepare into a new folder with fewer --num-buckets (edges are fixed by the first run)",
            ratio=ratio,
        )
    return ok("buckets", f"{len(hours)} length buckets within {ratio:.1f}× of each other", ratio=ratio)


def _rejects(folder: Path) -> Finding:
    counts = read_manifest(folder).counts()
    seen = max(int(counts["files_seen"]), 1)
    rejected = sum(counts["rejected"].values())
    share = rejected / seen
    if share > REJECT_SHARE:
        top = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["rejected"].items(), key=lambda x: -x[1])[:3])
        return warning(
            "rejects",
            f"{rejected} of {seen} files rejected ({100 * share:.0f} %): {top}",
            "read rejects.jsonl for each file's reason; fix the sources or the decoders (ffmpeg for M4A/WebM)",
            reject_share=share,
        )
    return ok("rejects", f"{rejected} of {seen} files rejected", reject_share=share)


def _waste(seconds: np.ndarray, batch: BatchConfig, sample_rate: int) -> Finding:
    """Audio the batch plan would crop away (crop mode) or pad (pad mode), predicted from the durations."""
    samples = np.rint(seconds * sample_rate).astype(np.int64)
    capped = np.minimum(samples, batch.max_sample_size)
    lost = 0
    for indices in plan_batches(samples, batch, 0, 0):
        rows = capped[indices]
        lost += int(np.abs(rows - batch_width(rows, batch)).sum())  # cropped away, or padding
    lost += int((samples - capped).sum())  # cropped to max_sample_seconds in either mode
    share = lost / max(int(samples.sum()), 1)
    if share > WASTE_SHARE:
        return warning(
            "batch_waste",
            f"the batch plan would lose {100 * share:.1f} % of the audio to {batch.mode} (and "
            f"max_sample_seconds {batch.max_sample_seconds:g})",
            "raise batch.max_sample_seconds, prepare with a --max-seconds below it, or use more --num-buckets",
            waste_share=share,
        )
    return ok(
        "batch_waste", f"{100 * share:.1f} % of the audio lost to {batch.mode} by the batch plan", waste_share=share
    )
