"""Search spaces: a YAML file (data only) -> a validated `SearchSpace` -> candidates.

``SearchSpace.load(name_or_path)`` reads and validates a file once; ``space.suggest(trial, ...)``
turns one trial into an ``(Architecture, TrainConfig)`` pair using only ``trial.suggest_categorical``,
``trial.suggest_int`` and ``trial.suggest_float`` (define-by-run: an ``optuna.Trial``, or the one
Ray Tune's ``OptunaSearch`` passes). ``space.replay(params, ...)`` rebuilds the same pair from a
trial's stored params, and ``space.grid(...)`` lists every value of every param for Optuna's
``GridSampler``. This module never imports optuna or ray.

The file format (every dimension is a fixed value, a list of choices, or a range)::

    description: free text
    families: [parabolic, hamiltonian, second_order, resnet]   # or one name
    num_units: {low: 2, high: 4}            # capped so the layout fits the image size
    depth: {low: 1, high: 6}                # time steps per unit
    depth_per_unit: true                    # one depth param per unit (default: one shared)
    width: {base: [8, 16, 32], growth: [1, 2], last: same}     # unit k: base * growth**k
    # or   {units: [32, 64, [96, 112]], last: same}            # one dimension per unit
    step_size: {low: 0.05, high: 1.5, log: true}
    activation: [relu, tanh]
    norm: tv
    reversible: [false, true]               # asked only of reversible families without batch norm
    train: {lr: {low: 1.0e-3, high: 0.3, log: true}, optimizer: sgd}   # any TrainConfig field
    family_overrides:                       # per family: replaces those dimensions
      hamiltonian: {step_size: {low: 0.05, high: 1.0, log: true}}

A dimension is written as a scalar (fixed), a list (choices: JSON scalars), ``{value: x}`` (fixed,
also for list values such as ``milestones``), ``{choices: [...]}``, or a range ``{low, high,
log, step}``. ``width.last`` is ``same`` (the last unit's width), ``grow`` (one more growth step,
geometric widths only) or an integer dimension.

Param names are the dimension names (``family``, ``num_units``, ``depth``, ``width_base``,
``width_growth``, ``width_last``, ``step_size``, ``activation``, ``norm``, ``reversible``, the train
keys); a family override appends ``_<family>`` (``step_size_hamiltonian``) and per-unit params
append ``_<unit index>`` (``depth_0``, ``width_hamiltonian_1``). Fixed dimensions make no param.
Hamiltonian unit widths are rounded up to even numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re
import site
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from pdenas.architecture import Architecture
from pdenas.families import ACTIVATIONS, NORMS, get_family, list_families
from pdenas.train import TrainConfig

__all__ = [
    "SEARCH_SPACE_DIRS",
    "Dimension",
    "Dimensions",
    "SearchSpace",
    "Trial",
    "WidthRule",
    "available_spaces",
]

SEARCH_SPACE_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[1] / "search_spaces",
    Path(sys.prefix) / "share" / "pdenas" / "search_spaces",
    Path(site.getuserbase()) / "share" / "pdenas" / "search_spaces",
)
"""Where bare names are looked up, in order: the checkout (editable installs), then the
``share/pdenas/search_spaces`` data files of a regular install (environment, then user)."""

EVEN_WIDTH_FAMILIES = frozenset({"hamiltonian"})
"""Families that split channels in halves: their unit widths are rounded up to even."""

FIXED, CHOICE, INT, FLOAT = "fixed", "choice", "int", "float"
_DIM_KEYS = ("value", "choices", "low", "high", "log", "step")
_RANGE_KEYS = ("low", "high", "log", "step")
_TOP_KEYS = (
    "description", "families", "num_units", "depth", "depth_per_unit", "width", "step_size",
    "activation", "norm", "reversible", "train", "family_overrides",
)
_OVERRIDE_KEYS = _TOP_KEYS[2:-1]
_WIDTH_KEYS = ("base", "growth", "units", "last")
_DEFAULTS: dict[str, Any] = {
    "depth_per_unit": False, "step_size": 1.0, "activation": "relu", "norm": "tv",
    "reversible": False, "train": {},
}
_REQUIRED = ("num_units", "depth", "width")
_SCALARS = (str, int, float, bool, type(None))

Check = Callable[[Any], "str | None"]


class Trial(Protocol):
    """What ``suggest`` needs of a trial: ``optuna.Trial``, ``optuna.trial.FixedTrial``, ..."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


