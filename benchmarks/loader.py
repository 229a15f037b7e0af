"""Benchmark the training loader against the seed's way (a datasets Dataset + the pretraining example's collator).

One run, the same utterances for both: shards for ours; for the seed, a saved `datasets.Dataset` of the same
utterances already normalized into float32 lists (what the example's `prepare_dataset` map caches), read by a
DataLoader(shuffle=True, batch_size=B) with the example's collator (feature extractor padding, then span
masks and negatives in numpy). B is chosen so that a seed batch holds, on average, the audio our duration
budget allows. Both deliver model-ready batches with masks and negatives (ours drawn on the CPU here, where
a GPU run would draw them on the device). Prints one JSON object: audio-seconds per second, the share of
audio lost to padding or cropping, and masks+negatives for 8 × 15 s against transformers' helpers.
Usage: python benchmarks/loader.py [--minutes 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.data.shard_folders import write_shard_folder
from w2v.audio import normalize
from w2v.data.corpus import ShardCorpus
from w2v.data.loader import LoaderConfig, make_loader
from w2v.data.plan import BatchConfig, plan_batches
from w2v.ssl.masking import dense_negatives, feature_lengths, sample_negatives, span_mask

RATE = 16_000
MASK_PROB, MASK_LENGTH, MIN_MASKS, NUM_NEGATIVES = 0.65, 10, 2, 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def utterance_lengths(minutes: float, seed: int = 0) -> list[int]:
    """Lengths like prepare's output: mostly long pieces of split recordings (≤ 15 s), some short ones."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < minutes * 60 * RATE:
        seconds = 15.0 * rng.uniform(0.55, 1.0) if rng.random() < 0.7 else rng.uniform(1.0, 15.0)
        lengths.append(int(seconds * RATE))
        total += lengths[-1]
    return lengths


class SeedCollator:
    """The pretraining example's DataCollatorForWav2Vec2Pretraining, as it runs there (padding='longest')."""

    def __init__(self, model: Any, feature_extractor: Any) -> None:
        self.model, self.feature_extractor = model, feature_extractor

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        batch = self.feature_extractor.pad(features, padding="longest", return_tensors="pt")
        frames = int(self.model._get_feat_extract_output_lengths(batch["input_values"].shape[-1]))
        if batch.get("attention_mask") is not None:
            batch["sub_attention_mask"] = self.model._get_feature_vector_attention_mask(frames, batch["attention_mask"])
        shape = (batch["input_values"].shape[0], frames)
        config = self.model.config
        mask = _compute_mask_indices(
            shape, config.mask_time_prob, config.mask_time_length, attention_mask=batch.get("sub_attention_mask")
        )
        negatives = _sample_negative_indices(shape, config.num_negatives, mask_time_indices=mask)
        batch["mask_time_indices"] = torch.tensor(mask, dtype=torch.long)
        batch["sampled_negative_indices"] = torch.tensor(negatives, dtype=torch.long)
        return batch


def tiny_model() -> Any:
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        mask_time_prob=MASK_PROB,
        mask_time_length=MASK_LENGTH,
        num_negatives=NUM_NEGATIVES,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    return Wav2Vec2ForPreTraining(config)


def seed_loader(corpus: ShardCorpus, scratch: Path, batch_size: int, model: Any) -> Callable[[], Any]:
    import datasets
    from transformers import Wav2Vec2FeatureExtractor

    def rows() -> Any:
        for k in range(len(corpus)):
            yield {"input_values": normalize(corpus.audio(k), float(corpus.mean[k]), float(corpus.std[k]))}

    datasets.disable_progress_bars()
    features = datasets.Features({"input_values": datasets.Sequence(datasets.Value("float32"))})
    datasets.Dataset.from_generator(rows, features=features).save_to_disk(str(scratch / "seed-dataset"))
    dataset = datasets.load_from_disk(str(scratch / "seed-dataset"))
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, do_normalize=True, return_attention_mask=True
    )
    collator = SeedCollator(model, extractor)

    def make() -> Any:
        return torch.utils.data.DataLoader(dataset, shuffle=True, batch_size=batch_size, collate_fn=collator)

    return make


def drain_seed(make: Callable[[], Any]) -> dict[str, float]:
    audio = padded = 0
    for batch in make():
        mask = batch["attention_mask"]
        audio += int(mask.sum())
        padded += int(mask.numel() - mask.sum())
    return {"audio_samples": audio, "padded_samples": padded}


def drain_ours(
    corpus: ShardCorpus, config: BatchConfig, workers: int, conv: tuple[Any, Any], epochs: int
) -> dict[str, float]:
    """`epochs` passes (ours is fast: one pass would mostly time the workers' start)."""
    batches = sum(len(plan_batches(corpus.num_samples, config, seed=0, epoch=e)) for e in range(epochs))
    loader = make_loader([corpus], config, seed=0, max_batches=batches, loader=LoaderConfig(num_workers=workers))
    audio = cropped = padded = utterances = 0
    generator = torch.Generator().manual_seed(0)
    for batch in loader:
        frames = feature_lengths(batch.num_samples, *conv)
        width = int(feature_lengths(torch.tensor([batch.input_values.shape[1]]), *conv)[0])
        mask = span_mask(frames, width, MASK_PROB, MASK_LENGTH, MIN_MASKS, generator)
        sample_negatives(mask, NUM_NEGATIVES, generator)
        audio += batch.audio_samples
        cropped += batch.cropped_samples
        padded += batch.padded_samples
        utterances += batch.utterance_samples
    return {"audio_samples": audio, "cropped_samples": cropped, "padded_samples": padded, "utterances": utterances}


