"""Depth as a discretisation: deepen a network in time, and plan coarse-to-fine training.

A PDE unit of n steps of size h integrates ``∂_t Y = F(θ(t), Y)`` (or ``∂²_t Y = F`` for the
second-order family) over ``T = n h``. ``deepen(model, f)`` gives every unit ``f n`` steps of
size ``h / f``, each step repeated f times with the weights of the step it refines, so
``θ(t)`` is unchanged and the deepened network is a finer discretisation of the same ODE
(``families/_refine.py`` says why copying, how each scheme treats h, and the leapfrog start).
It does not reproduce the coarse network exactly: the coarse one is a first-order
discretisation at h, and ``deepen(m, f)`` converges, as f grows, to the ODE's flow; the gap
``||deepen(m, 2f) - deepen(m, f)||`` shrinks like ``1 / f``.

Coarse-to-fine training (``TrainConfig.multilevel``, Chang et al., ICLR 2018): train at
``depths // factor**(levels - 1)`` (at least 1 step; the same time T per unit, so a larger h)
for a share of the epochs, resample the network to the next level's depths, go on; the last
level has the final depths. ``MultilevelConfig`` holds the option and plans the levels;
``resample_model`` moves a network between levels; ``pdenas.train.fit`` runs them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from pdenas._config import Config
from pdenas.architecture import Architecture
from pdenas.errors import InputError
from pdenas.families import PDEUnit
from pdenas.network import PDENet

__all__ = ["Level", "MultilevelConfig", "deepen", "pde_units", "resample_model"]

Deepenable = TypeVar("Deepenable", Architecture, nn.Module)


def deepen(model: Deepenable, factor: int = 2) -> Deepenable:
    """The same network with every unit ``factor`` times deeper at ``h / factor``.

    Args:
        model: An ``Architecture`` (depths times ``factor``, step size over ``factor``), a
            ``PDEUnit`` (``unit.refine(factor)``) or any module holding PDE units (a
            ``PDENet``: its ``arch`` is deepened too). It is not changed.
        factor: An integer >= 1.

    Returns:
        A new object of the same kind. For a module: a deep copy in which every PDE unit is
        replaced by ``unit.refine(factor)``; the opening, connectors, classifier and every
        batch-norm buffer are copied, and the copy is on the same device, in the same dtype and
        mode.

    Raises:
        ValueError: If ``factor`` is not an integer >= 1.
        TypeError: If ``model`` is neither an Architecture nor a module.
    """
    _check_factor(factor)
    if isinstance(model, Architecture):
        depths = tuple(d * factor for d in model.depths)
        return dataclasses.replace(model, depths=depths, step_size=model.step_size / factor)
    if isinstance(model, PDEUnit):
        return model.refine(factor)
    if not isinstance(model, nn.Module):
        raise TypeError(f"deepen: expected an Architecture or a module, got {type(model).__name__}")
    deeper = _replace_units(model, lambda unit, _: unit.refine(factor))
    if isinstance(deeper, PDENet):
        deeper.arch = deepen(model.arch, factor)
    return deeper


def resample_model(model: nn.Module, depths: Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose k-th PDE unit is ``unit.resample(depths[k])``.

    Each unit keeps its time ``T = n h`` (new h: ``h n / depths[k]``). A ``PDENet``'s ``arch``
    gets the new depths and the first unit's new step size (the units' own step sizes are what
    the network computes with; with unequal depth ratios they differ between units).

    Raises:
        ValueError: If ``depths`` does not have one entry per unit.
    """
    units = pde_units(model)
    depths = tuple(depths)
    if len(depths) != len(units):
        raise InputError(f"depths: the model has {len(units)} units, got {len(depths)} depths")
    index = {id(unit): k for k, unit in enumerate(units)}
    copy_ = _replace_units(model, lambda unit, _: unit.resample(depths[index[id(unit)]]))
    if isinstance(copy_, PDENet) and copy_.units:
        copy_.arch = dataclasses.replace(
            copy_.arch, depths=depths, step_size=copy_.units[0].step_size
        )
    return copy_


def pde_units(model: nn.Module) -> list[PDEUnit]:
    """The outermost PDE units of a module in order (``[model]`` for a unit), each once."""
    if isinstance(model, PDEUnit):
        return [model]
    units: list[PDEUnit] = []
    seen: set[int] = set()

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, PDEUnit):
                if id(child) not in seen:
                    seen.add(id(child))
                    units.append(child)
            else:
                walk(child)

    walk(model)
    return units