@dataclass(frozen=True)
class Dimension:
    """One value of a candidate: fixed, a categorical choice, or an int/float range.

    Attributes:
        name: The param name the trial records.
        kind: "fixed", "choice", "int" or "float".
        value: The value of a fixed dimension.
        choices: The choices of a categorical dimension (JSON scalars).
        low: The lower end of a range (inclusive).
        high: The upper end of a range (inclusive).
        log: Sample the range on a log scale.
        step: The step of a discrete range (ints: 1 when None).
    """

    name: str
    kind: str
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Trial, name: str | None = None) -> Any:
        """Asks the trial for this dimension's value (a fixed one asks nothing).

        Args:
            trial: The trial.
            name: The param name, if not ``self.name`` (per-unit params).
        """
        name = name or self.name
        if self.kind == FIXED:
            return self.value
        if self.kind == CHOICE:
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == INT:
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """Every value the dimension can take (for a grid).

        Raises:
            ValueError: For a continuous float range.
        """
        if self.kind == FIXED:
            return [self.value]
        if self.kind == CHOICE:
            return list(self.choices)
        if self.kind == INT:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise ValueError(
                f"{self.name}: the continuous range [{self.low:g}, {self.high:g}] has no grid; "
                "give a list of choices or a step"
            )
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def extremes(self) -> tuple[Any, ...]:
        """The values that validation checks: the fixed value, the choices, or both ends."""
        if self.kind == FIXED:
            return (self.value,)
        if self.kind == CHOICE:
            return self.choices
        return (self.low, self.high)

    def capped(self, maximum: int) -> Dimension | None:
        """This integer dimension limited to values <= ``maximum``, or None if none is left."""
        if self.kind in (FIXED, CHOICE):
            kept = tuple(v for v in self.extremes() if v <= maximum)
            if not kept:
                return None
            return self if len(kept) == len(self.extremes()) else dataclasses.replace(self, choices=kept)
        step = int(self.step or 1)
        high = int(self.low) + (min(int(self.high), maximum) - int(self.low)) // step * step
        return dataclasses.replace(self, high=high) if high >= self.low else None

    def to_data(self) -> Any:
        """The file form of this dimension (what the parser reads back)."""
        if self.kind == FIXED:
            return {"value": list(self.value)} if isinstance(self.value, tuple) else self.value
        if self.kind == CHOICE:
            return list(self.choices)
        data: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step is not None:
            data["step"] = self.step
        return data


@dataclass(frozen=True)
class WidthRule:
    """How unit widths are chosen: geometric (``base * growth**k``) or one dimension per unit.

    Attributes:
        base: The first unit's width (geometric rule).
        growth: The factor from one unit to the next (geometric rule).
        units: One width dimension per unit (explicit rule; at least the most units).
        last: The last connector's output: "same" (the last unit's width), "grow" (one more
            growth step) or an integer.
    """

    last: Dimension
    base: Dimension | None = None
    growth: Dimension | None = None
    units: tuple[Dimension, ...] = ()

    def suggest(self, trial: Trial, num_units: int, *, even: bool) -> tuple[int, ...]:
        """The K + 1 widths for ``num_units`` units.

        Args:
            trial: The trial.
            num_units: K.
            even: Round unit widths up to even numbers.
        """
        if self.units:
            widths = [dim.suggest(trial) for dim in self.units[:num_units]]
            factor = 1.0
        else:
            assert self.base is not None and self.growth is not None
            base, factor = self.base.suggest(trial), self.growth.suggest(trial)
            widths = [max(1, round(base * factor**k)) for k in range(num_units)]
        if even:
            widths = [w + w % 2 for w in widths]
        last = self.last.suggest(trial)
        if last == "same":
            last = widths[-1]
        elif last == "grow":
            last = max(1, round(widths[-1] * factor))
        return (*widths, int(last))

    def dimensions(self) -> list[Dimension]:
        """Every dimension of the rule, in the order ``suggest`` asks them."""
        dims = list(self.units) if self.units else [self.base, self.growth]
        return [*dims, self.last]  # type: ignore[list-item]

    def to_data(self) -> dict[str, Any]:
        """The file form of this rule."""
        if self.units:
            data: dict[str, Any] = {"units": [d.to_data() for d in self.units]}
        else:
            assert self.base is not None and self.growth is not None
            data = {"base": self.base.to_data(), "growth": self.growth.to_data()}
        return {**data, "last": self.last.to_data()}


