"""The backend registry: backends register by name; ``get_backend`` imports one on demand, so
choosing the Optuna backend never imports Ray (and the CLI imports neither)."""

from __future__ import annotations

import importlib

from pdenas._registry import Registry
from pdenas.backends._base import Backend
from pdenas.errors import InputError

__all__ = ["get_backend", "list_backends", "register_backend"]

_MODULES = {"optuna": "pdenas.backends.optuna", "ray": "pdenas.backends.ray"}
"""Built-in backends and the module that registers each (imported on first use)."""
_EXTRAS = {"ray": "pip install 'pdenas[ray]'"}
_BACKENDS: Registry[type[Backend]] = Registry("backend", Backend, "name")

register_backend = _BACKENDS.register
"""Class decorator that registers a ``Backend`` subclass under a name (``--backend``)."""


def list_backends() -> list[str]:
    """The names a search may use: the built-in ones and any registered since."""
    return sorted({*_MODULES, *_BACKENDS.names()})


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (its module is imported on first use).

    Raises:
        ValueError: An unknown name, or a backend whose library is not installed (one line).
    """
    if name not in _BACKENDS and name in _MODULES:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError as error:
            hint = _EXTRAS.get(name, "install its library")
            raise InputError(f"backend: {name} needs a library that is not installed "
                             f"({error.name or error}); {hint}") from None
    return _BACKENDS.get(name, list_backends())
