"""Benchmark prepare-corpus as a corpus grows: wall per stage, bytes written, peak memory, metadata size.

(a) Real audio (`--files N`): N distinct 3–4.5 s int16 WAVs, cut, mixed, shifted and scaled from a few espeak-ng
sentences with seeded noise (cached in --corpus). Prepare runs through the library (plan_run, decode_chunks,
commit_run, then the corpus report the flow publishes) in a child process, three times into one folder: the
first run, a no-op re-run and a re-run with 1 % new files. The Prefect start is not included (it is measured
with the flow, in benchmarks/prepare.py --flow), nor is anything Prefect adds per task.
The anchor is the audio the shards store: 2 bytes × the samples in them. Bytes written are write_bytes of
/proc/<pid>/io over the whole process tree: this process is a child subreaper, so the prepare process and
its decoding children (forked from a fork server) are all reaped here, and Linux adds a reaped child's
counters to its parent's. write_bytes counts pages as they are dirtied, whether or not they reach the disk;
those deleted before writeback (staging parts, after a short run) are counted again in cancelled_write_bytes.
Targets are the scale issue's, stated at its corpus size; below that size the figure itself, above it
scaled linearly in files.
(b) `--synthetic N`: a folder of N indexed utterances without audio (benchmarks/synthetic_index.py), opened
as training opens it, one epoch planned, the stream sought to its middle and held-out recordings split off,
in a fresh process (its peak RSS is the corpus's); reported under "synthetic".
(c) `--shard-list N`: the manifest of a folder of N shards (1.8 M at 10^6 hours), its shard list inline as JSON
against columnar shard list files: bytes; the time to read the manifest and its summary (what planning, reports
and inspect read), then every shard's entry; each in a fresh process; reported under "shard_list".
Usage: python benchmarks/scale.py [--files 10000] [--workers 2] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.memory import own_peak_rss_mb
from benchmarks.shard_list import shard_list

SENTENCES = [
    ("The committee will meet again on Thursday to review the budget.", "en-us"),
    ("Please bring the signed forms and a copy of last year's report.", "en-gb"),
    ("Nobody expected the river to rise so quickly after the storm.", "en-gb-scotland"),
    ("She opened the window and listened to the rain on the roof.", "en-us+f3"),
    ("Seven engineers worked through the night to restore the network.", "en-029"),
    ("A quiet voice from the back of the room asked the final question.", "en+m3"),
]
SEED = 20261201
MIN_SECONDS, MAX_SECONDS = 3.0, 4.5
GENERATOR_VERSION = 1  # change it when synthetic_file changes: cached folders are then refused
MARKER_NAME = "scale-corpus.json"  # not an audio extension: prepare does not list it
FILES_PER_FOLDER = 1000
MB = 1 << 20
PR_SET_CHILD_SUBREAPER = 36


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the corpus


def speech_reel(sample_rate: int) -> np.ndarray:
    """The sentences once each, at `sample_rate`, with short pauses between them (float32)."""
    from tests.corpus import read_speech

    rng = np.random.default_rng(SEED)
    parts = []
    for text, voice in SENTENCES:
        speech, rate = read_speech(text, voice)
        parts.append(np.asarray(soxr.resample(speech, rate, sample_rate), dtype=np.float32))
        parts.append(np.zeros(int(rng.uniform(0.15, 0.4) * sample_rate), dtype=np.float32))
    return np.concatenate(parts)


def synthetic_file(reel: np.ndarray, sample_rate: int, index: int) -> np.ndarray:
    """File `index`: a window of the reel at a random shift and gain, a quieter second window mixed in, and
    noise, all seeded by the index, so no two files decode to the same samples (int16)."""
    rng = np.random.default_rng([SEED, index])
    length = int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * sample_rate)
    positions = np.arange(length)
    main = reel.take(positions + rng.integers(reel.size), mode="wrap") * rng.uniform(0.3, 0.9)
    under = reel.take(positions + rng.integers(reel.size), mode="wrap") * rng.uniform(0.03, 0.15)
    noise = rng.normal(0.0, 10 ** (rng.uniform(-60, -45) / 20), length)
    return np.asarray(np.clip((main + under + noise) * 32768, -32768, 32767), dtype=np.int16)


def file_path(root: Path, index: int) -> Path:
    return root / f"{index // FILES_PER_FOLDER:05d}" / f"{index:08d}.wav"


def write_files(root: Path, indices: range, sample_rate: int) -> int:
    """Write the files of `indices` that `root` lacks; returns how many were written."""
    missing = [i for i in indices if not file_path(root, i).exists()]
    if not missing:
        return 0
    reel = speech_reel(sample_rate)
    for index in missing:
        path = file_path(root, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # a dot name: never listed, never reused half-written
        sf.write(tmp, synthetic_file(reel, sample_rate, index), sample_rate, format="WAV", subtype="PCM_16")
        tmp.rename(path)
    return len(missing)


def ensure_corpus(root: Path, files: int, sample_rate: int) -> None:
    """Files 0..files-1 in `root`, generated where missing; refuses a folder made otherwise or holding more."""
    marker = {"generator": GENERATOR_VERSION, "seed": SEED, "sample_rate": sample_rate}
    marker_path = root / MARKER_NAME
    if marker_path.exists() and json.loads(marker_path.read_text()) != marker:
        raise SystemExit(
            f"{root}: generated with other settings ({marker_path.read_text().strip()}); use another --corpus"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker_path.write_text(json.dumps(marker) + "\n")
    started = time.perf_counter()
    written = write_files(root, range(files), sample_rate)
    if written:
        log(f"{written} files generated in {time.perf_counter() - started:.1f} s")
    held = sum(1 for _ in root.rglob("*.wav"))
    if held != files:
        raise SystemExit(f"{root}: holds {held} WAV files, --files asks for {files}; use another --corpus")


# ------------------------------------------------------------------------ one prepare run, in a child process


def proc_io() -> dict[str, int]:
    """This process's I/O counters: its threads, and every child it has reaped (with theirs)."""
    rows = Path("/proc/self/io").read_text().splitlines()
    return {name: int(value) for name, value in (row.split(": ") for row in rows)}