@dataclass(frozen=True)
class Dimensions:
    """The dimensions of one family's candidates (the shared ones, or a family's override).

    Attributes:
        num_units: K, the number of units.
        depth: Time steps per unit.
        depth_per_unit: One depth param per unit (``depth_0`` ...) instead of one shared.
        width: The width rule.
        step_size: The time step h.
        activation: The activation name.
        norm: The normalisation name.
        reversible: Reversible training (asked only where the family and norm allow it).
        train: (TrainConfig field, dimension) pairs.
    """

    num_units: Dimension
    depth: Dimension
    depth_per_unit: bool
    width: WidthRule
    step_size: Dimension
    activation: Dimension
    norm: Dimension
    reversible: Dimension
    train: tuple[tuple[str, Dimension], ...] = ()

    def all(self, max_units: int) -> list[Dimension]:
        """Every dimension, per-unit depths expanded for up to ``max_units`` units."""
        if self.depth_per_unit:
            depths = [dataclasses.replace(self.depth, name=f"{self.depth.name}_{k}")
                      for k in range(max_units)]
        else:
            depths = [self.depth]
        return [self.num_units, *depths, *self.width.dimensions(), self.step_size, self.activation,
                self.norm, self.reversible, *(dim for _, dim in self.train)]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; build it with ``load`` or ``from_dict``.

    Attributes:
        name: The file's stem (or the name given to ``from_dict``).
        description: Free text.
        families: The family dimension.
        dimensions: The dimensions shared by all families.
        family_overrides: (family, dimensions) pairs for families with their own dimensions.
    """

    name: str
    description: str
    families: Dimension
    dimensions: Dimensions
    family_overrides: tuple[tuple[str, Dimensions], ...] = ()

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """Loads a search space by bare name (a shipped file, ``available_spaces()``) or path.

        Raises:
            ValueError: A missing file, unreadable YAML, or a bad key or value (the message
                names the file and the key).
        """
        path = _resolve(name_or_path)
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (safe)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the search space: {exc}") from None
        return cls.from_dict(data, name=path.stem, source=path.name)

    @classmethod
    def from_dict(cls, data: Any, *, name: str = "custom", source: str | None = None) -> SearchSpace:
        """Validates plain data (the file format) into a SearchSpace.

        Args:
            data: The mapping a search space file holds.
            name: The space's name.
            source: Prefix of error messages (the file name).

        Raises:
            ValueError: An unknown key (naming it and the allowed keys), a missing key or a bad
                value (naming the key).
        """
        p = _Parser(f"{source}: " if source else "")
        data = p.mapping(data, "", _TOP_KEYS, required=_REQUIRED)
        data = {**_DEFAULTS, **data}
        description = data.get("description", "")
        if not isinstance(description, str):
            raise p.fail("description", f"expected text, got {description!r}")
        families = p.dimension(data.get("families", list_families()), "family", "family", CHOICE,
                               _member(list_families()))
        dims = p.dimensions(data)
        overrides = []
        raw = p.mapping(data.get("family_overrides", {}), "family_overrides", families.extremes())
        for family, block in raw.items():
            prefix = f"family_overrides.{family}."
            block = p.mapping(block, prefix[:-1], _OVERRIDE_KEYS)
            block_train = p.mapping(block.get("train", {}), prefix + "train", ())
            merged = {**data, **block, "train": {**data["train"], **block_train}}
            overridden = {*block, *(f"train.{key}" for key in block_train)}
            overrides.append((family, p.dimensions(merged, prefix, f"_{family}", inherit=dims,
                                                   overridden=overridden)))
        return cls(name, description, families, dims, tuple(overrides))

    def to_dict(self) -> dict[str, Any]:
        """The file form of this space; ``SearchSpace.from_dict(s.to_dict()) == s`` (names aside)."""
        data: dict[str, Any] = {"description": self.description, "families": self.families.to_data(),
                                **_dims_data(self.dimensions, None)}
        overrides = {family: _dims_data(dims, self.dimensions) for family, dims in self.family_overrides}
        if overrides:
            data["family_overrides"] = overrides
        return data

    # --- candidates ---------------------------------------------------------------------------
    def dimensions_for(self, family: str) -> Dimensions:
        """The dimensions ``family``'s candidates use (its override, or the shared ones)."""
        return dict(self.family_overrides).get(family, self.dimensions)

    def suggest(
        self,
        trial: Trial,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        base_train: Mapping[str, Any] | None = None,
    ) -> tuple[Architecture, TrainConfig]:
        """Builds one candidate from a trial (define-by-run; deterministic given the params).

        Args:
            trial: An ``optuna.Trial`` or anything with its three ``suggest_*`` methods.
            in_channels: Channels of the input images.
            num_classes: Classes of the data.
            image_size: Side of the (square) input, or (height, width): caps the number of units
                so the layout fits (``Architecture.min_input_size``).
            base_train: TrainConfig fields that the space's train dimensions override.

        Returns:
            The architecture and its training config.

        Raises:
            ValueError: If no number of units in the space fits the image size, or the train
                settings are invalid.
        """
        if isinstance(image_size, Sequence):
            height, width = (int(side) for side in image_size)
        else:
            height = width = int(image_size)
        family = self.families.suggest(trial)
        dims = self.dimensions_for(family)
        units_dim = _fit_units(dims.num_units, min(height, width))
        num_units = units_dim.suggest(trial)
        if dims.depth_per_unit:
            depths = tuple(dims.depth.suggest(trial, f"{dims.depth.name}_{k}") for k in range(num_units))
        else:
            depths = (dims.depth.suggest(trial),) * num_units
        widths = dims.width.suggest(trial, num_units, even=family in EVEN_WIDTH_FAMILIES)
        step_size = dims.step_size.suggest(trial)
        activation = dims.activation.suggest(trial)
        norm = dims.norm.suggest(trial)
        reversible = False
        if get_family(family).reversible_scheme and norm != "batch":
            reversible = bool(dims.reversible.suggest(trial))
        arch = Architecture(
            family=family, widths=widths, depths=depths, step_size=step_size, activation=activation,
            norm=norm, in_channels=in_channels, num_classes=num_classes, reversible=reversible,
        )
        arch.check_input(height, width)
        train = {key: dim.suggest(trial) for key, dim in dims.train}
        return arch, TrainConfig.from_dict({**(base_train or {}), **train})

    def replay(
        self,
        params: Mapping[str, Any],
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        base_train: Mapping[str, Any] | None = None,
    ) -> tuple[Architecture, TrainConfig]:
        """Rebuilds the candidate of a trial from its params (``trial.params``, Ray's config).

        Args:
            params: Param name to value; params the space does not ask for are ignored.
            in_channels: As for ``suggest``.
            num_classes: As for ``suggest``.
            image_size: As for ``suggest``.
            base_train: As for ``suggest``.

        Raises:
            ValueError: A param the space needs is missing or outside its dimension.
        """
        return self.suggest(_ReplayTrial(params), in_channels=in_channels, num_classes=num_classes,
                            image_size=image_size, base_train=base_train)

    def grid(self, *, image_size: int | None = None) -> dict[str, list[Any]]:
        """Every param with all its values, for ``optuna.samplers.GridSampler``.

        Conditional params (per family, per unit) are all listed, so some grid points repeat a
        candidate.

        Args:
            image_size: Caps the number of units as ``suggest`` does.

        Raises:
            ValueError: Naming a dimension that is a continuous range.
        """
        grid: dict[str, list[Any]] = {}
        for family in self.families.extremes():
            dims = self.dimensions_for(family)
            units = dims.num_units if image_size is None else _fit_units(dims.num_units, image_size)
            for dim in dims.all(max(units.extremes())):
                if dim.kind != FIXED:
                    grid[dim.name] = dim.values()
            if dims.num_units.name in grid:
                grid[dims.num_units.name] = units.values()
        if self.families.kind != FIXED:
            grid = {self.families.name: self.families.values(), **grid}
        return grid


