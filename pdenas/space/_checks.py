"""Value checks for parsed dimensions: each returns the problem with one value, or None."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from pdenas.train import TrainConfig

__all__ = ["Check", "at_least", "boolean", "member", "positive", "train_check", "width_or"]

Check = Callable[[Any], "str | None"]


def member(allowed: Sequence[str]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"unknown {value!r}; allowed: {', '.join(allowed)}"

    return check


def at_least(minimum: int) -> Check:
    return lambda value: None if value >= minimum else f"must be >= {minimum}, got {value}"


def positive(value: Any) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be a finite number > 0, got {value}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def width_or(words: Sequence[str]) -> Check:
    return lambda value: None if value in words else at_least(1)(value)


def train_check(key: str) -> Check:
    def check(value: Any) -> str | None:
        try:
            TrainConfig.from_dict({key: list(value) if isinstance(value, tuple) else value})
        except ValueError as exc:
            return str(exc)
        return None

    return check