def inner_run(sources: list[str], out: Path, workers: int, result_fd: int) -> None:
    """One prepare run, stage by stage, as the flow composes it (without Prefect); writes its figures as JSON
    to `result_fd`, a pipe (which, unlike a file, adds nothing to write_bytes)."""
    from w2v.prepare import pipeline
    from w2v.prepare.config import PrepareConfig
    from w2v.prepare.report import corpus_report_markdown
    from w2v.shards.lock import exclusive_writer

    listing_seconds = 0.0
    list_sources = pipeline.list_sources

    def timed_listing(*args: Any, **kwargs: Any) -> Any:
        nonlocal listing_seconds
        started = time.perf_counter()
        try:
            return list_sources(*args, **kwargs)
        finally:
            listing_seconds += time.perf_counter() - started

    pipeline.list_sources = timed_listing  # to tell listing apart from planning; this process only

    seconds: dict[str, float] = {}
    written: dict[str, int] = {}

    def stage(name: str, clock: float, before: dict[str, int]) -> tuple[float, dict[str, int]]:
        now, counters = time.perf_counter(), proc_io()
        seconds[name] = round(now - clock, 3)
        written[name] = counters["write_bytes"] - before["write_bytes"]
        return now, counters

    config = PrepareConfig()
    clock, counters = time.perf_counter(), proc_io()
    started = pipeline.utc_now()
    with exclusive_writer(out):
        plan = pipeline.plan_run(sources, out, config)
        clock, counters = stage("list_plan", clock, counters)
        pipeline.decode_chunks(plan, config, workers, None)
        clock, counters = stage("decode", clock, counters)
        manifest = pipeline.commit_run(plan, config, started)
        clock, counters = stage("commit", clock, counters)
    corpus_report_markdown(manifest, str(out))
    stage("report", clock, counters)
    seconds["of_which_listing"] = round(listing_seconds, 3)
    result = {
        "files_listed": plan.listed,
        "files_decoded": plan.files_to_decode,
        "seconds": seconds,
        "main_process_write_bytes": written,
        "main_process_peak_rss_mb": own_peak_rss_mb(),
    }
    with open(result_fd, "w") as pipe:
        pipe.write(json.dumps(result))


