"""The evidence table and summary: pretrained against random init (or chance), which is ahead, per row."""

from __future__ import annotations

import pytest

from w2v.errors import W2VError
from w2v.finetune.evidence import evidence_rows, evidence_table, last_evaluation, learning_summary

EVALUATION = {
    "loss": 2.6,
    "accuracy": 0.30,
    "contrastive_chance": 1 / 21,
    "perplexity": 61.0,
    "codevectors": 80,
    "probe": {"speaker": {"accuracy": 0.62, "random_init_accuracy": 0.31, "chance": 0.05, "test": 180}},
}
CTC = {"step": 300, "val_cer": 0.42, "val_wer": 0.9, "val_utterances": 120.0}
CTC_RANDOM = {"step": 300, "val_cer": 0.71, "val_wer": 1.0, "val_utterances": 120.0}


def test_the_summary_is_the_evaluation_with_the_ctc_comparison_and_who_is_ahead() -> None:
    summary = learning_summary(EVALUATION, CTC, CTC_RANDOM)
    assert summary["accuracy"] == 0.30 and summary["probe"] == EVALUATION["probe"]
    assert summary["accuracy_over_chance"] == pytest.approx(6.3)
    assert summary["ctc"] == {"cer": 0.42, "random_init_cer": 0.71, "wer": 0.9, "random_init_wer": 1.0,
                              "test_utterances": 120, "steps": 300}  # fmt: skip
    assert summary["pretrained_ahead"] == {
        "held-out contrastive accuracy": True,
        "speaker probe accuracy": True,
        "CTC character error rate": True,
    }


def test_a_lower_error_rate_wins_and_a_pretrained_model_behind_its_anchor_is_flagged() -> None:
    worse_ctc = {**CTC, "val_cer": 0.8}
    at_chance = {**EVALUATION, "accuracy": 0.04}
    rows = {row.name: row for row in evidence_rows(at_chance, worse_ctc, CTC_RANDOM)}
    assert not rows["CTC character error rate"].pretrained_ahead
    assert not rows["held-out contrastive accuracy"].pretrained_ahead
    assert rows["speaker probe accuracy"].pretrained_ahead
    table = evidence_table(list(rows.values()))
    assert "| CTC character error rate (lower is better) | 0.800 | 0.710 (random init) | 120 | **no** |" in table
    assert "0.048 (chance)" in table


def test_without_labels_the_summary_keeps_what_there_is() -> None:
    summary = learning_summary({"accuracy": 0.1, "contrastive_chance": 0.05})
    assert "ctc" not in summary and summary["pretrained_ahead"] == {"held-out contrastive accuracy": True}


def test_a_fine_tune_without_an_evaluation_is_named_in_the_error() -> None:
    records = [{"step": 10, "loss": 3.0}, {"step": 10, "val_cer": 0.5}, {"step": 20, "val_cer": 0.4}]
    assert last_evaluation(records, "val_cer", "demo/ctc")["step"] == 20
    with pytest.raises(W2VError, match="demo/ctc: no evaluation with val_cer"):
        last_evaluation(records[:1], "val_cer", "demo/ctc")


def test_accuracy_from_a_collapsed_codebook_does_not_count_as_learning() -> None:
    """Distractors equal to the target are dropped; with a few codes in use most are, and accuracy soars."""
    collapsed = {**EVALUATION, "accuracy": 0.93, "perplexity": 3.1}
    rows = evidence_rows(collapsed, CTC, CTC_RANDOM)
    assert not rows[0].pretrained_ahead and rows[0].invalid == "codebook collapsed: perplexity 3.1 of 80"
    assert "**no** (codebook collapsed: perplexity 3.1 of 80)" in evidence_table(rows)
    summary = learning_summary(collapsed)
    assert (
        summary["accuracy_invalid"] == rows[0].invalid
        and not summary["pretrained_ahead"]["held-out contrastive accuracy"]
    )
    assert "accuracy_invalid" not in learning_summary(EVALUATION)
    older = {k: v for k, v in collapsed.items() if k != "codevectors"}  # an evaluation from before the field
    assert evidence_rows(older, None, None)[0].pretrained_ahead
