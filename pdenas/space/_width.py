"""Unit widths: ``WidthRule``, geometric (``base * growth**k``) or one dimension per unit, plus the
last connector's output (``same``, ``grow`` or a number), each unit width rounded by the family
(``PDEUnit.round_width``: up to its width multiple)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdenas.space._dimension import Dimension
from pdenas.space._trial import Trial

__all__ = ["WidthRule"]


@dataclass(frozen=True)
class WidthRule:
    """How unit widths are chosen: geometric (``base * growth**k``) or one dimension per unit.

    Attributes:
        base: The first unit's width (geometric rule).
        growth: The factor from one unit to the next (geometric rule).
        units: One width dimension per unit (explicit rule; at least the most units).
        last: The last connector's output: "same" (the last unit's width), "grow" (one more
            growth step) or an integer.
    """

    last: Dimension
    base: Dimension | None = None
    growth: Dimension | None = None
    units: tuple[Dimension, ...] = ()

    def suggest(self, trial: Trial, num_units: int, *,
                round_width: Callable[[int], int] = int) -> tuple[int, ...]:
        """The K + 1 widths for ``num_units`` units.

        Args:
            trial: The trial.
            num_units: K.
            round_width: The family's rounding of a unit width (``PDEUnit.round_width``).
        """
        if self.units:
            widths = [dim.suggest(trial) for dim in self.units[:num_units]]
            factor = 1.0
        else:
            assert self.base is not None and self.growth is not None
            base, factor = self.base.suggest(trial), self.growth.suggest(trial)
            widths = [max(1, round(base * factor**k)) for k in range(num_units)]
        widths = [round_width(w) for w in widths]
        last = self.last.suggest(trial)
        if last == "same":
            last = widths[-1]
        elif last == "grow":
            last = max(1, round(widths[-1] * factor))
        return (*widths, int(last))

    def dimensions(self) -> list[Dimension]:
        """Every dimension of the rule, in the order ``suggest`` asks them."""
        dims = list(self.units) if self.units else [self.base, self.growth]
        return [*dims, self.last]  # type: ignore[list-item]

    def to_data(self) -> dict[str, Any]:
        """The file form of this rule."""
        if self.units:
            data: dict[str, Any] = {"units": [d.to_data() for d in self.units]}
        else:
            assert self.base is not None and self.growth is not None
            data = {"base": self.base.to_data(), "growth": self.growth.to_data()}
        return {**data, "last": self.last.to_data()}
