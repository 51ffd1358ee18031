"""pdenas: neural architecture search over PDE-motivated residual networks.

The public API (see DESIGN.md): ``Architecture``, ``list_families``, ``build_unit``,
``build_model``, ``paper_architecture``, ``load_model`` and ``deepen``.
"""

from __future__ import annotations

from pdenas.architecture import Architecture, paper_architecture
from pdenas.families import build_unit, list_families, register_family
from pdenas.multilevel import deepen
from pdenas.network import PDENet, build_model

__all__ = [
    "Architecture",
    "PDENet",
    "build_model",
    "build_unit",
    "deepen",
    "list_families",
    "load_model",
    "paper_architecture",
    "register_family",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_model lives with export, which imports more; load it on first use.
    if name == "load_model":
        from pdenas.export import load_model

        return load_model
    raise AttributeError(f"module 'pdenas' has no attribute {name!r}")
