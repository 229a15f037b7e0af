"""What pretraining bought, in one table: the pretrained model against a random initialization of the same
architecture, on the same held-out recordings and the same downstream budget.

Rows: held-out contrastive accuracy against chance (a model that learned nothing scores 1 / (K + 1)), the
linear speaker probe on frozen features (from `w2v evaluate`), and a CTC fine-tune's character error rate
(`w2v finetune --task ctc`, with and without `--random-init`). The summary is `w2v evaluate`'s JSON with the
CTC result as {"ctc": {"cer": …, "random_init_cer": …}} and, per row, whether the pretrained model is ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from w2v.errors import W2VError
from w2v.train.config import GuardConfig


@dataclass(frozen=True)
class Row:
    name: str
    pretrained: float
    anchor: float  # random initialization, or chance where there is nothing to train
    anchor_name: str  # "random init" | "chance"
    higher_is_better: bool
    test_utterances: int | None = None
    invalid: str = ""  # why the pretrained score does not count (a collapsed codebook's accuracy), if it does not

    @property
    def pretrained_ahead(self) -> bool:
        if self.invalid:
            return False
        return self.pretrained > self.anchor if self.higher_is_better else self.pretrained < self.anchor


def collapsed_codebook(evaluation: dict[str, Any], floor_share: float = GuardConfig().perplexity_floor_share) -> str:
    """Why the held-out accuracy means nothing, or "": a codevector perplexity under `floor_share` of the
    codevectors (the doctor's warning) makes most distractors equal to the target, and those are dropped, so
    a collapsed model scores far above chance (0.93 against 0.01 in issue 18's note)."""
    codevectors = evaluation.get("codevectors")
    if not codevectors or evaluation["perplexity"] >= floor_share * codevectors:
        return ""
    return f"codebook collapsed: perplexity {evaluation['perplexity']:.1f} of {codevectors}"


def last_evaluation(records: list[dict[str, Any]], key: str, source: str) -> dict[str, Any]:
    """The newest record of a fine-tuning run's metrics that carries `key` (val_cer, val_accuracy, ...)."""
    found = [r for r in records if key in r]
    if not found:
        raise W2VError(f"{source}: no evaluation with {key} in its metrics; did the fine-tune finish?")
    return found[-1]


def evidence_rows(
    evaluation: dict[str, Any], ctc: dict[str, Any] | None, ctc_random: dict[str, Any] | None
) -> list[Row]:
    """The table's rows from `w2v evaluate`'s JSON and the two CTC runs' last evaluations (val_* records)."""
    rows = [Row("held-out contrastive accuracy", evaluation["accuracy"], evaluation["contrastive_chance"], "chance",
                higher_is_better=True, invalid=collapsed_codebook(evaluation))]  # fmt: skip
    speaker = evaluation.get("probe", {}).get("speaker")
    if speaker is not None:
        rows.append(Row("speaker probe accuracy", speaker["accuracy"], speaker["random_init_accuracy"], "random init",
                        higher_is_better=True, test_utterances=speaker["test"]))  # fmt: skip
    if ctc is not None and ctc_random is not None:
        rows.append(Row("CTC character error rate", ctc["val_cer"], ctc_random["val_cer"], "random init",
                        higher_is_better=False, test_utterances=int(ctc["val_utterances"])))  # fmt: skip
    return rows


def learning_summary(
    evaluation: dict[str, Any], ctc: dict[str, Any] | None = None, ctc_random: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`w2v evaluate`'s JSON, the accuracy as a multiple of chance, the CTC comparison, and for each row whether
    pretraining is ahead of its anchor."""
    summary = {**evaluation, "accuracy_over_chance": evaluation["accuracy"] / evaluation["contrastive_chance"]}
    if collapsed := collapsed_codebook(evaluation):
        summary["accuracy_invalid"] = collapsed
    if ctc is not None and ctc_random is not None:
        summary["ctc"] = {
            "cer": ctc["val_cer"],
            "random_init_cer": ctc_random["val_cer"],
            "wer": ctc["val_wer"],
            "random_init_wer": ctc_random["val_wer"],
            "test_utterances": int(ctc["val_utterances"]),
            "steps": ctc["step"],
        }
    summary["pretrained_ahead"] = {row.name: row.pretrained_ahead for row in evidence_rows(evaluation, ctc, ctc_random)}
    return summary


def evidence_table(rows: list[Row]) -> str:
    """A markdown table: each row's pretrained score, its anchor's, and which is ahead."""
    lines = ["| | pretrained | anchor | test utterances | pretrained ahead |", "|---|---:|---:|---:|:---:|"]
    for row in rows:
        arrow = "higher is better" if row.higher_is_better else "lower is better"
        utterances = "" if row.test_utterances is None else str(row.test_utterances)
        verdict = "yes" if row.pretrained_ahead else f"**no** ({row.invalid})" if row.invalid else "**no**"
        lines.append(f"| {row.name} ({arrow}) | {row.pretrained:.3f} | {row.anchor:.3f} ({row.anchor_name}) "
                     f"| {utterances} | {verdict} |")  # fmt: skip
    return "\n".join(lines)
