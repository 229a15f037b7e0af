"""Checkpoints mirrored to a bucket as they are written, and the newest one brought back on resume.

A preemptible machine that disappears takes its disk with it; a run whose checkpoints are in the bucket
loses at most the updates since the last one. Layout at the mirror's URL:

URL/checkpoints/step-00001000/   a checkpoint as w2v.upload leaves it: every file read back and checked,
                                 _UPLOAD_COMPLETE.json (the files and their sha256) written last
URL/checkpoints/LATEST           the newest complete checkpoint's name, written after its marker
URL/best/                        RUN/best (the lowest validation loss so far), uploaded the same way before
                                 the checkpoint of its step; a successor that resumes without RUN/best
                                 brings it back when it is not newer than the checkpoint resumed

Uploads run on one background thread, so training goes on while a checkpoint travels. Each checkpoint is
first snapshotted with hard links (RUN/.mirror/NAME, with a copy of metrics.jsonl), so the run may delete its
local copy (keep-last) while the upload reads the snapshot. When checkpoints come faster than they upload,
only the newest waiting one is sent. After each upload the pointer moves and the bucket keeps the last K.
An upload that still fails after its retries is remembered: the run stops at its next checkpoint (or its
end) and says what failed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from w2v.errors import W2VError
from w2v.run.checkpoint import BEST, CHECKPOINTS, TRAINER_STATE, complete_checkpoints
from w2v.upload import MARKER, RetryPolicy, file_sha256, retrying, upload_folder

logger = logging.getLogger("w2v.run")

LATEST = "LATEST"
METRICS = "metrics.jsonl"
SNAPSHOTS = ".mirror"


class MirrorError(W2VError):
    """A checkpoint could not be mirrored, or one in the bucket could not be brought back."""


@dataclass(frozen=True)
class MirrorConfig:
    """Where a run's checkpoints are mirrored (an fsspec URL; they go under URL/checkpoints/), with what
    options, how many the bucket keeps, and how long each transfer is retried before the run gives up."""

    url: str
    storage_options: dict[str, Any] | None = field(default=None, repr=False)  # may hold credentials
    keep_last: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def checkpoints_url(self) -> str:
        return f"{self.url.rstrip('/')}/{CHECKPOINTS}"

    @property
    def best_url(self) -> str:
        return f"{self.url.rstrip('/')}/{BEST}"


class CheckpointMirror:
    """The background uploader of one run's checkpoints (used by the run's main process only)."""

    def __init__(self, config: MirrorConfig, run_dir: Path) -> None:
        self.config = config
        self._run_dir = Path(run_dir)
        self._snapshots = self._run_dir / SNAPSHOTS
        shutil.rmtree(self._snapshots, ignore_errors=True)  # a killed run's snapshots: links to old files
        self._submitted = 0
        self._waiting: Path | None = None
        self._waiting_best: Path | None = None
        self._closing = False
        self._error: str | None = None
        self._uploaded: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
        self._thread.start()

    @property
    def uploaded(self) -> list[str]:
        """The checkpoints mirrored so far, in order."""
        with self._changed:
            return list(self._uploaded)

    @property
    def error(self) -> str | None:
        """Why mirroring stopped, or None while it works."""
        with self._changed:
            if self._error is None and not self._thread.is_alive() and not self._closing:
                return f"the upload thread of {self.config.url} ended unexpectedly"
            return self._error

    def submit(self, checkpoint: Path) -> None:
        """Mirror `checkpoint` (a complete checkpoint folder) in the background. Raises MirrorError when it
        cannot be snapshotted (a full disk, or the folder is gone)."""
        self._submitted += 1
        folder = self._snapshots / f"{self._submitted:06d}" / checkpoint.name  # each its own: none is reused
        try:
            snapshot = _snapshot(checkpoint, folder, self._run_dir / METRICS)
        except OSError as error:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise MirrorError(f"{checkpoint}: cannot be snapshotted for {self.config.url}: {error}") from error
        with self._changed:
            if self._waiting is not None:
                shutil.rmtree(self._waiting.parent, ignore_errors=True)  # a newer one supersedes it
            self._waiting = snapshot
            self._changed.notify_all()

    def submit_best(self, best: Path) -> None:
        """Mirror RUN/best to URL/best in the background, before any checkpoint submitted with it. Raises
        MirrorError when it cannot be snapshotted."""
        self._submitted += 1
        folder = self._snapshots / f"{self._submitted:06d}" / best.name
        try:
            snapshot = _snapshot(best, folder, None)
        except OSError as error:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise MirrorError(f"{best}: cannot be snapshotted for {self.config.url}: {error}") from error
        with self._changed:
            if self._waiting_best is not None:
                shutil.rmtree(self._waiting_best.parent, ignore_errors=True)
            self._waiting_best = snapshot
            self._changed.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Wait (at most `timeout` seconds) for the upload under way and the one waiting; then `error` says
        whether one failed."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            shutil.rmtree(self._snapshots, ignore_errors=True)

    def _work(self) -> None:
        while True:
            with self._changed:
                while self._waiting is None and self._waiting_best is None and not self._closing:
                    self._changed.wait()
                # The best first: the checkpoint of its step records its score, so it must not arrive alone.
                is_best = self._waiting_best is not None
                if is_best:
                    sending, self._waiting_best = self._waiting_best, None
                else:
                    sending, self._waiting = self._waiting, None
                if sending is None:
                    return
            try:
                if is_best:
                    upload_folder(sending, self.config.best_url, self.config.storage_options, self.config.retry)
                    continue
                publish_checkpoint(sending, self.config)
            except Exception as error:  # any failure must reach the run, not die with the thread
                with self._changed:
                    what = "the best model" if is_best else f"checkpoint {sending.name}"
                    self._error = f"{what} not mirrored to {self.config.url}: {error}"
                return  # the run stops at its next checkpoint; close() removes what still waits
            finally:
                shutil.rmtree(sending.parent, ignore_errors=True)
            with self._changed:
                self._uploaded.append(sending.name)
            logger.info("checkpoint %s mirrored to %s", sending.name, self.config.checkpoints_url)


def _snapshot(checkpoint: Path, snapshot: Path, metrics: Path | None) -> Path:
    """`checkpoint`'s files hard-linked (copied where links are not possible) under `snapshot`, with a copy
    of the run's metrics as they are now (when given)."""
    shutil.rmtree(snapshot, ignore_errors=True)
    for source in sorted(checkpoint.rglob("*")):
        if not source.is_file():
            continue
        target = snapshot / source.relative_to(checkpoint)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    if metrics is not None and metrics.is_file():
        shutil.copy2(metrics, snapshot / METRICS)
    return snapshot


