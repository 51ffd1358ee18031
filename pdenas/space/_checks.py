"""Value checks for parsed dimensions: each returns the problem with one value, or None."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from pdenas._config import ConfigError
from pdenas.train import TrainConfig

__all__ = ["Check", "at_least", "boolean", "member", "positive", "train_check", "up_to_one",
           "width_or"]

Check = Callable[[Any], "str | None"]


def member(allowed: Sequence[Any]) -> Check:
    def check(value: Any) -> str | None:
        known = value in allowed and not isinstance(value, bool)
        return None if known else f"unknown {value!r}; allowed: {', '.join(map(str, allowed))}"

    return check


def at_least(minimum: int) -> Check:
    return lambda value: None if value >= minimum else f"got {value}; allowed: >= {minimum}"


def positive(value: Any) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"got {value}; allowed: a finite number > 0"


def up_to_one(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"got {value}; allowed: a number in (0, 1]"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"got {value!r}; allowed: true or false"


def width_or(words: Sequence[str]) -> Check:
    return lambda value: None if value in words else at_least(1)(value)


def train_check(key: str) -> Check:
    def check(value: Any) -> str | None:
        try:
            TrainConfig.from_dict({key: list(value) if isinstance(value, tuple) else value})
        except ConfigError as exc:  # the parser names the key itself
            return exc.detail
        return None

    return check