def _replace_units(model: nn.Module, make: Callable[[PDEUnit, int], PDEUnit]) -> nn.Module:
    """A deep copy of ``model`` with each outermost PDE unit replaced by ``make(unit, k)``."""
    units = pde_units(model)
    if not units:
        raise InputError(f"{type(model).__name__} holds no PDE units to deepen")
    if isinstance(model, PDEUnit):
        return make(model, 0)
    # deepcopy takes what the memo maps an object's id to instead of copying the object.
    memo: dict[int, Any] = {id(unit): make(unit, k) for k, unit in enumerate(units)}
    return copy.deepcopy(model, memo)


def _check_factor(factor: object) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(f"factor: got {factor!r}; allowed: an integer >= 1")


# --- coarse-to-fine training -------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One level of a coarse-to-fine run.

    Attributes:
        index: 1 for the coarsest level, up to ``levels`` (the final depths).
        first_epoch: Its first epoch (from 1).
        epochs: How many epochs it trains.
        depths: The time steps of each unit at this level.
    """

    index: int
    first_epoch: int
    epochs: int
    depths: tuple[int, ...]


@dataclass(frozen=True)
class MultilevelConfig(Config):
    """Coarse-to-fine training: ``train.multilevel: {levels: 3, factor: 2}``.

    Level l = 1..L trains units of ``max(1, n // factor**(L - l))`` steps (n: the final depth of
    the unit), each over the same time ``T = n h``, so coarse levels take larger steps. Between
    levels the network is resampled in time (``resample_model``: every step's weights repeated),
    the optimiser is rebuilt for the new parameters (its momentum / Adam state starts afresh)
    and the time-smoothness regulariser is taken over the new steps: repeating steps leaves
    the default form's value ("total_variation") unchanged, so every level optimises the same
    objective; Meganet.m's form ("meganet") grows with every level, by the factor for large
    jumps and its square for small ones. The learning-rate schedule runs over all epochs as one
    schedule.

    Attributes:
        levels: Number of levels L (>= 1; 1 trains at the final depth only).
        factor: Depth ratio between consecutive levels (an integer >= 2).
        shares: Fraction of the epochs for each level, coarsest first (L positive numbers that
            sum to 1), or None for equal shares. Every level trains at least one epoch.
    """

    SECTION = "train.multilevel"

    levels: int = 3
    factor: int = 2
    shares: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("levels", self.levels >= 1, "an integer >= 1")
        self.require("factor", self.factor >= 2, "an integer >= 2")
        shares = self.shares
        ok = shares is None or (all(s > 0 for s in shares) and len(shares) == self.levels
                                and math.isclose(sum(shares), 1.0, abs_tol=1e-6))
        self.require("shares", ok, f"{self.levels} numbers > 0 (one per level) summing to 1, or null")


    def epochs_per_level(self, epochs: int) -> list[int]:
        """How many of ``epochs`` each level trains, coarsest first (each >= 1).

        Raises:
            ValueError: If there are fewer epochs than levels.
        """
        if epochs < self.levels:
            raise InputError(
                f"bad train.multilevel.levels: {self.levels}; allowed: at most train.epochs "
                f"({epochs}), one epoch per level at least"
            )
        shares = self.shares or (1.0 / self.levels,) * self.levels
        counts, done, cumulative = [], 0, 0.0
        for index, share in enumerate(shares):
            cumulative += share
            remaining_levels = self.levels - 1 - index
            end = epochs if remaining_levels == 0 else round(cumulative * epochs)
            end = min(max(end, done + 1), epochs - remaining_levels)
            counts.append(end - done)
            done = end
        return counts

    def depths_per_level(self, depths: Sequence[int]) -> list[tuple[int, ...]]:
        """The units' depths at each level, coarsest first; the last is ``depths``."""
        return [
            tuple(max(1, d // self.factor ** (self.levels - level)) for d in depths)
            for level in range(1, self.levels + 1)
        ]

    def plan(self, depths: Sequence[int], epochs: int) -> list[Level]:
        """The levels of a run of ``epochs`` epochs whose units end with ``depths`` steps."""
        levels, first = [], 1
        counts = self.epochs_per_level(epochs)
        for index, (count, level_depths) in enumerate(
            zip(counts, self.depths_per_level(depths)), start=1
        ):
            levels.append(Level(index, first, count, level_depths))
            first += count
        return levels