def publish_checkpoint(folder: Path, config: MirrorConfig) -> None:
    """Upload `folder` as URL/checkpoints/NAME (read back and checked), point LATEST at it, then delete the
    bucket's checkpoints older than the newest `keep_last` complete ones up to NAME, and those newer than
    NAME (the bucket mirrors the run's history). Raises UploadError."""
    upload_folder(folder, f"{config.checkpoints_url}/{folder.name}", config.storage_options, config.retry)
    fs, root = fsspec.core.url_to_fs(config.checkpoints_url, **(config.storage_options or {}))
    root = root.rstrip("/")
    pointer = f"{root}/{LATEST}"
    retrying(lambda: fs.pipe_file(pointer, (folder.name + "\n").encode()), config.retry, f"{pointer}: writing")
    listed = retrying(lambda: _remote_steps(fs, root), config.retry, f"{config.checkpoints_url}: listing")
    complete = retrying(lambda: _complete_remote(fs, root), config.retry, f"{config.checkpoints_url}: listing")
    kept = [name for name in complete if name <= folder.name][-config.keep_last :]
    oldest_kept = kept[0] if kept else folder.name
    for name in listed:
        # Older than the last K, or newer than this one: left by a history this run replaced (it started
        # over, or resumed from an older checkpoint), which a successor must not resume.
        if name < oldest_kept or name > folder.name:
            remove = functools.partial(_remove_tree, fs, f"{root}/{name}")
            retrying(remove, config.retry, f"{root}/{name}: deleting")


def bring_back_newest(config: MirrorConfig, run_dir: Path) -> Path | None:
    """When the bucket holds a newer complete checkpoint than RUN/checkpoints (a fresh machine holds none),
    fetch it there and return it; else None. A run folder without metrics.jsonl gets the checkpoint's copy,
    so the learning curve survives the machine. Raises MirrorError, or UploadError when unreachable."""
    name = newest_remote_checkpoint(config)
    local = complete_checkpoints(run_dir)
    if name is None or (local and local[-1].name >= name):
        return None
    folder = fetch_checkpoint(config, name, Path(run_dir) / CHECKPOINTS)
    copy = folder / METRICS
    if copy.is_file():
        if (Path(run_dir) / METRICS).is_file():
            copy.unlink()
        else:
            os.replace(copy, Path(run_dir) / METRICS)
    logger.info("resuming from %s/%s, newer than any checkpoint in %s", config.checkpoints_url, name, run_dir)
    return folder


