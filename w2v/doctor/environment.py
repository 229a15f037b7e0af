"""Diagnose the machine: torch and its accelerator, disk space, the audio libraries, the Prefect API."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import torch

from w2v.doctor.findings import Finding, error, ok, warning

PACKAGES = ("torch", "transformers", "accelerate", "prefect", "soundfile", "soxr", "av", "pyarrow")


def diagnose_environment(data_dir: Path | None = None, corpus_bytes: int | None = None) -> list[Finding]:
    return [_torch(), *_accelerator(), _disk(data_dir or Path.cwd(), corpus_bytes), *_audio(), _prefect()]


def _torch() -> Finding:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    missing = [p for p, v in versions.items() if v == "missing"]
    listed = ", ".join(f"{p} {v}" for p, v in versions.items())
    if missing:
        return error("packages", listed, f"install {', '.join(missing)}: make venv (or pip install -e .)")
    return ok("packages", listed)


def _accelerator() -> list[Finding]:
    if not torch.cuda.is_available():
        return [
            warning(
                "gpu",
                f"no CUDA GPU visible (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})",
                "training runs on the CPU (fine for tests, far too slow for real corpora); on a GPU machine "
                "install a CUDA build of torch and check nvidia-smi",
            )
        ]
    findings = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gib = properties.total_memory / 2**30
        findings.append(ok("gpu", f"GPU {index}: {properties.name}, {gib:.0f} GiB", memory_gib=gib))
        if gib < 16:
            findings.append(
                warning(
                    "gpu_memory",
                    f"GPU {index} has {gib:.0f} GiB: base with fairseq's 87.5 s micro-batches needs ~24 GiB",
                    "lower batch.max_batch_seconds and raise gradient_accumulation, turn on gradient_checkpointing",
                    memory_gib=gib,
                )
            )
    if torch.cuda.is_bf16_supported():
        findings.append(ok("bf16", "bf16 supported: use mixed_precision: bf16"))
    else:
        findings.append(
            warning("bf16", "this GPU has no bf16", "use mixed_precision: fp16 (with its loss scaler) or no")
        )
    return findings


def _disk(folder: Path, corpus_bytes: int | None) -> Finding:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    needed = 3 * corpus_bytes if corpus_bytes else 10 * 2**30
    why = "3× the corpus (shards, staging, checkpoints)" if corpus_bytes else "10 GiB"
    if free < needed:
        return warning(
            "disk",
            f"{free / 2**30:.1f} GiB free under {existing}, less than {why}",
            "free space or point --out / --output at a larger disk",
            free_gib=free / 2**30,
        )
    return ok("disk", f"{free / 2**30:.1f} GiB free under {existing}", free_gib=free / 2**30)


def _audio() -> list[Finding]:
    findings = []
    try:
        import soundfile

        findings.append(ok("libsndfile", f"libsndfile {soundfile.__libsndfile_version__}"))
    except (ImportError, OSError) as problem:
        findings.append(
            error("libsndfile", f"soundfile cannot load libsndfile ({problem})", "apt-get install libsndfile1")
        )
    try:
        import av

        findings.append(ok("ffmpeg", f"PyAV {av.__version__} (FFmpeg {av.library_versions.get('libavcodec')})"))
    except ImportError as problem:
        findings.append(
            warning("ffmpeg", f"PyAV is missing ({problem}): M4A, WebM and others will be rejected", "pip install av")
        )
    return findings


def _prefect() -> Finding:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return ok("prefect", "no PREFECT_API_URL: each flow run starts a temporary local server")
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=3) as response:
            if response.status == 200:
                return ok("prefect", f"Prefect API answers at {url}")
    except (urllib.error.URLError, OSError, ValueError) as problem:
        return error(
            "prefect",
            f"the Prefect API at {url} does not answer ({problem})",
            "start it (w2v server, or prefect server start) or unset PREFECT_API_URL",
        )
    return error("prefect", f"the Prefect API at {url} is not healthy", "check the server's log")
