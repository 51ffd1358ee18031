"""Dimensions: ``Dimension`` (one value of a candidate: fixed, a categorical choice, or an
int/float range; asking a trial for it, its grid values, its file form) and ``Dimensions`` (every
dimension of one family's candidates)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pdenas.errors import InputError
from pdenas.space._trial import Trial

if TYPE_CHECKING:
    from pdenas.space._width import WidthRule

__all__ = ["CHOICE", "FIXED", "FLOAT", "INT", "Dimension", "Dimensions"]

FIXED, CHOICE, INT, FLOAT = "fixed", "choice", "int", "float"
"""The kinds of dimension."""


@dataclass(frozen=True)
class Dimension:
    """One value of a candidate: fixed, a categorical choice, or an int/float range.

    Attributes:
        name: The param name the trial records.
        kind: "fixed", "choice", "int" or "float".
        value: The value of a fixed dimension.
        choices: The choices of a categorical dimension (JSON scalars).
        low: The lower end of a range (inclusive).
        high: The upper end of a range (inclusive).
        log: Sample the range on a log scale.
        step: The step of a discrete range (ints: 1 when None).
    """

    name: str
    kind: str
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Trial, name: str | None = None) -> Any:
        """Asks the trial for this dimension's value (a fixed one asks nothing).

        Args:
            trial: The trial.
            name: The param name, if not ``self.name`` (per-unit params).
        """
        name = name or self.name
        if self.kind == FIXED:
            return self.value
        if self.kind == CHOICE:
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == INT:
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """Every value the dimension can take (for a grid).

        Raises:
            ValueError: For a continuous float range.
        """
        if self.kind == FIXED:
            return [self.value]
        if self.kind == CHOICE:
            return list(self.choices)
        if self.kind == INT:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise InputError(
                f"{self.name}: the continuous range [{self.low:g}, {self.high:g}] has no grid; "
                "give a list of choices or a step"
            )
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def extremes(self) -> tuple[Any, ...]:
        """The values that validation checks: the fixed value, the choices, or both ends."""
        if self.kind == FIXED:
            return (self.value,)
        if self.kind == CHOICE:
            return self.choices
        return (self.low, self.high)

    def capped(self, maximum: int) -> Dimension | None:
        """This integer dimension limited to values <= ``maximum``, or None if none is left."""
        if self.kind in (FIXED, CHOICE):
            kept = tuple(v for v in self.extremes() if v <= maximum)
            if not kept:
                return None
            return self if len(kept) == len(self.extremes()) else dataclasses.replace(self, choices=kept)
        step = int(self.step or 1)
        high = int(self.low) + (min(int(self.high), maximum) - int(self.low)) // step * step
        return dataclasses.replace(self, high=high) if high >= self.low else None

    def to_data(self) -> Any:
        """The file form of this dimension (what the parser reads back)."""
        if self.kind == FIXED:
            return {"value": list(self.value)} if isinstance(self.value, tuple) else self.value
        if self.kind == CHOICE:
            return list(self.choices)
        data: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step is not None:
            data["step"] = self.step
        return data


@dataclass(frozen=True)
class Dimensions:
    """The dimensions of one family's candidates (the shared ones, or a family's override).

    Attributes:
        num_units: K, the number of units.
        depth: Time steps per unit.
        depth_per_unit: One depth param per unit (``depth_0`` ...) instead of one shared.
        width: The width rule.
        step_size: The time step h.
        activation: The activation name.
        norm: The normalisation name.
        reversible: Reversible training (asked only where the family and norm allow it).
        train: (TrainConfig field, dimension) pairs.
        opening_stride: The opening convolution's stride (1, the paper's, unless the space
            offers 2).
        start: The first-step rule of the units (asked only of families with more than one,
            second_order: ``Architecture.start``).
        layer_init: How the opening, connectors and classifier start (``Architecture.layer_init``).
        bn_eps: eps of every batch norm (``Architecture.bn_eps``).
    """

    num_units: Dimension
    depth: Dimension
    depth_per_unit: bool
    width: WidthRule
    step_size: Dimension
    activation: Dimension
    norm: Dimension
    reversible: Dimension
    train: tuple[tuple[str, Dimension], ...] = ()
    opening_stride: Dimension = Dimension("opening_stride", FIXED, value=1)
    start: Dimension = Dimension("start", FIXED, value="rest")
    layer_init: Dimension = Dimension("layer_init", FIXED, value="torch")
    bn_eps: Dimension = Dimension("bn_eps", FIXED, value=1e-5)

    def all(self, max_units: int) -> list[Dimension]:
        """Every dimension, per-unit depths expanded for up to ``max_units`` units."""
        if self.depth_per_unit:
            depths = [dataclasses.replace(self.depth, name=f"{self.depth.name}_{k}")
                      for k in range(max_units)]
        else:
            depths = [self.depth]
        return [self.opening_stride, self.num_units, *depths, *self.width.dimensions(),
                self.step_size, self.activation, self.norm, self.reversible, self.start,
                self.layer_init, self.bn_eps, *(dim for _, dim in self.train)]