def newest_remote_checkpoint(config: MirrorConfig) -> str | None:
    """The name of the newest complete checkpoint in the bucket (the one LATEST names, when it is complete;
    else the newest with a marker), or None when there is none. Raises UploadError when unreachable."""
    fs, root = fsspec.core.url_to_fs(config.checkpoints_url, **(config.storage_options or {}))
    root = root.rstrip("/")
    url = config.checkpoints_url
    named = retrying(lambda: _read_pointer(fs, root), config.retry, f"{url}/{LATEST}: reading")
    if named is not None and retrying(lambda: fs.exists(f"{root}/{named}/{MARKER}"), config.retry, url):
        return named
    complete = retrying(lambda: _complete_remote(fs, root), config.retry, f"{url}: listing")
    return complete[-1] if complete else None


def fetch_checkpoint(config: MirrorConfig, name: str, checkpoints_dir: Path) -> Path:
    """Download the bucket's checkpoint `name` into `checkpoints_dir`/NAME, every file checked against the
    marker's sha256 (a file that differs is fetched once more), renamed into place whole. Its metrics copy
    is left beside it as NAME/metrics.jsonl. Raises MirrorError (or UploadError when unreachable)."""
    fs, root = fsspec.core.url_to_fs(config.checkpoints_url, **(config.storage_options or {}))
    final = checkpoints_dir / name
    _fetch_folder(fs, f"{root.rstrip('/')}/{name}", f"{config.checkpoints_url}/{name}", final, config)
    return final


def bring_back_best(config: MirrorConfig, run_dir: Path, step: int) -> Path | None:
    """When RUN/best is missing and the bucket's URL/best is complete and not newer than `step` (the
    checkpoint the run resumes: a best of a history the run replaced is left alone), fetch it to RUN/best
    and return it; else None. Raises MirrorError, or UploadError when unreachable."""
    best = Path(run_dir) / BEST
    if best.exists():
        return None
    fs, root = fsspec.core.url_to_fs(config.best_url, **(config.storage_options or {}))
    root, url = root.rstrip("/"), config.best_url
    if not retrying(lambda: fs.exists(f"{root}/{MARKER}"), config.retry, f"{url}: reading {MARKER}"):
        return None
    state = json.loads(retrying(lambda: fs.cat_file(f"{root}/{TRAINER_STATE}"), config.retry, url))
    if int(state.get("step", step + 1)) > step:
        return None
    _fetch_folder(fs, root, url, best, config)
    logger.info("the best model so far (step %s) brought back from %s", state["step"], url)
    return best


def _fetch_folder(fs: Any, remote: str, url: str, final: Path, config: MirrorConfig) -> None:
    """The folder at `remote` (its marker lists the files) into `final`, each file checked against its sha256
    (fetched once more if it differs) in a temporary folder renamed into place whole."""
    listed = json.loads(retrying(lambda: fs.cat_file(f"{remote}/{MARKER}"), config.retry, f"{url}: reading marker"))
    temporary = final.with_name(f".fetch-{final.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    for relative, expected in sorted(listed["files"].items()):
        target = temporary / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            get = functools.partial(_get, fs, f"{remote}/{relative}", target, url)
            retrying(get, config.retry, f"{url}/{relative}")
            if target.stat().st_size == expected["bytes"] and file_sha256(target) == expected["sha256"]:
                break
            if attempt == 1:
                shutil.rmtree(temporary, ignore_errors=True)
                raise MirrorError(
                    f"{url}/{relative}: differs from its upload marker (sha256 {expected['sha256'][:12]}…) after "
                    "fetching it twice; the bucket's copy is damaged: resume from another checkpoint"
                )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)


def _remote_steps(fs: Any, root: str) -> list[str]:
    """The names of the checkpoint folders under `root`, oldest first ([] when there is no such folder)."""
    fs.invalidate_cache()
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    names = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.get("type") == "directory"]
    return sorted(name for name in names if name.startswith("step-"))


def _complete_remote(fs: Any, root: str) -> list[str]:
    return [name for name in _remote_steps(fs, root) if fs.exists(f"{root}/{name}/{MARKER}")]


def _get(fs: Any, remote: str, target: Path, url: str) -> None:
    try:
        fs.get_file(remote, str(target))
    except FileNotFoundError:  # not a hiccup to retry: the marker names a file the bucket lacks
        raise MirrorError(f"{url}: {remote.rsplit('/', 1)[-1]} is listed in its marker but missing") from None


def _read_pointer(fs: Any, root: str) -> str | None:
    try:
        named = fs.cat_file(f"{root}/{LATEST}").decode().strip()
    except FileNotFoundError:
        return None
    return str(named) if named.startswith("step-") else None


def _remove_tree(fs: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
