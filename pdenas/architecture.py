"""``Architecture``: the frozen, validated description of one candidate network.

It is what a search suggests, what a trial stores (as JSON) and what ``build_model`` builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdenas._config import Config, ConfigError
from pdenas.errors import InputError
from pdenas.families import get_family

__all__ = ["Architecture", "paper_architecture", "PAPER_LAYOUTS", "OPENING_STRIDES"]

OPENING_STRIDES = (1, 2)
"""The strides the opening convolution may take."""


@dataclass(frozen=True)
class Architecture(Config):
    """A PDE network: opening layer, K units with a connector after each, classifier.

    Attributes:
        family: A registered family name (``list_families()``).
        widths: K + 1 channel counts: one per unit, then the last connector's output.
        depths: K time-step counts, one per unit.
        step_size: The time step h of every unit (> 0).
        activation: Activation inside the units.
        norm: Normalisation inside the units: "tv" (the paper's), "batch" or "none". None (the
            default) takes the family's ``default_norm``: "tv" for the PDE families, "batch"
            for the resnet baseline (its conv-BN-ReLU-conv-BN block); the stored value is the
            resolved name.
        in_channels: Channels of the input images.
        num_classes: Classes of the classifier.
        reversible: Train the units with the memory-saving reversible backward pass
            (hamiltonian and second_order only, norm "tv" or "none").
        init: How the time steps of each unit start: "repeat" (all from the same weights, as
            Meganet.m; the smoothness-in-time penalty starts at 0) or "independent".
        opening_stride: Stride of the opening convolution: 1 (the paper's: the first unit runs
            at the input's resolution) or 2 (it runs at half the resolution, for about a
            quarter of the cost, as image networks' stems do).
    """

    family: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    step_size: float = 1.0
    activation: str = "relu"
    norm: str | None = None
    in_channels: int = 3
    num_classes: int = 10
    reversible: bool = False
    init: str = "repeat"
    opening_stride: int = 1

    def __post_init__(self) -> None:
        cls = get_family(self.family) if isinstance(self.family, str) else None
        if self.norm is None and cls is not None:  # the family's own (batch for resnet)
            object.__setattr__(self, "norm", cls.default_norm)
        super().__post_init__()
        cls = get_family(self.family)
        self.require("widths", bool(self.widths), "a non-empty list of integers")
        self.require("depths", bool(self.depths), "a non-empty list of integers")
        self.require("widths", len(self.widths) == len(self.depths) + 1,
                     f"one entry per unit plus the last connector's output "
                     f"({len(self.depths) + 1} for {len(self.depths)} depths)",
                     problem=f"got {len(self.widths)} entries")
        self.require("widths", min(self.widths) >= 1, "integers >= 1",
                     problem=f"got {list(self.widths)}")
        self.require("step_size", self.step_size > 0, "a finite number > 0")
        keys = {"width": "widths", "depth": "depths"}
        for width, depth in zip(self.widths, self.depths):  # what the family itself refuses
            problems = cls.option_problems(width=width, depth=depth, norm=self.norm,
                                           activation=self.activation, reversible=self.reversible,
                                           init=self.init)
            if problems:
                key, problem, allowed = problems[0]
                where = f" in {list(self.widths if key == 'width' else self.depths)}" if key in keys else ""
                raise ConfigError(f"{keys.get(key, key)}: {problem}{where}; allowed: {allowed}")
        for key in ("in_channels", "num_classes"):
            self.require(key, getattr(self, key) >= 1, "an integer >= 1")
        self.require("opening_stride", self.opening_stride in OPENING_STRIDES,
                     " or ".join(map(str, OPENING_STRIDES)))

    @property
    def num_units(self) -> int:
        """K, the number of PDE units."""
        return len(self.depths)

    def min_input_size(self) -> int:
        """The smallest input side that keeps every unit above 1x1: ``2**(K-1)``, times the
        opening stride."""
        return 2 ** (self.num_units - 1) * self.opening_stride

    def check_input(self, height: int, width: int) -> None:
        """Refuses an input the layout cannot fit.

        Raises:
            ValueError: If a unit would run on feature maps below 1x1 after the 2x2 poolings.
        """
        need = self.min_input_size()
        if min(height, width) < need:
            halvings = self.num_units - 1 + (self.opening_stride > 1)
            fit = int(math.log2(max(1, min(height, width) // self.opening_stride))) + 1
            opening = f" and the opening stride {self.opening_stride}" if self.opening_stride > 1 else ""
            raise InputError(
                f"depths: {self.num_units} units{opening} halve the "
                f"resolution {halvings} times and need inputs of at least {need}x{need}, got "
                f"{height}x{width}; use at most {fit} units"
            )

    @classmethod
    def from_dict(cls, data: Any, *, section: str | None = None) -> Architecture:
        """Builds and validates an Architecture.

        Raises:
            ValueError: Naming the bad key and what is allowed.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"architecture: expected a mapping, got {type(data).__name__}")
        required = ("family", "widths", "depths")
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: missing; required keys: {', '.join(required)}")
        return super().from_dict(data, section=section)


PAPER_LAYOUTS: dict[str, dict[str, Any]] = {
    "stl10": {"widths": (16, 32, 64, 128, 128), "depths": (3, 3, 3, 3), "num_classes": 10},
    "cifar10": {"widths": (32, 64, 112, 112), "depths": (3, 3, 3), "num_classes": 10},
    "cifar100": {"widths": (32, 64, 128, 256), "depths": (3, 3, 3), "num_classes": 100},
}
"""The paper's layouts (Ruthotto & Haber 2018, section 4): n_t = 3 per unit, h = 1, ReLU, and each family's own
normalisation (TV for the PDE families, batch norm for the resnet baseline)."""


def paper_architecture(dataset: str, family: str, **overrides: Any) -> Architecture:
    """The paper's network for ``dataset`` ("stl10", "cifar10", "cifar100") and ``family``.

    Args:
        dataset: The data set whose layout to use.
        family: A registered family.
        **overrides: Fields to change (``reversible=True``, say).
    """
    try:
        layout = PAPER_LAYOUTS[dataset]
    except KeyError:
        raise InputError(
            f"dataset: no paper layout for {dataset!r}; allowed: {', '.join(PAPER_LAYOUTS)}"
        ) from None
    fields = {"family": family, "step_size": 1.0, "activation": "relu", "norm": None,
              "in_channels": 3, **layout, **overrides}
    return Architecture.from_dict(fields)
