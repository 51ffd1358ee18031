"""The trial interface: what ``suggest`` asks of a trial (``Trial``), and ``ReplayTrial``, a
trial that answers from a finished trial's stored params and refuses values outside the space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pdenas.errors import InputError

__all__ = ["PartialTrial", "ReplayTrial", "Trial"]


class Trial(Protocol):
    """What ``suggest`` needs of a trial: ``optuna.Trial``, ``optuna.trial.FixedTrial``, ..."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


class ReplayTrial:
    """A trial that answers from stored params and refuses values outside the space."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def _get(self, name: str) -> Any:
        if name not in self.params:
            have = ", ".join(self.params) or "none"
            raise InputError(f"{name}: missing from the params to replay (have: {have})")
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._get(name)
        for choice in choices:
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return choice
        raise InputError(f"{name}: {value!r} is not one of the choices {list(choices)!r}")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = self._get(name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and float(value).is_integer()
        if not ok or not low <= value <= high or (int(value) - low) % step:
            raise InputError(f"{name}: {value!r} is not an integer in [{low}, {high}] (step {step})")
        return int(value)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InputError(f"{name}: {value!r} is not a number in [{low:g}, {high:g}]")
        return float(value)


class PartialTrial:
    """A trial that answers the params it is given (refusing values outside the space) and the
    lowest value of every other one, and records the names it was asked: what checks a new
    study's ``start_with`` params before any trial runs."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)
        self.asked: list[str] = []

    def _ask(self, name: str, default: Any, replay: Any, allowed: str) -> Any:
        self.asked.append(name)
        if name not in self.params:
            return default
        try:
            return replay()
        except ValueError:
            raise InputError(f"{name}: got {self.params[name]!r}; allowed: {allowed}") from None

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._ask(name, choices[0],
                         lambda: ReplayTrial(self.params).suggest_categorical(name, choices),
                         ", ".join(map(str, choices)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        every = f" in steps of {step}" if step != 1 else ""
        return self._ask(name, low,
                         lambda: ReplayTrial(self.params).suggest_int(name, low, high, step=step),
                         f"an integer from {low} to {high}{every}")

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._ask(name, low,
                         lambda: ReplayTrial(self.params).suggest_float(name, low, high, step=step),
                         f"a number from {low:g} to {high:g}")
