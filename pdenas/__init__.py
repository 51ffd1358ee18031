"""pdenas: neural architecture search over PDE-motivated residual networks.

The public API (the README's "From Python" section shows it at work): ``Architecture``, ``list_families``, ``build_unit``,
``build_model``, ``paper_architecture``, ``load_model``, ``deepen``, and the search API of
``pdenas.api``: ``search``, ``open_run``, ``Run``, ``load_study``; ``InputError``, what bad input
raises (a ``ValueError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pdenas._resources import package_version
from pdenas.architecture import Architecture, paper_architecture
from pdenas.errors import InputError
from pdenas.families import build_unit, list_families, register_family
from pdenas.multilevel import deepen
from pdenas.network import PDENet, build_model

__all__ = [
    "Architecture",
    "InputError",
    "PDENet",
    "Run",
    "build_model",
    "build_unit",
    "deepen",
    "list_families",
    "load_model",
    "load_study",
    "open_run",
    "paper_architecture",
    "register_family",
    "search",
]

__version__ = package_version()
"""The installed version, from the package metadata (pyproject.toml is the one source)."""

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs (loaded on first use)
    from pdenas.api import Run, load_study, open_run, search
    from pdenas.export import load_model

_LAZY = {"load_model": "pdenas.export", "search": "pdenas.api", "open_run": "pdenas.api",
         "Run": "pdenas.api", "load_study": "pdenas.api"}
"""Names that live in modules importing more (export, pandas, the backends): loaded on first use."""


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pdenas' has no attribute {name!r}")
