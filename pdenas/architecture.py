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

__all__ = ["Architecture", "paper_architecture", "PAPER_LAYOUTS", "OPENING_STRIDES",
           "LAYER_INITS", "TORCH_BN_EPS", "MEGANET_BN_EPS"]

OPENING_STRIDES = (1, 2)
"""The strides the opening convolution may take."""

LAYER_INITS = ("torch", "meganet")
"""How the opening, connector and classifier layers start (``Architecture.layer_init``)."""

TORCH_BN_EPS = 1e-5
"""PyTorch's batch-norm eps, the default of ``Architecture.bn_eps``."""

MEGANET_BN_EPS = 1e-4
"""The batch-norm eps of the authors' code (Meganet.m's ``batchNormLayer2`` default)."""


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
        start: How each unit takes its first time step: "rest" (the default; for leapfrog
            ``Y_{-1} = Y_0``, as Meganet.m and the paper) or "half_step" (second_order only:
            ``Y_1 = Y_0 + h² F / 2``, second order in h; see ``SecondOrderUnit``).
        layer_init: How the opening, connector and classifier layers start: "torch" (PyTorch's
            defaults) or "meganet" (the authors' ``cnnDriver.m``: the opening and connector
            kernels drawn as the units' kernels, normal with std ``sqrt(2 / (k c_in))`` for a
            k x k kernel truncated at 2 std: 2.2 (1x1) and 3.7 (3x3) times PyTorch's std; the
            classifier's weights and bias ``0.1 N(0, 1)`` clipped to [-0.2, 0.2]). The units'
            kernels start the authors' way under both.
        bn_eps: eps of every batch norm in the network (opening, connectors, and units with
            norm "batch"): 1e-5 (PyTorch's, the default) or the authors' 1e-4
            (``MEGANET_BN_EPS``).
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
    start: str = "rest"
    layer_init: str = "torch"
    bn_eps: float = TORCH_BN_EPS

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
                                           init=self.init, start=self.start)
            if problems:
                key, problem, allowed = problems[0]
                where = f" in {list(self.widths if key == 'width' else self.depths)}" if key in keys else ""
                raise ConfigError(f"{keys.get(key, key)}: {problem}{where}; allowed: {allowed}")
        for key in ("in_channels", "num_classes"):
            self.require(key, getattr(self, key) >= 1, "an integer >= 1")
        self.require("opening_stride", self.opening_stride in OPENING_STRIDES,
                     " or ".join(map(str, OPENING_STRIDES)))
        self.require("layer_init", self.layer_init in LAYER_INITS, ", ".join(LAYER_INITS))
        self.require("bn_eps", 0 < self.bn_eps <= 1,
                     f"a number in (0, 1] (PyTorch's {TORCH_BN_EPS:g}, the authors' "
                     f"{MEGANET_BN_EPS:g})")

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
