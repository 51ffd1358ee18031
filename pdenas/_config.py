"""The one configuration helper: frozen dataclasses whose field types are declared once.

Every configuration (``TrainConfig``, ``DataConfig``, ``StudyConfig``, ``Constraints``,
``Architecture``, a backend's options) subclasses ``Config``. Construction checks each field
against its annotation (``int``, ``float`` (finite), ``bool``, ``str``, ``X | None``,
``tuple[T, ...]``, ``Mapping``, a nested ``Config``) and normalises it (an integral float to
``int``, a list to a tuple, a mapping to the nested config); the class's ``__post_init__`` then
checks ranges with ``require``. ``from_dict`` refuses unknown keys. Every error is a
``ConfigError`` (the project's ``InputError``, a ``ValueError``) of one form::

    section.key: problem; allowed: what is allowed

where ``section`` is the class's ``SECTION`` ("train", "data", ...; empty for top-level objects).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

from pdenas._bounded import short_repr
from pdenas.errors import InputError

__all__ = ["INTERNAL", "Config", "ConfigError", "FieldKind", "field_kinds", "file_keys", "key_of",
           "key_summary", "leaf_keys", "reading_stored"]


class ConfigError(InputError):
    """A bad configuration value: ``section.key: problem; allowed: ...`` (``key`` names it)."""


def key_of(section: str, key: str) -> str:
    """The dotted name of ``key`` in ``section``."""
    return f"{section}.{key}" if section else key


@dataclasses.dataclass(frozen=True)
class FieldKind:
    """What a field's annotation allows.

    Attributes:
        base: "int", "float", "bool", "str", "tuple", "mapping", "config" or "any".
        optional: Whether None is allowed.
        item: For tuples, the items' base kind.
        config: For nested configs, the class.
    """

    base: str
    optional: bool = False
    item: str | None = None
    config: type | None = None

    def describe(self) -> str:
        """What is allowed, in words."""
        words = {"int": "an integer", "float": "a finite number", "bool": "true or false",
                 "str": "a string", "mapping": "a mapping", "config": "a mapping", "any": "anything",
                 "tuple": "a list of " + {"int": "integers", "float": "numbers",
                                          "mapping": "mappings"}.get(self.item or "", "strings")}
        text = words[self.base]
        return f"{text} or null" if self.optional else text


_BASES = {int: "int", float: "float", bool: "bool", str: "str"}


def _kind(annotation: Any) -> FieldKind:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _kind(args[0]) if len(args) == 1 else FieldKind("any")
        return dataclasses.replace(inner, optional=True)
    if annotation in _BASES:
        return FieldKind(_BASES[annotation])
    if origin is tuple:
        args = typing.get_args(annotation)
        if args and typing.get_origin(args[0]) in (Mapping, dict):
            return FieldKind("tuple", item="mapping")
        return FieldKind("tuple", item=_BASES.get(args[0], "any") if args else "any")
    if origin in (Mapping, dict) or annotation in (Mapping, dict):
        return FieldKind("mapping")
    if isinstance(annotation, type) and issubclass(annotation, Config):
        return FieldKind("config", config=annotation)
    return FieldKind("any")


@cache
def field_kinds(cls: type) -> dict[str, FieldKind]:
    """The kind of every init field of a dataclass, from its (resolved) annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


_STORED: contextvars.ContextVar[bool] = contextvars.ContextVar("stored", default=False)


@contextlib.contextmanager
def reading_stored() -> Iterator[None]:
    """While inside, ``from_dict`` reads what pdenas itself stored (``run.json``), perhaps by an
    earlier version: keys it no longer reads (``REMOVED``) are left out, and fields that files
    may not set (``INTERNAL``) are taken as stored."""
    token = _STORED.set(True)
    try:
        yield
    finally:
        _STORED.reset(token)


INTERNAL = {"internal": True}
"""Field metadata of a field set by code, not by files (``from_dict`` and ``to_dict`` skip it)."""


