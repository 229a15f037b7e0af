"""Benchmark training on one CUDA GPU: precisions and torch.compile, the seed's way, masks and negatives.

On the same synthetic shards and the same audio per step (a `max_batch_seconds` budget, crop mode, like
configs/base.yaml), warm-up steps left out of the timings and the GPU synchronized before each clock:
  training     the preset's step (our loader + `w2v.train.step.train_step`, as w2v/train/recipe.py runs it:
               fused AdamW, Accelerate, `torch.compile` after `prepare`) in fp32 (torch's defaults: fp32
               matmuls, cuDNN convolutions allowed TF32), tf32 (matmuls too: float32_matmul_precision
               "high"), bf16 (Accelerator(mixed_precision="bf16")) and bf16_compile; each against fp32.
  seed         the pretraining example's loop (benchmarks/train.py's `run_seed`: a datasets.Dataset of the
               same audio, its numpy collator, padded batches of B utterances, B chosen for the same audio
               per step) on the GPU, in fp32 and under bf16 autocast, against ours in the same precision.
  masks        masks + negatives for 8 × 15 s on the GPU (w2v.ssl.masking) against transformers' numpy
               helpers on the CPU (as the example's collator runs them).
Each training run is a process of its own (fresh cuDNN plans, compile caches and memory peaks) reading the
same batches. Crop mode gives nearly every batch a new width, so kernels meet new shapes at every step, as
in a real run: the main figures are over `--steps` new batches after `--warmup`; `repeated_shapes` times
the same `--steps` batches once more (every shape seen before), which shows what new shapes cost.
The seed's B is our first run's audio per step in utterances of the mean length (same audio per step).
Both models are built by w2v.train.presets (fairseq's codevector perplexity: transformers 5's has NaN
gradients for the base preset). A run that fails or outlasts
--run-timeout is reported as {"error": ...} and the others go on (torch 2.11's inductor failed on this
model's dynamic shapes; TORCHINDUCTOR_COALESCE_TILING_ANALYSIS=0 got past that but not through compiling).
Prints one JSON object: audio-seconds (real audio, cropped-away or padding excluded) per second, steps
per second, peak GPU memory, and the ratios. Refuses (exit 2) without a CUDA device.
Usage: python benchmarks/gpu.py [--steps 15] [--warmup 8] [--preset base] [--modes fp32,tf32,bf16,bf16_compile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loader import MASK_LENGTH, MASK_PROB, MIN_MASKS, NUM_NEGATIVES, RATE, seed_loader, utterance_lengths
from tests.data.shard_folders import write_shard_folder
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig
from w2v.ssl.masking import dense_negatives, sample_negatives, span_mask
from w2v.ssl.objective import gumbel_temperature
from w2v.train.config import GumbelConfig, MaskingConfig, ModelConfig, OptimConfig
from w2v.train.presets import build_model

MODES = ("fp32", "tf32", "bf16", "bf16_compile")
# Diagnostics, not run by default, to find what makes bf16 slow on new shapes: cuDNN off (PyTorch's own
# convolutions), cuBLAS instead of cuBLASLt for the matrix products, flash attention off.
EXTRA_MODES = ("bf16_no_cudnn", "bf16_cublas", "bf16_no_sdp_flash")
DEVICE = "cuda"  # a module constant, so that a CPU smoke test can swap it
GIB = 2**30


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh_model(preset: str) -> Any:
    """The preset as w2v trains it (its quantizer's perplexity has a finite gradient: see w2v.train.presets)."""
    torch.manual_seed(0)
    return build_model(ModelConfig(preset=preset), MaskingConfig())


def summary(seconds: float, steps: int, audio_samples: int) -> dict[str, Any]:
    return {
        "audio_seconds_per_second": round(audio_samples / RATE / seconds, 1),
        "steps_per_second": round(steps / seconds, 3),
        "audio_seconds_per_step": round(audio_samples / RATE / steps, 2),
        "timed_seconds": round(seconds, 2),
    }


def memory() -> dict[str, float]:
    return {
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
    }


def run_ours(corpus: ShardCorpus, batch: BatchConfig, args: argparse.Namespace) -> dict[str, Any]:
    """`warmup` + `steps` updates of our step from the stream's start (every mode reads the same batches),
    then the same `steps` batches again (shapes seen before) when `repeat_shapes`."""
    from accelerate import Accelerator

    from w2v.train.step import train_step

    mode = args.mode
    if mode == "tf32":
        torch.set_float32_matmul_precision("high")
    if mode.endswith("_no_cudnn"):
        torch.backends.cudnn.enabled = False
    if mode.endswith("_cublas"):  # cuBLAS rather than cuBLASLt (whose per-shape heuristics may cost)
        torch.backends.cuda.preferred_blas_library("cublas")
    if mode.endswith("_no_sdp_flash"):  # attention by the memory-efficient kernel instead
        torch.backends.cuda.enable_flash_sdp(False)
    accelerator = Accelerator(
        mixed_precision="bf16" if mode.startswith("bf16") else "no", step_scheduler_with_optimizer=False
    )
    optim, gumbel = OptimConfig(), GumbelConfig()
    model = fresh_model(args.preset)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if mode == "bf16_compile":
        model = torch.compile(model)  # as w2v/train/recipe.py applies config.compile
    loader = LoaderConfig(num_workers=args.workers)
    step = 0

    def updates(batches: Iterator[Any], count: int) -> dict[str, Any]:
        nonlocal step
        audio, data_seconds, losses, skipped = 0, 0.0, [], 0
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(count):
            temperature = gumbel_temperature(step, gumbel.max_temperature, gumbel.min_temperature, gumbel.decay)
            accelerator.unwrap_model(model).set_gumbel_temperature(temperature)
            result = train_step(
                accelerator,
                model,
                optimizer,
                scheduler,
                batches,
                accumulation=1,
                max_grad_norm=optim.max_grad_norm,
                seed=0,
            )
            step += 1
            audio += result.audio_samples
            data_seconds += result.data_seconds
            losses.append(result.loss)
            skipped += int(result.skipped)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return {
            **summary(seconds, count, audio),
            "data_wait_share": round(data_seconds / seconds, 4),
            "mean_loss": round(float(np.mean(losses)), 4),
            "skipped_steps": skipped,
        }

    batches = iter(make_loader([corpus], batch, seed=0, loader=loader))
    warmup = updates(batches, args.warmup) if args.warmup > 0 else {"timed_seconds": 0.0, "skipped_steps": 0}
    out = updates(batches, args.steps)
    out.update(memory(), warmup_seconds=warmup["timed_seconds"], warmup_skipped_steps=warmup["skipped_steps"])
    del batches
    if args.repeat_shapes:
        again = iter(make_loader([corpus], batch, seed=0, loader=loader))
        for _ in range(args.warmup):  # the warm-up's batches: read, not trained on
            next(again)
        out["repeated_shapes"] = updates(again, args.steps)
    if mode == "bf16_compile":
        from torch._dynamo.utils import counters

        out["dynamo"] = {
            "unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
        }
    return out


def run_seed(make_seed: Callable[[], Any], args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks/train.py's `run_seed` (the example's inner loop) with the batches and model on the GPU, under
    bf16 autocast when asked (the forward wrapped as Accelerate wraps it), timing after `warmup` updates."""
    device = torch.device(DEVICE)
    model = fresh_model(args.preset).to(device)
    if args.mode == "bf16":
        model.forward = torch.autocast(DEVICE, dtype=torch.bfloat16)(model.forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    torch.manual_seed(0)  # the same shuffles, so both precisions read the same batches
    loaders = itertools.chain.from_iterable(make_seed() for _ in range(1000))
    batches: Iterator[dict[str, torch.Tensor]] = itertools.islice(loaders, args.warmup + args.steps)
    audio, losses = 0, []
    for completed, cpu_batch in enumerate(batches):
        if completed == args.warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        batch = {key: value.to(device, non_blocking=True) for key, value in cpu_batch.items()}
        num_losses = batch["mask_time_indices"].sum()
        batch.pop("sub_attention_mask", None)
        outputs = model(**batch)
        outputs.loss.backward()
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(1 / num_losses)
        optimizer.step()
        optimizer.zero_grad()
        model.set_gumbel_temperature(gumbel_temperature(completed + 1, 2.0, 0.5, 0.999995))
        if completed >= args.warmup:
            audio += int(cpu_batch["attention_mask"].sum())
            losses.append(outputs.loss.detach() / num_losses)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    mean_loss = float(torch.stack(losses).mean())
    return {**summary(seconds, args.steps, audio), **memory(), "mean_loss": round(mean_loss, 4)}


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process: ours or the seed's, in `args.mode`."""
    corpus = ShardCorpus(Path(args.shards))
    if args.child == "ours":
        batch = BatchConfig(max_batch_seconds=args.max_batch_seconds, max_sample_seconds=args.max_sample_seconds)
        return run_ours(corpus, batch, args)
    with tempfile.TemporaryDirectory(prefix="w2v-bench-gpu-seed-") as tmp:
        started = time.perf_counter()
        make_seed = seed_loader(corpus, Path(tmp), args.seed_batch_size, fresh_model(args.preset))
        log(f"seed dataset built in {time.perf_counter() - started:.1f} s; batch size {args.seed_batch_size}")
        return run_seed(make_seed, args)


def masking_comparison(repeat: int, calls: int = 50) -> dict[str, float]:
    """Masks + negatives for 8 × 15 s (749 frames): ours on the GPU vs transformers' numpy helpers on the CPU."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    device = torch.device(DEVICE)
    shape = (8, 749)
    lengths = torch.full((8,), 749, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def ours() -> tuple[torch.Tensor, torch.Tensor]:
        mask = span_mask(lengths, 749, MASK_PROB, MASK_LENGTH, MIN_MASKS, generator)
        return mask, sample_negatives(mask, NUM_NEGATIVES, generator)

    def ours_dense() -> None:
        dense_negatives(*ours())

    def theirs() -> tuple[np.ndarray, np.ndarray]:
        mask = _compute_mask_indices(shape, MASK_PROB, MASK_LENGTH, min_masks=MIN_MASKS)
        return mask, _sample_negative_indices(shape, NUM_NEGATIVES, mask_time_indices=mask)

    def theirs_to_gpu() -> None:
        mask, negatives = theirs()
        torch.from_numpy(mask).to(device)
        torch.from_numpy(negatives).to(device)

    def timed(run: Callable[[], Any]) -> float:
        run()  # warm-up (kernels, caches)
        best = float("inf")
        for _ in range(repeat):
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(calls):
                run()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        return best / calls

    ours_s, dense_s, theirs_s, copied_s = timed(ours), timed(ours_dense), timed(theirs), timed(theirs_to_gpu)
    return {
        "ours_gpu_ms_per_batch": round(1000 * ours_s, 3),
        "ours_gpu_dense_ms_per_batch": round(1000 * dense_s, 3),
        "transformers_numpy_ms_per_batch": round(1000 * theirs_s, 3),
        "transformers_numpy_then_to_gpu_ms_per_batch": round(1000 * copied_s, 3),
        "speedup": round(theirs_s / ours_s, 2),
        "speedup_dense": round(theirs_s / dense_s, 2),
        "speedup_vs_numpy_then_to_gpu": round(copied_s / ours_s, 2),
    }


def machine() -> dict[str, Any]:
    import accelerate
    import transformers

    properties = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(properties.total_memory / GIB, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TORCHINDUCTOR_", "TORCH_LOGS", "CUDA_"))},
    }


def spawn(kind: str, mode: str, shards: Path, batch_size: int, passed: list[str], timeout: float) -> dict[str, Any]:
    """Run one training measurement in a process of its own; its stderr streams through, its stdout is JSON."""
    command = [sys.executable, __file__, *passed, "--child", kind, "--mode", mode, "--shards", str(shards)]
    command += ["--seed-batch-size", str(batch_size)]
    log(f"{kind} {mode}: starting")
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{kind} {mode}: stopped after {timeout:.0f} s (--run-timeout)")
        return {"error": f"stopped after {timeout:.0f} s (--run-timeout)"}
    if done.returncode != 0:
        log(f"{kind} {mode}: failed with exit code {done.returncode}")
        return {"error": f"exit code {done.returncode} (its traceback is in the log)"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"{kind} {mode}: {json.dumps(result)}")
    return result


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--steps", type=int, default=15, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=8, help="updates before the clock starts (compile needs some)")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio in the synthetic shards")
    parser.add_argument("--max-batch-seconds", type=float, default=87.5)
    parser.add_argument("--max-sample-seconds", type=float, default=15.625)
    parser.add_argument("--workers", type=int, default=2, help="our loader's worker processes (the CLI default)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES + EXTRA_MODES)}")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed's loop")
    parser.add_argument("--no-repeat-shapes", dest="repeat_shapes", action="store_false", help="skip the second pass")
    parser.add_argument("--repeat", type=int, default=3, help="timings of masks + negatives (best of)")
    parser.add_argument("--run-timeout", type=float, default=180.0, help="seconds one training run may take")
    for hidden in ("--child", "--mode", "--shards"):  # one run, in a process of its own (see `spawn`)
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seed-batch-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv), parser


def main() -> dict[str, Any]:
    args, parser = parse()
    if args.child:
        return child(args)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES) - set(EXTRA_MODES)
    if unknown:
        expected = ", ".join(MODES + EXTRA_MODES)
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; expected some of {expected}")
    passed = list(sys.argv[1:])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="w2v-bench-gpu-") as tmp:
        lengths = utterance_lengths(args.minutes)
        shards = write_shard_folder(Path(tmp) / "shards", lengths, rows_per_shard=256)
        training = {mode: spawn("ours", mode, shards, 0, passed, args.run_timeout) for mode in modes}
        # The seed's batch size B: our runs' audio per step (short batches included) in utterances of the
        # mean length, so both train on the same audio per step on average (the budget, if ours failed).
        measured = [r["audio_seconds_per_step"] for r in training.values() if "audio_seconds_per_step" in r]
        per_step = measured[0] if measured else args.max_batch_seconds
        batch_size = max(1, round(per_step * RATE / float(np.mean(lengths))))
        seed = {}
        if not args.no_seed:
            seed = {m: spawn("seed", m, shards, batch_size, passed, args.run_timeout) for m in ("fp32", "bf16")}
    masking = masking_comparison(args.repeat)
    log(f"masks and negatives: {json.dumps(masking)}")

    def ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> float | None:
        if not ours or not theirs or "error" in ours or "error" in theirs:
            return None
        return round(ours["audio_seconds_per_second"] / theirs["audio_seconds_per_second"], 2)

    return {
        "benchmark": "gpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "preset": args.preset,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "max_batch_seconds": args.max_batch_seconds,
        "max_sample_seconds": args.max_sample_seconds,
        "loader_workers": args.workers,
        "audio_seconds_in_shards": round(sum(lengths) / RATE, 1),
        "training": training,
        "anchor": "fp32: torch's defaults (fp32 matmuls; cuDNN convolutions may use TF32), measured in this run",
        "vs_fp32": {mode: ratio(result, training.get("fp32")) for mode, result in training.items() if mode != "fp32"},
        "seed_batch_size": batch_size,
        "seed_batch_size_from": f"our first run's audio per step ({per_step} s) / mean utterance length",
        "seed": seed,
        "ours_vs_seed": {
            "fp32": ratio(training.get("fp32"), seed.get("fp32")),
            "bf16": ratio(training.get("bf16"), seed.get("bf16")),
            "bf16_compile_vs_seed_bf16": ratio(training.get("bf16_compile"), seed.get("bf16")),
        },
        "masks_and_negatives_8x15s_gpu": masking,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    if not torch.cuda.is_available() and not {"-h", "--help"} & set(sys.argv[1:]):
        print("benchmarks/gpu.py: no CUDA device here; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(main(), indent=None if "--child" in sys.argv else 1))