def become_subreaper() -> None:
    """Orphaned descendants (the decoders' fork server) come to this process, which reaps them and so adds
    their I/O counters and peak memory to its own."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed: this benchmark needs Linux")


def measured_run(sources: list[str], out: Path, workers: int) -> dict[str, Any]:
    """Run `inner_run` in a child process; returns its figures with the whole tree's bytes and memory."""
    read_fd, write_fd = os.pipe()
    command = [sys.executable, __file__, "--inner", str(write_fd), "--out", str(out), "--workers", str(workers)]
    # No .pyc files: the first run would otherwise count writing them.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    before = proc_io()
    clock = time.perf_counter()
    child = subprocess.Popen([*command, *sources], stdout=sys.stderr, env=env, pass_fds=(write_fd,))
    os.close(write_fd)
    with open(read_fd) as pipe:
        reply = pipe.read()  # until the child closes its end
    child.wait()
    process_seconds = time.perf_counter() - clock
    if child.returncode != 0:
        raise SystemExit(f"the prepare run exited with status {child.returncode}; see the log above")
    orphans_peak_kb: int | None = None
    # The fork server exits when its client goes; reaping it here gives the peak memory of it and its children.
    while True:
        try:
            _, _, orphan = os.wait4(-1, 0)
        except ChildProcessError:
            break
        orphans_peak_kb = max(orphans_peak_kb or 0, orphan.ru_maxrss)
    after = proc_io()
    inner = json.loads(reply)
    main_by_stage = inner.pop("main_process_write_bytes")
    main_bytes = sum(main_by_stage.values())
    total = after["write_bytes"] - before["write_bytes"]
    inner["seconds"]["process"] = round(process_seconds, 3)
    inner["bytes_written"] = {
        "total": total,
        "main_process": main_bytes,
        "main_process_by_stage": main_by_stage,
        "decoding_children": total - main_bytes,
        "cancelled_before_writeback": after["cancelled_write_bytes"] - before["cancelled_write_bytes"],
    }
    inner["peak_rss_mb"] = {
        "main": inner.pop("main_process_peak_rss_mb"),
        "largest_child": None if orphans_peak_kb is None else round(orphans_peak_kb / 1024, 1),
    }
    return inner


# --------------------------------------------------------------------------------------------- the figures


def target(figure: float, at_files: int, files: int) -> float:
    """The issue's `figure` at its `at_files`, scaled linearly in files above that size."""
    return round(figure * max(1.0, files / at_files), 3)


def stored_audio(out: Path) -> tuple[float, dict[str, Any]]:
    """Seconds to open the folder as training does, and what it stores."""
    from w2v.data.corpus import ShardCorpus

    started = time.perf_counter()
    corpus = ShardCorpus(out)
    open_seconds = time.perf_counter() - started
    samples = int(corpus.num_samples.sum())
    stored = {
        "utterances": len(corpus),
        "hours": round(samples / corpus.sample_rate / 3600, 3),
        "audio_bytes": 2 * samples,
    }
    return open_seconds, stored


def synthetic(utterances: int) -> dict[str, Any]:
    """Part (b): a folder of `utterances` indexed rows without audio, opened and planned in a fresh process."""
    from benchmarks.synthetic_index import write_synthetic_folder

    with tempfile.TemporaryDirectory(prefix="w2v-synthetic-") as tmp:
        started = time.perf_counter()
        write_synthetic_folder(Path(tmp), utterances)
        written = time.perf_counter() - started
        index_bytes = sum(p.stat().st_size for p in Path(tmp).glob("index-*.arrow"))
        source_table_bytes = sum(p.stat().st_size for p in Path(tmp).glob("sources-*.parquet"))
        manifest_bytes = (Path(tmp) / "manifest.json").stat().st_size
        command = [sys.executable, __file__, "--measure-synthetic", tmp]
        measured = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        lookups = source_lookups(Path(tmp))
    # The targets: open + one-epoch plan 3 s at 10^6 utterances, 30 s at 10^7; 2 GB of RSS at 10^7.
    return {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "synthetic": {
            **measured,
            "open_plus_plan_s": round(measured["open_s"] + measured["plan_s"], 3),
            "open_plus_plan_s_target": 3.0 * max(1.0, utterances / 1e6),
            "peak_rss_mb_target": 2048.0 * max(1.0, utterances / 1e7),
            "index_bytes": index_bytes,
            "source_table_bytes": source_table_bytes,
            "manifest_bytes": manifest_bytes,
            **lookups,
            "written_s": round(written, 2),
        },
    }


