"""``Architecture``: the frozen, validated description of one candidate network.

It is what a search suggests, what a trial stores (as JSON) and what ``build_model`` builds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdenas.families import ACTIVATIONS, INITS, NORMS, get_family, list_families

__all__ = ["Architecture", "paper_architecture", "PAPER_LAYOUTS"]


@dataclass(frozen=True)
class Architecture:
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _int_tuple("widths", self.widths))
        object.__setattr__(self, "depths", _int_tuple("depths", self.depths))
        cls = get_family(self.family)
        if len(self.widths) != len(self.depths) + 1:
            raise ValueError(
                f"widths: needs one entry per unit plus the last connector's output "
                f"({len(self.depths) + 1} for {len(self.depths)} depths), got {len(self.widths)}"
            )
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths: every width must be >= 1, got {list(self.widths)}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths: every depth must be >= 1, got {list(self.depths)}")
        if self.family == "hamiltonian" and any(w % 2 for w in self.widths[:-1]):
            raise ValueError(
                f"widths: the hamiltonian family splits channels in halves, so unit widths "
                f"must be even, got {list(self.widths[:-1])}"
            )
        h = self.step_size
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise ValueError(f"step_size: must be a finite number > 0, got {h!r}")
        object.__setattr__(self, "step_size", float(h))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: unknown {self.activation!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
            )
        if self.norm is None:
            object.__setattr__(self, "norm", cls.default_norm)
        if self.norm not in NORMS:
            raise ValueError(f"norm: unknown {self.norm!r}; allowed: {', '.join(NORMS)}")
        for key in ("in_channels", "num_classes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: must be an integer >= 1, got {value!r}")
        if not isinstance(self.reversible, bool):
            raise ValueError(f"reversible: must be true or false, got {self.reversible!r}")
        if self.reversible and not cls.reversible_scheme:
            reversible = [f for f in list_families() if get_family(f).reversible_scheme]
            raise ValueError(
                f"reversible: the {self.family} scheme is not reversible; "
                f"allowed with: {', '.join(reversible)}"
            )
        if self.reversible and self.norm == "batch":
            raise ValueError("reversible: batch norm breaks exact recomputation; use norm 'tv' or 'none'")
        if self.init not in INITS:
            raise ValueError(f"init: unknown {self.init!r}; allowed: {', '.join(INITS)}")

    @property
    def num_units(self) -> int:
        """K, the number of PDE units."""
        return len(self.depths)

    def min_input_size(self) -> int:
        """The smallest input side that keeps every unit above 1x1: ``2**(K-1)``."""
        return 2 ** (self.num_units - 1)

    def check_input(self, height: int, width: int) -> None:
        """Refuses an input the layout cannot fit.

        Raises:
            ValueError: If a unit would run on feature maps below 1x1 after the 2x2 poolings.
        """
        need = self.min_input_size()
        if min(height, width) < need:
            raise ValueError(
                f"depths: {self.num_units} units halve the resolution {self.num_units - 1} times "
                f"and need inputs of at least {need}x{need}, got {height}x{width}; use at most "
                f"{int(math.log2(max(1, min(height, width)))) + 1} units"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``Architecture.from_dict(a.to_dict()) == a``."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Architecture:
        """Builds and validates an Architecture.

        Raises:
            ValueError: Naming the bad key and what is allowed.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"architecture: expected a mapping, got {type(data).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key; allowed keys: {', '.join(fields)}")
        required = ("family", "widths", "depths")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{missing[0]}: missing; required keys: {', '.join(required)}")
        return cls(**data)


def _int_tuple(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{key}: expected a list of integers, got {value!r}")
    items = tuple(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ValueError(f"{key}: expected a non-empty list of integers, got {list(items)!r}")
    return items


PAPER_LAYOUTS: dict[str, dict[str, Any]] = {
    "stl10": {"widths": (16, 32, 64, 128, 128), "depths": (3, 3, 3, 3), "num_classes": 10},
    "cifar10": {"widths": (32, 64, 112, 112), "depths": (3, 3, 3), "num_classes": 10},
    "cifar100": {"widths": (32, 64, 128, 256), "depths": (3, 3, 3), "num_classes": 100},
}
"""The paper's layouts (PAPER.md): n_t = 3 per unit, h = 1, ReLU, and each family's own
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
        raise ValueError(
            f"dataset: no paper layout for {dataset!r}; allowed: {', '.join(PAPER_LAYOUTS)}"
        ) from None
    fields = {"family": family, "step_size": 1.0, "activation": "relu", "norm": None,
              "in_channels": 3, **layout, **overrides}
    return Architecture.from_dict(fields)