def available_spaces() -> list[str]:
    """The names of the shipped search spaces."""
    return sorted({p.stem for d in SEARCH_SPACE_DIRS if d.is_dir() for p in d.glob("*.yaml")})


# --- helpers -------------------------------------------------------------------------------------
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


def _fit_units(dim: Dimension, image_side: int) -> Dimension:
    """``num_units`` limited so 2**(K-1) <= image_side."""
    cap = max(1, int(image_side)).bit_length()  # floor(log2(side)) + 1
    fitted = dim.capped(cap)
    if fitted is None:
        raise ValueError(
            f"{dim.name}: {min(dim.extremes())} or more units need inputs of at least "
            f"{2 ** (min(dim.extremes()) - 1)} pixels per side, got {image_side}; "
            f"use at most {cap} units"
        )
    return fitted


def _dims_data(dims: Dimensions, base: Dimensions | None) -> dict[str, Any]:
    """The file form of ``dims``; with ``base``, only what differs from it (an override)."""
    data: dict[str, Any] = {}
    for key in ("num_units", "depth", "depth_per_unit", "width", "step_size", "activation", "norm",
                "reversible"):
        value = getattr(dims, key)
        if base is None or value != getattr(base, key):
            data[key] = value if isinstance(value, bool) else value.to_data()
    base_train = dict(base.train) if base else {}
    train = {k: d.to_data() for k, d in dims.train if base is None or base_train.get(k) != d}
    if train or base is None:
        data["train"] = train
    return data


