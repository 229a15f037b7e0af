"""Linear probes: how well a frozen model's features predict a shard column (speaker, label) per utterance.

Features are one transformer layer's hidden states, mean-pooled over each utterance's unpadded frames. A
seeded, stratified split by utterance id holds some utterances of every class out; a multinomial logistic
regression on standardized features is fitted by full-batch L-BFGS. The same probe on a randomly initialized
model of the same architecture says how much of the accuracy pretraining earned.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from w2v.data.collate import collate
from w2v.data.corpus import ShardCorpus
from w2v.data.plan import BatchConfig
from w2v.errors import W2VError
from w2v.shards.index import split_key

logger = logging.getLogger("w2v.probe")
PROBE_COLUMNS = ("speaker", "label")


@dataclass(frozen=True)
class ProbeConfig:
    layer: int = -1  # index into hidden_states: 0 the transformer's input, k the output of block k, -1 the last
    test_share: float = 0.25  # of each class's utterances (at least one held out, at least one kept)
    weight_decay: float = 1e-3  # L2 on the weights, added to the mean cross-entropy
    max_iterations: int = 200  # L-BFGS iterations
    max_utterances: int | None = 4000  # labelled utterances probed per column (a seeded sample beyond that)
    max_batch_seconds: float = 40.0  # audio per forward pass when embedding

    def __post_init__(self) -> None:
        if not 0 < self.test_share < 1:
            raise W2VError(f"probe test_share must lie in (0, 1), got {self.test_share}")
        if self.weight_decay < 0 or self.max_iterations < 1 or self.max_batch_seconds <= 0:
            raise W2VError("probe: weight_decay ≥ 0, max_iterations ≥ 1 and max_batch_seconds > 0 expected")
        if self.max_utterances is not None and self.max_utterances < 4:
            raise W2VError(f"probe max_utterances must be at least 4, got {self.max_utterances}")


@dataclass(frozen=True)
class ProbeResult:
    column: str
    classes: int  # classes with at least two utterances (the others are left out)
    train: int  # utterances
    test: int
    accuracy: float  # on the test utterances
    chance: float  # the largest class's share of the test utterances


@dataclass(frozen=True)
class ProbeComparison:
    """The probe on the checkpoint and on a random initialization: same utterances, same split."""

    trained: ProbeResult
    random_init: ProbeResult
    layer: int

    def as_record(self) -> dict[str, Any]:
        t = self.trained
        return {
            "accuracy": t.accuracy,
            "random_init_accuracy": self.random_init.accuracy,
            "chance": t.chance,
            "classes": t.classes,
            "train": t.train,
            "test": t.test,
            "layer": self.layer,
        }


@dataclass(frozen=True, eq=False)
class LinearClassifier:
    mean: np.ndarray  # (features,): standardization fitted on the training utterances
    scale: np.ndarray
    weight: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weight + self.bias
        return np.asarray(np.argmax(logits, axis=1), dtype=np.int64)


def probe_against_random_init(
    model: Wav2Vec2ForPreTraining,
    corpora: Sequence[ShardCorpus],
    *,
    seed: int,
    config: ProbeConfig,
    device: torch.device | str = "cpu",
) -> tuple[ProbeComparison, ...]:
    """Probe every column of PROBE_COLUMNS the shards carry, on `model` and on a random model like it."""
    trained = probe_columns(model, corpora, PROBE_COLUMNS, seed=seed, config=config, device=device)
    if not trained:
        return ()
    fresh: Any = random_init_like(model, seed)  # Any: transformers types `.to` for dtypes only
    fresh.to(device)
    baseline = probe_columns(fresh, corpora, [r.column for r in trained], seed=seed, config=config, device=device)
    return tuple(ProbeComparison(t, r, config.layer) for t, r in zip(trained, baseline, strict=True))


def random_init_like(model: Wav2Vec2ForPreTraining, seed: int) -> Wav2Vec2ForPreTraining:
    """A freshly initialized model of the same config, the same for the same seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Wav2Vec2ForPreTraining(copy.deepcopy(model.config))