def source_lookups(folder: Path, uris: int = 1_000) -> dict[str, float]:
    """What a prepare run reads of the source table: every fingerprint (planning), and the records of a
    nightly run's `uris` changed files (the commit)."""
    from w2v.shards.manifest import read_manifest
    from w2v.shards.sources import fingerprints, records_of

    manifest = read_manifest(folder)
    started = time.perf_counter()
    known = fingerprints(folder, manifest)
    planned = time.perf_counter()
    wanted = list(known)[:: max(1, len(known) // uris)][:uris]
    found = records_of(folder, manifest, wanted)
    assert len(found) == len(wanted)
    return {
        "fingerprints_s": round(planned - started, 3),
        f"records_of_{uris}_uris_s": round(time.perf_counter() - planned, 3),
    }


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="generated WAV files (part a)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", type=Path, help="where the generated files are kept and reused")
    parser.add_argument("--sample-rate", type=int, default=16_000, help="of the generated files (16000 or 22050)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="part b: open and plan N indexed rows, no audio")
    parser.add_argument("--shard-list", type=int, metavar="N", help="part c: a manifest of N shards, JSON or columnar")
    parser.add_argument("--measure-synthetic", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inner", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("sources", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        inner_run(args.sources, args.out, args.workers, args.inner)
        sys.exit(0)
    if args.measure_synthetic is not None:
        from benchmarks.synthetic_index import measure

        return measure(args.measure_synthetic)
    if args.synthetic is not None:
        return synthetic(args.synthetic)
    if args.shard_list is not None:
        return {
            "benchmark": "scale",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
            "shard_list": shard_list(args.shard_list),  # benchmarks/shard_list.py
        }
    if args.files < 1 or args.workers < 1:
        parser.error("--files and --workers must be at least 1")

    from w2v.shards.manifest import read_manifest

    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="w2v-scale-") as tmp:
        scratch = Path(tmp)
        corpus = (args.corpus or scratch / "corpus").resolve()
        ensure_corpus(corpus, args.files, args.sample_rate)
        out = scratch / "shards"

        log(f"first run: {args.files} files, {args.workers} workers")
        first = measured_run([str(corpus)], out, args.workers)
        open_seconds, stored = stored_audio(out)
        manifest_bytes = (out / "manifest.json").stat().st_size
        counts = read_manifest(out).counts()

        log("no-op re-run")
        noop = measured_run([str(corpus)], out, args.workers)

        added = max(1, round(args.files / 100))
        extra = scratch / "added"
        write_files(extra, range(args.files, args.files + added), args.sample_rate)
        log(f"re-run with {added} new files")
        grow = measured_run([str(corpus), str(extra)], out, args.workers)
        _, grown = stored_audio(out)

    noop_seconds = noop["seconds"]
    beyond_listing = sum(noop_seconds[s] for s in ("list_plan", "decode", "commit", "report"))
    noop["beyond_listing_s"] = round(beyond_listing - noop_seconds["of_which_listing"], 3)
    noop["beyond_listing_s_target"] = target(5.0, 100_000, args.files)
    noop["peak_rss_mb_target"] = 1024
    grow["files_added"] = added
    new_audio_bytes = grown["audio_bytes"] - stored["audio_bytes"]
    grow["bytes_written_over_new_audio_bytes"] = round(grow["bytes_written"]["total"] / max(1, new_audio_bytes), 3)
    peak_any = max(mb for run in (first, noop, grow) for mb in run["peak_rss_mb"].values() if mb is not None)
    return {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "files": args.files,
        "workers": args.workers,
        "source_sample_rate": args.sample_rate,
        "hours": stored["hours"],
        "utterances": stored["utterances"],
        "files_kept": counts["files_kept"],
        "rejected": counts["rejected"],
        "anchor": "audio bytes stored: 2 × the int16 samples in the shards after the first run",
        "audio_bytes_stored": stored["audio_bytes"],
        "bytes_written_over_audio_bytes": round(first["bytes_written"]["total"] / stored["audio_bytes"], 3),
        "bytes_written_over_audio_bytes_target": 1.25,
        "commit_s": first["seconds"]["commit"],
        "commit_s_target": target(3.0, 10_000, args.files),
        "manifest_bytes": manifest_bytes,
        "manifest_bytes_target": target(100_000, 600, args.files),
        "corpus_open_s": round(open_seconds, 3),
        "peak_rss_mb_any_process": peak_any,
        "peak_rss_mb_any_process_target": 2048,
        "first_run": first,
        "noop": noop,
        "grow_1pct": grow,
        "not_included": "the Prefect start and per-task overhead (benchmarks/prepare.py --flow)",
    }


if __name__ == "__main__":
    # Libraries may print to standard output: only the JSON goes there.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    result = main()
    os.dup2(real_stdout, 1)
    print(json.dumps(result, indent=1), flush=True)
