"""Validation: the pretraining loss and contrastive accuracy on held-out recordings, the same at every call.

The held-out batches, their crops, masks and negatives depend only on the seed, so two evaluations of the
same weights give the same numbers and successive ones are comparable. Ranks split the batches and sum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator

from w2v.data.collate import collate
from w2v.data.corpus import ShardCorpus, split_held_out
from w2v.data.mixture import OpenedCorpora, open_corpora, open_streaming_corpora
from w2v.data.plan import BatchConfig, plan_batches
from w2v.data.streaming import STREAM_REMOTE_SHARDS, StreamingOptions, load_held_out, pinned_sample
from w2v.errors import W2VError
from w2v.run.seeds import seed_for
from w2v.ssl.objective import pretraining_objective, pretraining_targets
from w2v.train.config import TrainConfig
from w2v.train.probe import ProbeComparison, ProbeConfig, hidden_state_index, probe_against_random_init

EVAL_SALT = 977  # keeps held-out draws apart from training's


@dataclass(frozen=True)
class Evaluation:
    loss: float  # per masked frame
    contrastive_loss: float
    diversity_loss: float
    accuracy: float  # share of masked frames whose true quantized frame scores above every distractor
    perplexity: float
    masked_frames: int
    batches: int
    contrastive_chance: float  # the accuracy of a guess among the positive and the negatives: 1 / (K + 1)
    # Codevectors the quantizer can use (groups × per group). A collapsed codebook (perplexity far below this)
    # inflates accuracy: distractors equal to the target are dropped, and with few codes most of them are.
    codevectors: int
    probes: tuple[ProbeComparison, ...] = ()  # linear probes (evaluate_checkpoint with a ProbeConfig)

    def as_record(self, prefix: str = "val_") -> dict[str, Any]:
        record = {f"{prefix}{name}": value for name, value in self.__dict__.items() if name != "probes"}
        if self.probes:
            record[f"{prefix}probe"] = {p.trained.column: p.as_record() for p in self.probes}
        return record


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: Any,
    corpora: Sequence[ShardCorpus],
    config: BatchConfig,
    seed: int,
    max_batches: int | None = None,
) -> Evaluation:
    """Every held-out micro-batch (or the first `max_batches`), split over the ranks."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    device = accelerator.device
    model_config = unwrapped.config
    work = [(c, b) for c in corpora for b in plan_batches(c.num_samples, config, seed, EVAL_SALT)]
    work = work[:max_batches] if max_batches is not None else work
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # loss, contrastive, diversity, correct, masked, ppl, n
    ranks = accelerator.num_processes
    rounds = -(-len(work) // ranks)
    for round_ in range(rounds):
        # Every rank runs the same number of forward passes (FSDP gathers weights in each); a rank past
        # the end repeats a batch and does not count it.
        position = round_ * ranks + accelerator.process_index
        counted = position < len(work)
        position = position if counted else position % len(work)
        corpus, indices = work[position]
        batch = collate(corpus, indices, config, np.random.default_rng([seed, EVAL_SALT, position])).to(device)
        generator = torch.Generator(device=device).manual_seed(seed_for(seed, EVAL_SALT, position))
        targets = pretraining_targets(batch.num_samples, batch.input_values.shape[1], model_config, generator)
        with accelerator.autocast():
            outputs = model(
                batch.input_values,
                attention_mask=batch.attention_mask if model_config.feat_extract_norm == "layer" else None,
                mask_time_indices=targets.mask_time_indices,
            )
        objective = pretraining_objective(outputs, targets, model_config)
        if not counted:
            continue
        sums += torch.stack(
            [
                objective.loss.double(),
                objective.contrastive.double(),
                objective.diversity.double(),
                objective.correct.double(),
                objective.masked.double(),
                outputs.codevector_perplexity.double(),
                torch.ones((), dtype=torch.float64, device=device),
            ]
        )
    totals = accelerator.reduce(sums, reduction="sum")
    if was_training:
        unwrapped.train()
    masked = max(float(totals[4]), 1.0)
    return Evaluation(
        loss=float(totals[0]) / masked,
        contrastive_loss=float(totals[1]) / masked,
        diversity_loss=float(totals[2]) / masked,
        accuracy=float(totals[3]) / masked,
        perplexity=float(totals[5]) / max(float(totals[6]), 1.0),
        masked_frames=int(totals[4]),
        batches=len(work),
        contrastive_chance=1.0 / (model_config.num_negatives + 1),
        codevectors=int(model_config.num_codevector_groups * model_config.num_codevectors_per_group),
    )


def validation_seconds(config: TrainConfig) -> float | None:
    """About the audio validation reads: max_val_batches full micro-batches (None: no bound)."""
    if config.max_val_batches is None:
        return None
    batch = config.batch
    per_batch = batch.max_batch_seconds or (batch.max_batch_samples or 0) / batch.sample_rate
    return config.max_val_batches * per_batch


def evaluate_checkpoint(
    model_dir: Path,
    shards: Sequence[str],
    *,
    config: TrainConfig | None = None,
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    val_share: float | None = None,
    probe: ProbeConfig | None = None,
    verify_shards: bool = True,
    streaming: StreamingOptions | None = STREAM_REMOTE_SHARDS,
) -> Evaluation:
    """Evaluate a from_pretrained folder on the held-out recordings of `shards` (the run's config, if the
    checkpoint has one beside it, decides the split, the batches and the seed).

    With `probe`, also a linear probe for each of speaker and label the shards carry, on the checkpoint and on
    a random initialization of it. Probes use every labelled utterance of `shards`, held out or not: they ask
    what the frozen features encode, and split the utterances themselves. The shards are checked against
    their manifest first, unless `verify_shards` is False.

    Shards at a URL stream through a cache in `cache_dir` bounded by `streaming.limit` (None: staged whole)
    and are read as training's validation reads
    them: the held-out utterances of the fewest seeded shards that hold max_val_batches of audio (the same
    numbers as the run's validation at that checkpoint). Their probes use the utterances of the fewest seeded
    shards holding probe.max_utterances, within what the cache holds at once."""
    from transformers import Wav2Vec2ForPreTraining

    from w2v.data.staging import default_cache_dir

    model_dir = Path(model_dir)
    if config is None:
        saved = model_dir.parent / "trainer.json"
        config = TrainConfig.from_dict(json.loads(saved.read_text())["config"]) if saved.is_file() else TrainConfig()
    if val_share is not None:
        config = dataclasses.replace(config, val_share=val_share)
    transformers.utils.logging.disable_progress_bar()
    try:
        model = Wav2Vec2ForPreTraining.from_pretrained(model_dir)
    except OSError as error:
        raise W2VError(f"{model_dir}: not a model folder ({error}); pass CHECKPOINT/model") from error
    if probe is not None:
        hidden_state_index(model.config, probe.layer)  # a bad layer fails before any work
    # Not inside the checkpoint: a model folder that gets uploaded must not carry a copy of the corpus.
    cache_dir = cache_dir or default_cache_dir()
    if streaming is None:
        corpora, _ = open_corpora(list(shards), cache_dir, storage_options, verify=verify_shards)
        opened = OpenedCorpora(corpora, [], None)
    else:
        opened = open_streaming_corpora(list(shards), cache_dir, streaming, storage_options, verify=verify_shards)
    try:
        return _evaluate_opened(model, opened, config, probe)
    finally:
        if opened.cache is not None:
            opened.cache.close()


def _evaluate_opened(model: Any, opened: OpenedCorpora, config: TrainConfig, probe: ProbeConfig | None) -> Evaluation:
    cache = opened.cache
    held_out = []
    for k, corpus in enumerate(opened.corpora):
        held = split_held_out(corpus, config.val_share)[1]
        if held is not None:
            held_out.append(load_held_out(held, k, cache, validation_seconds(config), config.seed) if cache else held)
    if not held_out:
        raise W2VError(f"no held-out recordings with val_share={config.val_share}; raise it (--val-share 0.2)")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = accelerator.prepare(model)
    evaluation = evaluate(accelerator, model, held_out, config.batch, config.seed, config.max_val_batches)
    if probe is None:
        return evaluation
    with contextlib.ExitStack() as stack:
        corpora = opened.corpora
        if cache is not None:
            corpora = [stack.enter_context(pinned_sample(c, k, cache, probe.max_utterances, config.seed))
                       for k, c in enumerate(corpora)]  # fmt: skip
        probes = probe_against_random_init(
            accelerator.unwrap_model(model), corpora, seed=config.seed, config=probe, device=accelerator.device
        )
    return dataclasses.replace(evaluation, probes=probes)