class _Parser:
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
            raise self.fail(path or "search space", f"expected a mapping, got {raw!r}")
        for key in raw:
            if allowed and key not in allowed:
                names = ", ".join(map(str, allowed))
                raise self.fail(_join(path, key), f"unknown key; allowed keys: {names}")
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
                                              _train_check(key), nullable=nullable)))
        if inherit is not None and "width" not in overridden:
            width = inherit.width
        else:
            width = self.width(data["width"], prefix + "width", suffix)
        if inherit is not None and "depth_per_unit" not in overridden:
            per_unit = inherit.depth_per_unit
        else:
            per_unit = self.flag(data["depth_per_unit"], prefix + "depth_per_unit")
        dims = Dimensions(
            num_units=parse("num_units", INT, _at_least(1)),
            depth=parse("depth", INT, _at_least(1)),
            depth_per_unit=per_unit,
            width=width,
            step_size=parse("step_size", FLOAT, _positive),
            activation=parse("activation", CHOICE, _member(list(ACTIVATIONS))),
            norm=parse("norm", CHOICE, _member(NORMS)),
            reversible=parse("reversible", CHOICE, _boolean),
            train=tuple(train),
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
                              _width_or(words), words=words)
        if not geometric:
            units = data["units"]
            if not isinstance(units, list) or not units:
                raise self.fail(f"{path}.units", f"expected one width per unit, got {units!r}")
            return WidthRule(last=last, units=tuple(
                self.dimension(u, f"{path}.units[{k}]", f"width{suffix}_{k}", INT, _at_least(1))
                for k, u in enumerate(units)))
        for key in ("base", "growth"):
            if key not in data:
                raise self.fail(f"{path}.{key}", "missing; the geometric rule needs base and growth")
        return WidthRule(
            last=last,
            base=self.dimension(data["base"], f"{path}.base", f"width_base{suffix}", INT, _at_least(1)),
            growth=self.dimension(data["growth"], f"{path}.growth", f"width_growth{suffix}", FLOAT,
                                  _positive),
        )

    def flag(self, raw: Any, path: str) -> bool:
        """A plain true/false setting."""
        if not isinstance(raw, bool):
            raise self.fail(path, f"expected true or false, got {raw!r}")
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
            raise self.fail(path, f"expected a non-empty list of choices, got {raw!r}")
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
            raise self.fail(path, f"expected a number, text, true/false or null, got {raw!r}")
        if kind == INT and (isinstance(raw, bool) or not isinstance(raw, int)):
            allowed = " or ".join([*map(repr, words), "an integer"])
            raise self.fail(path, f"expected {allowed}, got {raw!r}")
        if kind == FLOAT:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise self.fail(path, f"expected a number, got {raw!r}")
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
            raise self.fail(f"{path}.log", f"expected true or false, got {log!r}")
        if low > high:
            raise self.fail(path, f"low ({low}) is above high ({high})")
        if log and low <= 0:
            raise self.fail(f"{path}.low", f"a log range needs low > 0, got {low}")
        if step is not None:
            step = self.scalar(step, f"{path}.step", kind, ())
            if step <= 0:
                raise self.fail(f"{path}.step", f"must be > 0, got {step}")
            if log and (kind == FLOAT or step != 1):
                raise self.fail(f"{path}.step", "a log range cannot have a step")
        return Dimension(name, kind, low=low, high=high, log=log, step=step)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _member(allowed: Sequence[str]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"unknown {value!r}; allowed: {', '.join(allowed)}"

    return check


def _at_least(minimum: int) -> Check:
    return lambda value: None if value >= minimum else f"must be >= {minimum}, got {value}"


def _positive(value: Any) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be a finite number > 0, got {value}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _width_or(words: Sequence[str]) -> Check:
    return lambda value: None if value in words else _at_least(1)(value)


_TRAIN_FIELDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _train_kind(key: str, path: str, parser: _Parser) -> tuple[str, bool]:
    """How a TrainConfig field may vary, and whether null is a value: int/float ranges for
    numbers, choices for flags and names, a fixed value for list-valued fields."""
    annotation = _TRAIN_FIELDS.get(key)
    if annotation is None:
        raise parser.fail(path, f"unknown key; allowed keys: {', '.join(_TRAIN_FIELDS)}")
    if "tuple" in annotation:
        return FIXED, False
    if "bool" in annotation or "str" in annotation:
        return CHOICE, True
    return (INT if annotation == "int" else FLOAT), "None" in annotation


def _train_check(key: str) -> Check:
    def check(value: Any) -> str | None:
        try:
            TrainConfig.from_dict({key: list(value) if isinstance(value, tuple) else value})
        except ValueError as exc:
            return str(exc)
        return None

    return check


class _ReplayTrial:
    """A trial that answers from stored params and refuses values outside the space."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def _get(self, name: str) -> Any:
        if name not in self.params:
            have = ", ".join(self.params) or "none"
            raise ValueError(f"{name}: missing from the params to replay (have: {have})")
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._get(name)
        for choice in choices:
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return choice
        raise ValueError(f"{name}: {value!r} is not one of the choices {list(choices)!r}")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = self._get(name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and float(value).is_integer()
        if not ok or not low <= value <= high or (int(value) - low) % step:
            raise ValueError(f"{name}: {value!r} is not an integer in [{low}, {high}] (step {step})")
        return int(value)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name}: {value!r} is not a number in [{low:g}, {high:g}]")
        return float(value)


class _Loader(yaml.SafeLoader):
    """The safe loader, reading ``1e-3`` as a number (YAML 1.2) rather than as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
