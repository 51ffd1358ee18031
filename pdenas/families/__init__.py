"""PDE families: the registry, one module per family, and the stability helpers.

Importing this package registers the built-in families: parabolic, hamiltonian, second_order
and the resnet baseline.
"""

from __future__ import annotations

from pdenas.families import hamiltonian, parabolic, resnet, second_order  # noqa: F401  (register)
from pdenas.families._base import INITS, STARTS, PDEUnit
from pdenas.families._layers import ACTIVATIONS, NORMS, TV_EPS, SymmetricLayer, TVNorm
from pdenas.families._registry import build_unit, get_family, list_families, register_family
from pdenas.families._stability import clip_weights_, stability_report, time_smoothness

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "NORMS",
    "PDEUnit",
    "STARTS",
    "SymmetricLayer",
    "TVNorm",
    "TV_EPS",
    "build_unit",
    "clip_weights_",
    "get_family",
    "list_families",
    "register_family",
    "stability_report",
    "time_smoothness",
]
