"""Fine-tuning metrics, computed by the libraries people compare against: jiwer and scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
from sklearn.metrics import f1_score, roc_curve


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Word and character error rates (jiwer); empty hypotheses count as all deletions."""
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def classification_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn) over the classes present in the truth."""
    if truth.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    labels = np.unique(truth)
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
    }


def equal_error_rate(same: np.ndarray, scores: np.ndarray) -> float:
    """Where false acceptances equal false rejections on the ROC curve (scikit-learn) of trial scores."""
    if same.all() or not same.any():
        return float("nan")
    false_accept, true_accept, _ = roc_curve(same.astype(int), scores, drop_intermediate=False)
    false_reject = 1.0 - true_accept
    k = int(np.nanargmin(np.abs(false_reject - false_accept)))
    return float((false_accept[k] + false_reject[k]) / 2)