def best_of(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def masking_comparison(repeat: int) -> dict[str, float]:
    """Masks + negatives for 8 × 15 s (749 frames): ours on the CPU (compiled loops) vs transformers' numpy helpers.

    Ours gives the negatives compactly, (masked frames, negatives), which is what our objective reads;
    transformers gives (batch, frames, negatives). `ours_dense_ms_per_batch` adds our conversion to that
    layout (only the model's own loss needs it) for a like-for-like output.
    """
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    shape = (8, 749)
    lengths = torch.full((8,), 749)
    generator = torch.Generator().manual_seed(0)

    def ours() -> tuple[torch.Tensor, torch.Tensor]:
        mask = span_mask(lengths, 749, MASK_PROB, MASK_LENGTH, MIN_MASKS, generator)
        return mask, sample_negatives(mask, NUM_NEGATIVES, generator)

    def ours_dense() -> None:
        dense_negatives(*ours())

    def theirs() -> None:
        mask = _compute_mask_indices(shape, MASK_PROB, MASK_LENGTH, min_masks=MIN_MASKS)
        _sample_negative_indices(shape, NUM_NEGATIVES, mask_time_indices=mask)

    calls = 20
    ours_s, _ = best_of(lambda: [ours() for _ in range(calls)], repeat)
    dense_s, _ = best_of(lambda: [ours_dense() for _ in range(calls)], repeat)
    theirs_s, _ = best_of(lambda: [theirs() for _ in range(calls)], repeat)
    return {
        "ours_ms_per_batch": round(1000 * ours_s / calls, 3),
        "ours_dense_ms_per_batch": round(1000 * dense_s / calls, 3),
        "transformers_ms_per_batch": round(1000 * theirs_s / calls, 3),
        "speedup": round(theirs_s / ours_s, 2),
        "speedup_dense": round(theirs_s / dense_s, 2),
    }


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-batch-seconds", type=float, default=87.5)
    parser.add_argument("--epochs", type=int, default=10, help="passes of our loader per timing (the seed: 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="w2v-bench-loader-") as tmp:
        scratch = Path(tmp)
        lengths = utterance_lengths(args.minutes)
        corpus = ShardCorpus(write_shard_folder(scratch / "shards", lengths, rows_per_shard=256))
        model = tiny_model()
        conv = (model.config.conv_kernel, model.config.conv_stride)
        batch_size = max(1, round(args.max_batch_seconds * RATE / float(np.mean(lengths))))
        started = time.perf_counter()
        make_seed = seed_loader(corpus, scratch, batch_size, model)
        log(f"seed dataset built in {time.perf_counter() - started:.1f} s; batch size {batch_size}")
        crop = BatchConfig(max_batch_seconds=args.max_batch_seconds)
        pad = BatchConfig(max_batch_seconds=args.max_batch_seconds, mode="pad")
        runs: dict[str, Callable[[], Any]] = {
            "seed": lambda: drain_seed(make_seed),
            "ours_crop_inline": lambda: drain_ours(corpus, crop, 0, conv, args.epochs),
            "ours_crop_2_workers": lambda: drain_ours(corpus, crop, 2, conv, args.epochs),
            "ours_pad_inline": lambda: drain_ours(corpus, pad, 0, conv, args.epochs),
        }
        seconds: dict[str, float] = dict.fromkeys(runs, float("inf"))
        results: dict[str, Any] = {}
        for round_number in range(args.repeat):
            for name, run in runs.items():
                elapsed, results[name] = best_of(run, 1)
                seconds[name] = min(seconds[name], elapsed)
                log(f"round {round_number + 1}: {name} {elapsed:.2f} s")
        masking = masking_comparison(args.repeat)

    rate = {name: results[name]["audio_samples"] / RATE / seconds[name] for name in runs}
    seed_waste = results["seed"]["padded_samples"] / (
        results["seed"]["audio_samples"] + results["seed"]["padded_samples"]
    )
    crop_loss = results["ours_crop_inline"]["cropped_samples"] / results["ours_crop_inline"]["utterances"]
    pad_result = results["ours_pad_inline"]
    pad_waste = (pad_result["padded_samples"] + pad_result["cropped_samples"]) / (
        pad_result["audio_samples"] + pad_result["padded_samples"] + pad_result["cropped_samples"]
    )
    return {
        "benchmark": "loader",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "audio_seconds": round(sum(lengths) / RATE, 1),
        "utterances": len(lengths),
        "max_batch_seconds": args.max_batch_seconds,
        "our_epochs_per_timing": args.epochs,
        "seed_batch_size": batch_size,
        "audio_seconds_per_second": {name: round(value, 1) for name, value in rate.items()},
        "anchor": "seed: datasets.Dataset of the same normalized audio, shuffled DataLoader, the example's collator",
        "ours_vs_seed": {name: round(rate[name] / rate["seed"], 1) for name in runs if name != "seed"},
        "wasted_share": {
            "seed_padding": round(seed_waste, 4),
            "ours_crop_cropped": round(crop_loss, 4),
            "ours_pad_padded_or_cropped": round(pad_waste, 4),
        },
        "masks_and_negatives_8x15s_cpu_1_thread": masking,
        "targets": {"ours_vs_seed": ">= 20", "wasted_share": "<= 0.05", "masks_and_negatives_speedup": ">= 10"},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
