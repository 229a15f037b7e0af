"""What doctor reports: findings with the numbers that led to them and what to do about them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("ok", "warning", "error")


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str  # ok | warning | error
    message: str
    remedy: str = ""
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def problem(self) -> bool:
        return self.severity != "ok"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, message: str, **numbers: float) -> Finding:
    return Finding(check, "ok", message, numbers=dict(numbers))


def warning(check: str, message: str, remedy: str, **numbers: float) -> Finding:
    return Finding(check, "warning", message, remedy, dict(numbers))


def error(check: str, message: str, remedy: str, **numbers: float) -> Finding:
    return Finding(check, "error", message, remedy, dict(numbers))