def probe_columns(
    model: Wav2Vec2ForPreTraining,
    corpora: Sequence[ShardCorpus],
    columns: Sequence[str],
    *,
    seed: int,
    config: ProbeConfig,
    device: torch.device | str = "cpu",
) -> list[ProbeResult]:
    """A probe for each of `columns` with at least two classes of two utterances; each utterance is embedded
    once however many columns use it."""
    hidden_state_index(model.config, config.layer)
    by_column = {column: [v for c in corpora for v in c.column(column)] for column in columns}
    by_column = {column: labels for column, labels in by_column.items() if any(v is not None for v in labels)}
    if not by_column:
        return []
    ids = [k or "" for c in corpora for k in c.column("id")]
    sources = [s or "" for c in corpora for s in c.column("source")]
    keys = [probe_key(source, utterance_id) for source, utterance_id in zip(sources, ids, strict=True)]
    wanted: dict[str, tuple[np.ndarray, list[str | None]]] = {}
    for column, labels in by_column.items():
        chosen = probe_utterances(labels, keys, seed, config.max_utterances)
        if chosen.size:
            wanted[column] = (chosen, labels)
    if not wanted:
        return []
    needed = np.unique(np.concatenate([chosen for chosen, _ in wanted.values()]))
    logger.info("probing %s: embedding %d utterances", ", ".join(wanted), needed.size)
    features = np.zeros((needed.size, model.config.hidden_size), dtype=np.float32)  # row k: utterance needed[k]
    start = 0
    for corpus in corpora:
        mine = (needed >= start) & (needed < start + len(corpus))
        features[mine] = utterance_features(
            model,
            corpus,
            needed[mine] - start,
            layer=config.layer,
            max_batch_seconds=config.max_batch_seconds,
            device=device,
        )
        start += len(corpus)
    results = []
    for column, (chosen, labels) in wanted.items():
        rows = np.searchsorted(needed, chosen)
        result = probe_features(
            features[rows], [labels[i] for i in chosen], [keys[i] for i in chosen], column, seed=seed, config=config
        )
        if result is not None:
            results.append(result)
    return results


def probe_key(source: str, utterance_id: str) -> str:
    """What the probe's choice and split hash for an utterance: its recording's last two path parts and its
    piece number ("spk3/utt12.wav#0001"). Not the id itself, whose prefix hashes the whole URI: the same
    corpus prepared in another folder (a fresh clone's demo) would then be probed on other utterances."""
    return f"{split_key(source)}#{utterance_id.rsplit('-', 1)[-1]}"


def probe_utterances(labels: Sequence[str | None], keys: Sequence[str], seed: int, limit: int | None) -> np.ndarray:
    """Indices of the labelled utterances a probe uses (at most `limit`, the lowest by seeded hash of their
    key), in ascending order; empty unless at least two classes keep two utterances each."""
    labelled = np.array([i for i, v in enumerate(labels) if v is not None], dtype=np.int64)
    if limit is not None and labelled.size > limit:
        ranks = np.array([_key_hash(keys[i], seed) for i in labelled], dtype=np.float64)
        labelled = np.sort(labelled[np.argsort(ranks, kind="stable")[:limit]])
    _, counts = np.unique([labels[i] for i in labelled], return_counts=True)
    return labelled if int((counts >= 2).sum()) >= 2 else np.zeros(0, np.int64)


def hidden_state_index(config: Wav2Vec2Config, layer: int) -> int:
    """`layer` as an index into the model's hidden_states (num_hidden_layers + 1 of them)."""
    states = int(config.num_hidden_layers) + 1
    if not -states <= layer < states:
        raise W2VError(
            f"--probe-layer {layer}: the model has {states - 1} transformer layers; pick one of {-states}..{states - 1}"
        )
    return layer % states


