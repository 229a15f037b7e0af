"""The end of `make demo`: what pretraining bought, as a table and as DEMO/summary.json.

Reads the pretrain flow's evaluation of the final model (RUN/evaluation.json: `w2v evaluate`'s JSON, with the
speaker probe against a random init) and the last evaluation of the two CTC fine-tunes (from the pretrained
model, and from a random initialization of it) on the held-out test recordings.

    python docker/demo_summary.py DEMO_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from w2v.atomic import write_text_atomic
from w2v.errors import W2VError
from w2v.finetune.evidence import evidence_rows, evidence_table, last_evaluation, learning_summary
from w2v.run.metrics import read_metrics


def main(demo: Path) -> int:
    """Write DEMO/summary.json and print the table; 1 only when an input is missing or unreadable."""
    evaluation = json.loads((demo / "runs" / "tiny" / "evaluation.json").read_text())
    ctc = last_evaluation(read_metrics(demo / "ctc" / "pretrained"), "val_cer", str(demo / "ctc" / "pretrained"))
    anchor = last_evaluation(read_metrics(demo / "ctc" / "random-init"), "val_cer", str(demo / "ctc" / "random-init"))
    summary = learning_summary(evaluation, ctc, anchor)
    write_text_atomic(demo / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(evidence_table(evidence_rows(evaluation, ctc, anchor)))
    invalid = f" but means nothing ({summary['accuracy_invalid']})" if "accuracy_invalid" in summary else ""
    print(f"\nheld-out contrastive accuracy is {summary['accuracy_over_chance']:.1f}× chance{invalid}; "
          f"summary: {demo / 'summary.json'}")  # fmt: skip
    behind = [name for name, ahead in summary["pretrained_ahead"].items() if not ahead]
    if behind:  # a short run's outcome varies (README, "What make demo shows"): said, not fatal
        print(f"this time pretraining did not beat its anchor on: {', '.join(behind)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo")))
    except (OSError, W2VError) as error:
        sys.exit(f"demo summary: {error}")
