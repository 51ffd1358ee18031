"""``SearchSpace``: a validated space (``load``, ``from_dict``, ``to_dict``) and its candidates:
``suggest`` (define-by-run), ``replay`` (from stored params) and ``grid`` (for ``GridSampler``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdenas.architecture import TORCH_BN_EPS, Architecture
from pdenas.errors import InputError
from pdenas.families import get_family, list_families
from pdenas.space._checks import member
from pdenas.space._dimension import CHOICE, FIXED, Dimension, Dimensions
from pdenas.space._files import read_space_file
from pdenas.space._parse import Parser
from pdenas.space._trial import PartialTrial, ReplayTrial, Trial
from pdenas.train import TrainConfig

__all__ = ["SearchSpace"]

_TOP_KEYS = (
    "description", "families", "num_units", "depth", "depth_per_unit", "width", "step_size",
    "activation", "norm", "reversible", "opening_stride", "start", "layer_init", "bn_eps",
    "train", "family_overrides",
)
_OVERRIDE_KEYS = _TOP_KEYS[2:-1]
_DEFAULTS: dict[str, Any] = {
    "depth_per_unit": False, "step_size": 1.0, "activation": "relu", "norm": "tv",
    "reversible": False, "opening_stride": 1, "start": "rest", "layer_init": "torch",
    "bn_eps": TORCH_BN_EPS, "train": {},
}
_REQUIRED = ("num_units", "depth", "width")


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
        path, data = read_space_file(name_or_path)
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
        p = Parser(f"{source}: " if source else "")
        data = p.mapping(data, "", _TOP_KEYS, required=_REQUIRED)
        data = {**_DEFAULTS, **data}
        description = data.get("description", "")
        if not isinstance(description, str):
            raise p.fail("description", f"got {description!r}; allowed: text")
        families = p.dimension(data.get("families", list_families()), "family", "family", CHOICE,
                               member(list_families()))
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
        opening_stride = dims.opening_stride.suggest(trial)
        units_dim = _fit_units(dims.num_units, min(height, width) // opening_stride)
        num_units = units_dim.suggest(trial)
        if dims.depth_per_unit:
            depths = tuple(dims.depth.suggest(trial, f"{dims.depth.name}_{k}") for k in range(num_units))
        else:
            depths = (dims.depth.suggest(trial),) * num_units
        widths = dims.width.suggest(trial, num_units, round_width=get_family(family).round_width)
        step_size = dims.step_size.suggest(trial)
        activation = dims.activation.suggest(trial)
        norm = dims.norm.suggest(trial)
        reversible = False
        if get_family(family).reversible_scheme and norm != "batch":
            reversible = bool(dims.reversible.suggest(trial))
        starts = get_family(family).starts
        start = dims.start.suggest(trial) if len(starts) > 1 else starts[0]
        arch = Architecture(
            family=family, widths=widths, depths=depths, step_size=step_size, activation=activation,
            norm=norm, in_channels=in_channels, num_classes=num_classes, reversible=reversible,
            opening_stride=opening_stride, start=start, layer_init=dims.layer_init.suggest(trial),
            bn_eps=dims.bn_eps.suggest(trial),
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
        return self.suggest(ReplayTrial(params), in_channels=in_channels, num_classes=num_classes,
                            image_size=image_size, base_train=base_train)

    def check_params(
        self,
        params: Mapping[str, Any],
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
    ) -> None:
        """Refuses fixed params that no candidate of this space can take (a study's
        ``start_with``): a name the space does not ask for (given the other fixed params: a
        family's own params need that family), or a value outside its dimension. The params not
        given take their lowest value for the check.

        Raises:
            ValueError: ``NAME: got VALUE; allowed: ...`` for the first bad one.
        """
        trial = PartialTrial(params)
        self.suggest(trial, in_channels=in_channels, num_classes=num_classes,
                     image_size=image_size)
        for name in params:
            if name not in trial.asked:
                raise InputError(f"{name}: not a param of this space's candidates (given the "
                                 f"others); allowed: {', '.join(dict.fromkeys(trial.asked))}")

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
            stride = max(dims.opening_stride.extremes())
            units = (dims.num_units if image_size is None
                     else _fit_units(dims.num_units, image_size // stride))
            for dim in dims.all(max(units.extremes())):
                if dim.kind != FIXED:
                    grid[dim.name] = dim.values()
            if dims.num_units.name in grid:
                grid[dims.num_units.name] = units.values()
        if self.families.kind != FIXED:
            grid = {self.families.name: self.families.values(), **grid}
        return grid


def _fit_units(dim: Dimension, image_side: int) -> Dimension:
    """``num_units`` limited so 2**(K-1) <= image_side."""
    cap = max(1, int(image_side)).bit_length()  # floor(log2(side)) + 1
    fitted = dim.capped(cap)
    if fitted is None:
        raise InputError(
            f"{dim.name}: {min(dim.extremes())} or more units need inputs of at least "
            f"{2 ** (min(dim.extremes()) - 1)} pixels per side, got {image_side}; "
            f"use at most {cap} units"
        )
    return fitted


def _dims_data(dims: Dimensions, base: Dimensions | None) -> dict[str, Any]:
    """The file form of ``dims``; with ``base``, only what differs from it (an override)."""
    data: dict[str, Any] = {}
    for key in ("num_units", "depth", "depth_per_unit", "width", "step_size", "activation", "norm",
                "reversible", "opening_stride", "start", "layer_init", "bn_eps"):
        value = getattr(dims, key)
        if base is None or value != getattr(base, key):
            data[key] = value if isinstance(value, bool) else value.to_data()
    base_train = dict(base.train) if base else {}
    train = {k: d.to_data() for k, d in dims.train if base is None or base_train.get(k) != d}
    if train or base is None:
        data["train"] = train
    return data
