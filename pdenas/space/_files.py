"""Search space files: where shipped spaces live (``SEARCH_SPACE_DIRS``, ``available_spaces``),
resolving a bare name or a path to a file, and reading its YAML (YAML 1.2 floats such as ``1e-3``).
"""

from __future__ import annotations

import re
import site
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SEARCH_SPACE_DIRS", "available_spaces", "read_space_file"]

SEARCH_SPACE_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[2] / "search_spaces",
    Path(sys.prefix) / "share" / "pdenas" / "search_spaces",
    Path(site.getuserbase()) / "share" / "pdenas" / "search_spaces",
)
"""Where bare names are looked up, in order: the checkout (editable installs), then the
``share/pdenas/search_spaces`` data files of a regular install (environment, then user)."""


def available_spaces() -> list[str]:
    """The names of the shipped search spaces."""
    return sorted({p.stem for d in SEARCH_SPACE_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def read_space_file(name_or_path: str | Path) -> tuple[Path, Any]:
    """The file a bare name (a shipped space) or a path names, and the YAML data it holds.

    Raises:
        ValueError: A missing file or unreadable YAML (the message names the file).
    """
    path = _resolve(name_or_path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (safe)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the search space: {exc}") from None
    return path, data


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ValueError(f"search space file not found: {path}")
        return path
    for folder in SEARCH_SPACE_DIRS:
        if (folder / f"{text}.yaml").is_file():
            return folder / f"{text}.yaml"
    raise ValueError(f"search space: unknown name {text!r}; available: {', '.join(available_spaces())}")


class _Loader(yaml.SafeLoader):
    """The safe loader, reading ``1e-3`` as a number (YAML 1.2) rather than as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
