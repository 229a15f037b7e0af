"""Doctor's findings for a person (a rich table) or a machine (JSON), and the exit status they imply."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from w2v.doctor.findings import Finding

STYLE = {"ok": "green", "warning": "yellow", "error": "red"}


def exit_status(findings: Sequence[Finding]) -> int:
    """0 when all is well, 1 when anything is wrong."""
    return 1 if any(f.problem for f in findings) else 0


def as_json(subject: str, findings: Sequence[Finding]) -> str:
    problems = [f for f in findings if f.problem]
    return json.dumps(
        {"subject": subject, "healthy": not problems, "findings": [f.as_json() for f in findings]}, indent=1
    )


def print_table(console: Console, subject: str, findings: Sequence[Finding]) -> None:
    table = Table("", "check", "what was seen", "what to do", title=f"w2v doctor: {subject}", show_lines=True)
    for finding in findings:
        colour = STYLE[finding.severity]
        table.add_row(f"[{colour}]{finding.severity}[/]", finding.check, finding.message, finding.remedy)
    console.print(table)
    problems = sum(f.problem for f in findings)
    console.print("[green]healthy[/]" if not problems else f"[yellow]{problems} problem(s)[/]")