def file_keys(cls: type) -> list[str]:
    """The fields a file may set: every init field not marked ``INTERNAL``."""
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys a file may set, nested sections walked (``train.multilevel.levels``)."""
    kinds, keys = field_kinds(cls), []
    for name in file_keys(cls):
        kind = kinds[name]
        if kind.base == "config" and kind.config is not None:
            keys += leaf_keys(kind.config, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def key_summary(cls: type, sections: Mapping[str, type] | None = None) -> str:
    """The keys a file may set, as one line per top-level key: ``train.{epochs,lr,...}``.

    Args:
        cls: The configuration class.
        sections: Mapping fields whose keys another class checks (the ``ray`` section: its
            backend's options), rendered from that class.
    """
    kinds, parts = field_kinds(cls), []
    for name in file_keys(cls):
        kind = kinds[name]
        inner = kind.config if kind.base == "config" else (sections or {}).get(name)
        if inner is None:
            parts.append(name)
            continue
        nested = key_summary(inner)
        parts.append(f"{name}.{{{nested}}}" if nested else name)
    return ", ".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coerce(key: str, value: Any, kind: FieldKind) -> Any:
    """``value`` checked against ``kind`` and normalised.

    Raises:
        ConfigError: Naming ``key`` and what is allowed.
    """
    if value is None:
        if kind.optional or kind.base == "any":
            return None
        raise ConfigError(f"{key}: got null; allowed: {kind.describe()}")
    def bad() -> ConfigError:  # (built on failure only: a valid value is never rendered)
        return ConfigError(f"{key}: got {short_repr(value)}; allowed: {kind.describe()}")

    if kind.base == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif kind.base == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad()
    elif kind.base == "float":
        if not _is_number(value) or not math.isfinite(value):
            raise bad()
        return float(value)
    elif kind.base == "str":
        if not isinstance(value, str):
            raise bad()
    elif kind.base == "tuple":
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise bad()
        item = FieldKind(kind.item or "any")
        return tuple(coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    elif kind.base == "mapping":
        if not isinstance(value, Mapping):
            raise bad()
        return dict(value)
    elif kind.base == "config":
        assert kind.config is not None
        if isinstance(value, kind.config):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return kind.config.from_dict(value, section=key)
    return value


class Config:
    """Base of every frozen configuration dataclass (see the module docstring).

    Subclasses are ``@dataclass(frozen=True)``, set ``SECTION``, and call
    ``super().__post_init__()`` first in their own ``__post_init__``.
    """

    SECTION: ClassVar[str] = ""
    REMOVED: ClassVar[Mapping[str, str]] = {}
    """Keys that earlier versions read, each with what to write instead: a file that still has
    one is refused with one line naming its replacement (``pruner: removed; use early_stop``)."""

    def __post_init__(self) -> None:
        section = self._section()
        for name, kind in field_kinds(type(self)).items():
            value = coerce(key_of(section, name), getattr(self, name), kind)
            object.__setattr__(self, name, value)

    def _section(self) -> str:
        return type(self).SECTION

    def require(self, name: str, ok: bool, allowed: str, problem: str | None = None) -> None:
        """Raises ``section.name: problem; allowed: ...`` unless ``ok``.

        Args:
            name: The field (or a dotted path below the section).
            ok: The check's result.
            allowed: What is allowed, in words.
            problem: What is wrong (default: ``got <the field's value>``).
        """
        if ok:
            return
        if problem is None:
            problem = f"got {short_repr(getattr(self, name.split('.')[0], None))}"
        raise ConfigError(f"{key_of(self._section(), name)}: {problem}; allowed: {allowed}")

    @classmethod
    def from_dict(cls, data: Any, *, section: str | None = None):
        """A validated config from plain data (a YAML/JSON mapping); missing keys take their
        defaults.

        Args:
            data: Field names to values.
            section: The dotted name of the section in its file (default: ``SECTION``), for
                errors about its keys.

        Raises:
            ConfigError: A non-mapping, an unknown key or a bad value.
        """
        section = cls.SECTION if section is None else section
        if not isinstance(data, Mapping):
            raise ConfigError(f"{section or cls.__name__}: expected a mapping, "
                              f"got {type(data).__name__}")
        kinds, allowed = field_kinds(cls), file_keys(cls)
        if _STORED.get():  # what an earlier version wrote: its removed keys are left out
            data = {k: v for k, v in data.items() if k not in cls.REMOVED or k in kinds}
            allowed = list(kinds)
        for key in data:
            if key in cls.REMOVED and key not in allowed:
                raise ConfigError(f"{key_of(section, str(key))}: removed; "
                                  f"{cls.REMOVED[str(key)]}")
            if key not in allowed:
                raise ConfigError(f"{key_of(section, str(key))}: unknown key; allowed: "
                                  f"{', '.join(allowed) or 'no keys (an empty mapping)'}")
        values = {}
        for key, value in data.items():  # nested sections get their dotted names
            kind = kinds[key]
            values[key] = (coerce(key_of(section, key), value, kind)
                           if kind.base == "config" else value)
        return cls(**values)

    @classmethod
    def from_stored(cls, data: Any):
        """A config that pdenas itself stored (a record's ``train``, ``run.json``), perhaps
        written by an earlier version: its removed keys are left out and internal fields taken
        as stored (``reading_stored``)."""
        with reading_stored():
            return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data that ``from_dict`` reads back."""
        return _plain({name: getattr(self, name) for name in file_keys(type(self))})


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

