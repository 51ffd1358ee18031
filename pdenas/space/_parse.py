"""Parsing file data into dimensions: ``Parser`` checks keys and forms (fixed, ``{value}``,
choices, ranges), the width rule, train fields (their kind from ``TrainConfig``'s annotations) and
family overrides; every error names the file and the key."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pdenas._config import field_kinds
from pdenas.architecture import LAYER_INITS, OPENING_STRIDES
from pdenas.families import ACTIVATIONS, NORMS, STARTS, list_families
from pdenas.space._checks import (
    Check,
    at_least,
    boolean,
    member,
    positive,
    train_check,
    up_to_one,
    width_or,
)
from pdenas.space._dimension import CHOICE, FIXED, FLOAT, INT, Dimension, Dimensions
from pdenas.space._width import WidthRule
from pdenas.train import TrainConfig

__all__ = ["Parser"]

_DIM_KEYS = ("value", "choices", "low", "high", "log", "step")
_WIDTH_KEYS = ("base", "growth", "units", "last")
_SCALARS = (str, int, float, bool, type(None))


class Parser:
    """Turns file data into dimensions; every error names the file (``prefix``) and the key."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def fail(self, path: str, message: str) -> ValueError:
        """The error for ``path`` (a dotted key)."""
        return ValueError(f"{self.prefix}{path}: {message}")

    def mapping(
        self, raw: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Checks a mapping's keys (``allowed`` empty: any key)."""
        if not isinstance(raw, Mapping):
            raise self.fail(path or "search space", f"got {raw!r}; allowed: a mapping")
        for key in raw:
            if allowed and key not in allowed:
                names = ", ".join(map(str, allowed))
                raise self.fail(_join(path, key), f"unknown key; allowed: {names}")
        for key in required:
            if key not in raw:
                raise self.fail(_join(path, key), f"missing; required keys: {', '.join(required)}")
        return dict(raw)

    def dimensions(
        self,
        data: Mapping[str, Any],
        prefix: str = "",
        suffix: str = "",
        *,
        inherit: Dimensions | None = None,
        overridden: Collection[str] = (),
    ) -> Dimensions:
        """Parses the architecture and train dimensions of ``data``.

        Args:
            data: The top-level keys (defaults filled in).
            prefix: Path of ``data`` in the file ("" or "family_overrides.NAME.").
            suffix: Appended to the param names ("" or "_NAME").
            inherit: For an override: the shared dimensions, kept for the keys (and train keys,
                as "train.KEY") not in ``overridden``.
            overridden: The keys an override sets.
        """

        def parse(key: str, kind: str, check: Check) -> Dimension:
            if inherit is not None and key not in overridden:
                return getattr(inherit, key)
            return self.dimension(data[key], prefix + key, key + suffix, kind, check)

        inherited = dict(inherit.train) if inherit else {}
        train = []
        for key, raw in self.mapping(data["train"], prefix + "train", ()).items():
            if inherit is not None and f"train.{key}" not in overridden and key in inherited:
                train.append((key, inherited[key]))
                continue
            kind, nullable = _train_kind(key, f"{prefix}train.{key}", self)
            if kind == FIXED:  # a list-valued field: a list is its value, not choices
                raw = raw if isinstance(raw, Mapping) else {"value": raw}
                kind = CHOICE
            train.append((key, self.dimension(raw, f"{prefix}train.{key}", key + suffix, kind,
                                              train_check(key), nullable=nullable)))
        if inherit is not None and "width" not in overridden:
            width = inherit.width
        else:
            width = self.width(data["width"], prefix + "width", suffix)
        if inherit is not None and "depth_per_unit" not in overridden:
            per_unit = inherit.depth_per_unit
        else:
            per_unit = self.flag(data["depth_per_unit"], prefix + "depth_per_unit")
        dims = Dimensions(
            num_units=parse("num_units", INT, at_least(1)),
            depth=parse("depth", INT, at_least(1)),
            depth_per_unit=per_unit,
            width=width,
            step_size=parse("step_size", FLOAT, positive),
            activation=parse("activation", CHOICE, member(list(ACTIVATIONS))),
            norm=parse("norm", CHOICE, member(NORMS)),
            reversible=parse("reversible", CHOICE, boolean),
            train=tuple(train),
            opening_stride=parse("opening_stride", CHOICE, member(OPENING_STRIDES)),
            start=parse("start", CHOICE, member(STARTS)),
            layer_init=parse("layer_init", CHOICE, member(LAYER_INITS)),
            bn_eps=parse("bn_eps", FLOAT, up_to_one),
        )
        most = max(dims.num_units.extremes())
        if width.units and most > len(width.units):
            raise self.fail(f"{prefix}width.units",
                            f"{len(width.units)} entries for up to {most} units; give one per unit")
        return dims

    def width(self, raw: Any, path: str, suffix: str) -> WidthRule:
        """Parses the width rule (geometric or per unit)."""
        data = self.mapping(raw, path, _WIDTH_KEYS)
        geometric = "base" in data or "growth" in data
        if geometric == ("units" in data):
            raise self.fail(path, "give either base and growth, or units (one width per unit)")
        words = ("same", "grow") if geometric else ("same",)
        last = self.dimension(data.get("last", "same"), f"{path}.last", f"width_last{suffix}", INT,
                              width_or(words), words=words)
        if not geometric:
            units = data["units"]
            if not isinstance(units, list) or not units:
                raise self.fail(f"{path}.units", f"got {units!r}; allowed: one width per unit")
            return WidthRule(last=last, units=tuple(
                self.dimension(u, f"{path}.units[{k}]", f"width{suffix}_{k}", INT, at_least(1))
                for k, u in enumerate(units)))
        for key in ("base", "growth"):
            if key not in data:
                raise self.fail(f"{path}.{key}", "missing; the geometric rule needs base and growth")
        return WidthRule(
            last=last,
            base=self.dimension(data["base"], f"{path}.base", f"width_base{suffix}", INT, at_least(1)),
            growth=self.dimension(data["growth"], f"{path}.growth", f"width_growth{suffix}", FLOAT,
                                  positive),
        )

    def flag(self, raw: Any, path: str) -> bool:
        """A plain true/false setting."""
        if not isinstance(raw, bool):
            raise self.fail(path, f"got {raw!r}; allowed: true or false")
        return raw

    def dimension(
        self,
        raw: Any,
        path: str,
        name: str,
        kind: str,
        check: Check,
        *,
        words: Sequence[str] = (),
        nullable: bool = False,
    ) -> Dimension:
        """Parses one dimension of ``kind`` ("int", "float": ranges allowed; "choice": not).

        Args:
            raw: The file data.
            path: Its key path, for messages.
            name: The param name.
            kind: What values and forms are allowed.
            check: Returns a problem with one value, or None.
            words: Strings allowed besides numbers (``width.last``: "same", "grow").
            nullable: Null is allowed as a fixed value or choice.
        """
        if nullable:
            words = (*words, None)
        if isinstance(raw, Mapping):
            data = self.mapping(raw, path, _DIM_KEYS)
            forms = [k for k in ("value", "choices") if k in data]
            if forms and len(data) > 1:
                raise self.fail(path, f"{forms[0]} stands alone; give value, choices, or low/high")
            if "value" in data:
                value = self.scalar(data["value"], path, kind, words, fixed=True)
                dim = Dimension(name, FIXED, value=value)
            elif "choices" in data:
                dim = self.choices(data["choices"], path, name, kind, words)
            else:
                dim = self.range(data, path, name, kind)
        elif isinstance(raw, list):
            dim = self.choices(raw, path, name, kind, words)
        else:
            dim = Dimension(name, FIXED, value=self.scalar(raw, path, kind, words))
        for value in dim.extremes():
            problem = check(value)
            if problem:
                raise self.fail(path, problem)
        return dim

    def choices(self, raw: Any, path: str, name: str, kind: str, words: Sequence[str]) -> Dimension:
        """A categorical dimension from a list."""
        if not isinstance(raw, list) or not raw:
            raise self.fail(path, f"got {raw!r}; allowed: a non-empty list of choices")
        values = tuple(self.scalar(v, path, kind, words) for v in raw)
        if len(set(map(repr, values))) != len(values):
            raise self.fail(path, f"repeated choices in {list(raw)!r}")
        return Dimension(name, CHOICE, choices=values)

    def scalar(self, raw: Any, path: str, kind: str, words: Sequence[str], fixed: bool = False) -> Any:
        """One value: a JSON scalar (a fixed value may also be a list), numbers checked for kind."""
        if any(raw is w or (isinstance(raw, str) and raw == w) for w in words):
            return raw
        if fixed and isinstance(raw, list):
            return tuple(raw)
        if not isinstance(raw, _SCALARS):
            raise self.fail(path, f"got {raw!r}; allowed: a number, text, true/false or null")
        if kind == INT and (isinstance(raw, bool) or not isinstance(raw, int)):
            allowed = " or ".join([*map(repr, words), "an integer"])
            raise self.fail(path, f"got {raw!r}; allowed: {allowed}")
        if kind == FLOAT:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise self.fail(path, f"got {raw!r}; allowed: a number")
            return float(raw)
        return raw

    def range(self, data: Mapping[str, Any], path: str, name: str, kind: str) -> Dimension:
        """An int or float range ``{low, high, log, step}``."""
        if kind == CHOICE:
            raise self.fail(path, "takes a fixed value or a list of choices, not a range")
        for key in ("low", "high"):
            if key not in data:
                raise self.fail(f"{path}.{key}", "missing; a range needs low and high")
        low, high = (self.scalar(data[k], f"{path}.{k}", kind, ()) for k in ("low", "high"))
        log = data.get("log", False)
        step = data.get("step")
        if not isinstance(log, bool):
            raise self.fail(f"{path}.log", f"got {log!r}; allowed: true or false")
        if low > high:
            raise self.fail(path, f"low ({low}) is above high ({high})")
        if log and low <= 0:
            raise self.fail(f"{path}.low", f"a log range needs low > 0, got {low}")
        if step is not None:
            step = self.scalar(step, f"{path}.step", kind, ())
            if step <= 0:
                raise self.fail(f"{path}.step", f"got {step}; allowed: > 0")
            if log and (kind == FLOAT or step != 1):
                raise self.fail(f"{path}.step", "a log range cannot have a step")
        return Dimension(name, kind, low=low, high=high, log=log, step=step)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _train_kind(key: str, path: str, parser: Parser) -> tuple[str, bool]:
    """How a TrainConfig field may vary, and whether null is a value: int/float ranges for
    numbers, choices for flags and names, a fixed value for list-valued fields (the field types
    come from ``pdenas._config.field_kinds``, declared once on ``TrainConfig``)."""
    kinds = field_kinds(TrainConfig)
    kind = kinds.get(key)
    if kind is None:
        raise parser.fail(path, f"unknown key; allowed: {', '.join(kinds)}")
    if kind.base in ("tuple", "config", "mapping", "any"):  # lists and sections: fixed values
        return FIXED, False
    if kind.base in ("bool", "str"):
        return CHOICE, True
    return (INT if kind.base == "int" else FLOAT), kind.optional