@torch.no_grad()
def utterance_features(
    model: Wav2Vec2ForPreTraining,
    corpus: ShardCorpus,
    indices: np.ndarray,
    *,
    layer: int,
    max_batch_seconds: float,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(utterances, hidden_size) float32: hidden state `layer` of each utterance `indices`, averaged over its
    frames (padding excluded), with the audio normalized as in training and never cropped."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((indices.size, model.config.hidden_size), dtype=np.float32)
    if indices.size == 0:
        return out
    base = model.wav2vec2
    was_training = model.training
    model.eval()
    rate = corpus.sample_rate
    lengths = corpus.num_samples[indices]
    # Group-normalized feature encoders see padding as signal: embed those models one utterance at a time.
    masked = model.config.feat_extract_norm == "layer"
    budget = max_batch_seconds * rate if masked else 0.0
    uncropped = BatchConfig(
        sample_rate=rate, max_batch_seconds=max_batch_seconds, mode="pad", max_sample_seconds=int(lengths.max()) / rate
    )
    state = hidden_state_index(model.config, layer)
    for rows in feature_batches(lengths, budget):
        batch = collate(corpus, indices[rows], uncropped, np.random.default_rng(0)).to(device)
        outputs = base(
            batch.input_values, attention_mask=batch.attention_mask if masked else None, output_hidden_states=True
        )
        hidden = outputs.hidden_states[state].float()
        frames = base._get_feat_extract_output_lengths(cast(torch.LongTensor, batch.num_samples))
        frames = frames.clamp(min=1, max=hidden.shape[1])
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
        pooled = (hidden * valid[..., None]).sum(dim=1) / frames[:, None]
        out[rows] = pooled.cpu().numpy()
    if was_training:
        model.train()
    return out


def feature_batches(num_samples: np.ndarray, max_batch_samples: float) -> list[np.ndarray]:
    """Positions into `num_samples`, in ascending length, packed so rows × longest ≤ the budget (one row at least)."""
    order = np.argsort(np.asarray(num_samples), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < order.size:
        end = start + 1
        while end < order.size and (end - start + 1) * int(num_samples[order[end]]) <= max_batch_samples:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def probe_features(
    features: np.ndarray,
    labels: Sequence[str | None],
    keys: Sequence[str],
    column: str,
    *,
    seed: int,
    config: ProbeConfig,
) -> ProbeResult | None:
    """Fit the probe on the training split of (features, labels) and score it on the rest; None when fewer
    than two classes have two utterances. `keys` (utterance ids) decide the split."""
    names = sorted({v for v in labels if v is not None})
    counts = {name: 0 for name in names}
    for v in labels:
        if v is not None:
            counts[v] += 1
    kept = [name for name in names if counts[name] >= 2]
    if len(kept) < 2:
        return None
    index = {name: k for k, name in enumerate(kept)}
    targets = np.array([index.get(v, -1) if v is not None else -1 for v in labels], dtype=np.int64)
    train, test = stratified_split(keys, targets, config.test_share, seed)
    classifier = fit_linear_classifier(
        features[train],
        targets[train],
        len(kept),
        weight_decay=config.weight_decay,
        max_iterations=config.max_iterations,
    )
    correct = classifier.predict(features[test]) == targets[test]
    return ProbeResult(
        column=column,
        classes=len(kept),
        train=int(train.size),
        test=int(test.size),
        accuracy=float(correct.mean()),
        chance=float(np.bincount(targets[test]).max() / test.size),
    )


def stratified_split(
    keys: Sequence[str], targets: np.ndarray, test_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions, ascending. Each class (target ≥ 0; -1 is left out) with n ≥ 2 utterances puts
    round(test_share · n), but at least one and at most n - 1, in test: those lowest by seeded hash of key."""
    targets = np.asarray(targets)
    ranks = np.array([_key_hash(k, seed) for k in keys], dtype=np.float64)
    train, test = [], []
    for target in np.unique(targets[targets >= 0]):
        members = np.flatnonzero(targets == target)
        if members.size < 2:
            continue
        members = members[np.argsort(ranks[members], kind="stable")]
        held = min(members.size - 1, max(1, round(test_share * members.size)))
        test.append(members[:held])
        train.append(members[held:])
    if not test:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_linear_classifier(
    features: np.ndarray, targets: np.ndarray, num_classes: int, *, weight_decay: float, max_iterations: int
) -> LinearClassifier:
    """Multinomial logistic regression on standardized features: mean cross-entropy + weight_decay/2 · |W|²,
    minimized from zero by full-batch L-BFGS in float64 (a convex problem: no seed needed, same answer always)."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))  # constant features stay at zero
    z = (x - mean) / scale
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    weight = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iterations,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(
        mean=mean.numpy(), scale=scale.numpy(), weight=weight.detach().numpy(), bias=bias.detach().numpy()
    )


def _key_hash(key: str, seed: int) -> float:
    """A stable position in [0, 1) for an utterance id under `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0**64
