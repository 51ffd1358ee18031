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
    start: [rest, half_step]                # asked only of second_order (leapfrog's first step)
    layer_init: torch                       # or meganet: the authors' opening/connector/classifier
    bn_eps: 1.0e-5                          # every batch norm's eps (the authors': 1.0e-4)
    train: {lr: {low: 1.0e-3, high: 0.3, log: true}, optimizer: sgd}   # any TrainConfig field
    family_overrides:                       # per family: replaces those dimensions
      hamiltonian: {step_size: {low: 0.05, high: 1.0, log: true}}

A dimension is written as a scalar (fixed), a list (choices: JSON scalars), ``{value: x}`` (fixed,
also for list values such as ``milestones``), ``{choices: [...]}``, or a range ``{low, high,
log, step}``. ``width.last`` is ``same`` (the last unit's width), ``grow`` (one more growth step,
geometric widths only) or an integer dimension.

Param names are the dimension names (``family``, ``num_units``, ``depth``, ``width_base``,
``width_growth``, ``width_last``, ``step_size``, ``activation``, ``norm``, ``reversible``,
``start``, ``layer_init``, ``bn_eps``, the train keys); a family override appends
``_<family>`` (``step_size_hamiltonian``) and per-unit params
append ``_<unit index>`` (``depth_0``, ``width_hamiltonian_1``). Fixed dimensions make no param.
Unit widths are rounded up to the family's width multiple (even for hamiltonian).

The module map: ``_dimension`` (``Dimension``: fixed, choices or a range, asked of a trial, its grid
values and file form; ``Dimensions``: one family's dimensions), ``_width`` (``WidthRule``),
``_trial`` (the ``Trial`` protocol and the replaying trial), ``_checks`` (value checks),
``_parse`` (file data -> dimensions, errors naming file and key), ``_files`` (shipped spaces,
resolving names, reading YAML), ``_space`` (``SearchSpace``: load, suggest, replay, grid).
"""

from __future__ import annotations

from pdenas.space._dimension import Dimension, Dimensions
from pdenas.space._files import available_spaces, shipped_space
from pdenas.space._space import SearchSpace
from pdenas.space._trial import Trial
from pdenas.space._width import WidthRule

__all__ = [
    "Dimension",
    "Dimensions",
    "SearchSpace",
    "Trial",
    "WidthRule",
    "available_spaces",
    "shipped_space",
]
