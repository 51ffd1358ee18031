"""Search space files: the shipped spaces (package data ``pdenas/search_spaces/*.yaml``, read with
``importlib.resources``: ``available_spaces``, ``shipped_space``), resolving a bare name or a path to
a file, and reading its YAML (YAML 1.2 floats such as ``1e-3``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pdenas._bounded import (
    MAX_YAML_BYTES,
    BoundedLoader,
    load_yaml,
    read_text,
    short_repr,
)
from pdenas._resources import shipped_file, shipped_names
from pdenas.errors import InputError

__all__ = ["available_spaces", "read_space_file", "shipped_space"]


def available_spaces() -> list[str]:
    """The names of the shipped search spaces."""
    return shipped_names("search_spaces")


def shipped_space(name: str) -> Path | None:
    """The file of the shipped search space ``name``, or None when there is none."""
    return shipped_file("search_spaces", name)


def read_space_file(name_or_path: str | Path) -> tuple[Path, Any]:
    """The file a bare name (a shipped space) or a path names, and the YAML data it holds.

    Raises:
        ValueError: A missing file or unreadable YAML (the message names the file).
    """
    path = _resolve(name_or_path)
    try:
        text = read_text(path, MAX_YAML_BYTES, "search space file")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the search space: {exc.strerror or exc}") from None
    return path, load_yaml(text, _Loader, f"{path}: search space")


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InputError(f"search space file not found: {path}")
        return path
    path = shipped_space(text)
    if path is not None:
        return path
    raise InputError(f"search space: unknown name {short_repr(text)}; available: {', '.join(available_spaces())}")


class _Loader(BoundedLoader):
    """The safe loader (aliases refused, depth capped), reading ``1e-3`` as a number (YAML 1.2) rather than as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
