"""The files pdenas ships as package data: the studies (``pdenas/studies/*.yaml``) and the search
spaces (``pdenas/search_spaces/*.yaml``), found with ``importlib.resources`` so they work the same
from a checkout, an editable install and a regular (wheel) install."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pdenas.errors import InputError

if TYPE_CHECKING:  # importlib.resources.abc arrived in Python 3.11
    from importlib.resources.abc import Traversable

__all__ = ["package_version", "shipped_file", "shipped_names", "shipped_studies"]

KINDS = ("studies", "search_spaces")
"""The package-data folders, each holding ``NAME.yaml`` files."""


def package_version() -> str:
    """pdenas's version from the installed package metadata (pyproject.toml is the one source);
    ``0+unknown`` when pdenas runs from a checkout that was never installed."""
    try:
        return importlib.metadata.version("pdenas")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _folder(kind: str) -> Traversable:
    if kind not in KINDS:
        raise InputError(f"shipped files: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    return importlib.resources.files("pdenas") / kind


def shipped_names(kind: str) -> list[str]:
    """The names (file stems) of the shipped ``kind`` files, sorted."""
    folder = _folder(kind)
    if not folder.is_dir():
        return []
    return sorted(item.name[: -len(".yaml")] for item in folder.iterdir()
                  if item.name.endswith(".yaml") and item.is_file())


def shipped_file(kind: str, name: str) -> Path | None:
    """The shipped file ``kind/name.yaml`` as a file-system path, or None when there is none.

    pdenas is installed as plain files (wheels unpack into site-packages), so the package data
    are real files; a zipped install is not supported.
    """
    item = _folder(kind) / f"{name}.yaml"
    if not item.is_file():
        return None
    path = Path(str(item))
    if not path.is_file():  # pragma: no cover - a zip import
        raise InputError(f"{kind}/{name}.yaml: pdenas must be installed as files, not zipped")
    return path


def shipped_studies() -> dict[str, str]:
    """Every shipped study's name and its one-line ``description``."""
    studies = {}
    for name in shipped_names("studies"):
        path = shipped_file("studies", name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) if path else None
        except yaml.YAMLError:
            data = None
        text = data.get("description", "") if isinstance(data, dict) else ""
        studies[name] = " ".join(str(text).split())
    return studies
