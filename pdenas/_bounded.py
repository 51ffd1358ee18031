"""Bounded reading of the files pdenas parses: a size cap checked before the text is read, a
nesting-depth cap, YAML aliases refused, and values rendered into error messages at a bounded
length.

Every YAML or JSON file pdenas reads (a study, a search space, ``--set`` values, ``run.json``,
a trial's ``record.json``, an export's ``config.json``) goes through ``read_text`` and then
``load_yaml`` or ``load_json``. The limits, and why:

- ``MAX_YAML_BYTES`` (1 MiB): the shipped studies and spaces are under 8 KB, and PyYAML parses
  about 1 MB a second in pure Python, so a larger file is a mistake or an attack.
  (Kubernetes caps YAML at 3 MB.)
- ``MAX_JSON_BYTES`` (4 MiB): what pdenas writes is tens of KB (a record's history grows by
  about 200 bytes an epoch, so 4 MiB holds some 20,000 epochs); the C JSON parser reads 4 MiB in
  well under a second.
- ``MAX_DEPTH`` (100): what pdenas writes nests at most 5 deep; 100 stays far below Python's
  recursion limit for every walk of the data (merging, checking, copying). (SQLite's JSON
  functions refuse deeper than 1,000; jq than 10,000.)
- YAML aliases (``*name``) are refused: PyYAML's safe loader builds them as shared references,
  so a "billion laughs" of nested aliases is cheap to load and explodes when walked; no shipped
  file uses them.

Each refusal is one ``InputError`` line naming the file and the limit.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pdenas.errors import InputError

__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "MAX_REPR", "MAX_YAML_BYTES", "BoundedLoader",
           "check_depth", "load_json", "load_yaml", "read_text", "short_repr"]

MAX_YAML_BYTES = 1 << 20
MAX_JSON_BYTES = 4 << 20
MAX_DEPTH = 100
MAX_REPR = 80
"""The most characters of a value an error message shows."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_REPR
_REPR.maxother = MAX_REPR
_REPR.maxlong = 40
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _name, 6)


def short_repr(value: Any, limit: int = MAX_REPR) -> str:
    """``repr(value)`` at most ``limit`` characters long, built without rendering the whole
    value (nested levels, items and long strings are elided with ``...``)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is named by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _size_words(size: int) -> str:
    return f"{size // (1 << 20)} MiB" if size >= 1 << 20 else f"{size:,} bytes"


def read_text(path: Path, limit: int, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    The size is checked with ``fstat`` before anything is read, and at most ``limit + 1`` bytes
    are read (a file that grows while it is read is refused too), so a huge or sparse file is
    never read whole; a FIFO or a device is refused without being opened for reading.

    Args:
        path: The file.
        limit: The most bytes allowed.
        what: What the file is, for the message ("study file", "record").

    Raises:
        InputError: Not a regular file, larger than ``limit``, or not UTF-8 text (naming the
            file and the limit).
        OSError: The file cannot be opened or read (callers name it their way).
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block open(); a folder cannot be read
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise InputError(f"{path}: {kind}; expected a {what}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file; expected a {what}")
        if info.st_size > limit:
            raise InputError(f"{path}: {what} of {_size_words(info.st_size)} is larger than "
                             f"the limit of {_size_words(limit)}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: {what} is larger than the limit of {_size_words(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: {what} is not UTF-8 text") from None


def check_depth(data: Any, where: str, limit: int = MAX_DEPTH) -> Any:
    """``data`` unchanged when its mappings and lists nest at most ``limit`` deep (walked
    without recursion; what it walks came from a size-capped file without aliases).

    Raises:
        InputError: Nested deeper than ``limit``, naming ``where`` and the limit.
    """
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > limit:
            raise InputError(f"{where}: nested deeper than the limit of {limit} levels")
        stack.extend((child, depth + 1) for child in children)
    return data


def load_json(path: Path, limit: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """A JSON file's data, bounded in size (``read_text``) and depth (``MAX_DEPTH``).

    Raises:
        InputError: Too large, too deep, not UTF-8 or not valid JSON, naming the file.
        OSError: The file cannot be opened or read.
    """
    text = read_text(path, limit, what)
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError(f"{path}: {what} nested deeper than the limit of {MAX_DEPTH} "
                         "levels") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); "
                         "the file is damaged") from None
    return check_depth(data, f"{path}: {what}")


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases (``*name``, so merge keys too) and nodes
    nested deeper than ``MAX_DEPTH``; both are ``yaml.YAMLError``s with one line."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in pdenas files",
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than the limit of {MAX_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, loader: type[BoundedLoader], where: str) -> Any:
    """YAML ``text`` read with ``loader`` (a ``BoundedLoader``), its errors one line.

    Raises:
        InputError: ``where: not valid YAML: ...`` (an alias, too deep, a syntax error).
    """
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        raise InputError(f"{where}: not valid YAML: {_yaml_line(error)}") from None
    except RecursionError:  # (the composer refuses first; kept as the last guard)
        raise InputError(f"{where}: nested deeper than the limit of {MAX_DEPTH} levels") from None
    return check_depth(data, where)


def _yaml_line(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        problem = error.problem or error.context or "unreadable"
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{problem}{where}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
