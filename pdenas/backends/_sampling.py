"""Optuna samplers by name, and the Optuna pruner of a study's ``early_stop`` section: the search
vocabulary both backends share (the Ray backend drives Ray's ``OptunaSearch`` with the same
samplers)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from pdenas.errors import InputError
from pdenas.study import StudyConfig

__all__ = ["SAMPLERS", "check_names", "check_options", "claim_seed", "directions",
           "make_pruner", "make_sampler"]

SAMPLERS = ("tpe", "random", "nsga2", "cmaes", "gp", "grid")


MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "nsga2", "gp", "grid")
"""Samplers that take several objectives (CMA-ES optimises one)."""


def check_names(config: StudyConfig) -> None:
    """Refuses an unknown sampler name, CMA-ES for a multi-objective study and CMA-ES without its
    package (``section.key: problem; allowed: ...``)."""
    if config.sampler not in SAMPLERS:
        raise InputError(f"sampler: unknown {config.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if config.sampler == "cmaes":
        if config.multi_objective:
            raise InputError(f"sampler: cmaes optimises one objective, and the study has "
                             f"{len(config.objectives)} ({', '.join(config.objectives)}); allowed "
                             f"with several: {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            raise InputError("sampler: cmaes needs the cmaes package; allowed: "
                             "pip install 'pdenas[cmaes]'")


_SAMPLER_CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "nsga2": "NSGAIISampler",
                    "cmaes": "CmaEsSampler", "gp": "GPSampler", "grid": "GridSampler"}
_SET_BY_PDENAS = {"seed", "constraints_func", "search_space"}
"""Sampler arguments pdenas fills in itself (``seed`` may still be given, as a number)."""


def _check_values(section: str, cls: type, options: Mapping[str, Any]) -> None:
    """Checks each option against ``cls``'s signature: a known name, and for an option annotated
    as a number or a flag, a value of that kind (finite; >= 0 where the default is)."""
    parameters = {name: p for name, p in inspect.signature(cls).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    allowed = sorted(n for n in parameters if n not in _SET_BY_PDENAS - {"seed"})
    for key, value in options.items():
        name = f"{section}.{key}"
        if key not in allowed:
            raise InputError(f"{name}: unknown option of {cls.__name__}; allowed: "
                             f"{', '.join(allowed) or 'none'}")
        parameter = parameters[key]
        annotation = parameter.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        kinds = {part.strip() for part in (text or "").split("|")}
        if value is None and "None" in kinds:
            continue
        kinds.discard("None")
        default = 0 if key == "seed" else parameter.default
        floor = " >= 0" if isinstance(default, (int, float)) and default >= 0 else ""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kinds == {"bool"}:
            if not isinstance(value, bool):
                raise InputError(f"{name}: got {value!r}; allowed: true or false")
        elif kinds == {"int"}:
            if not isinstance(value, int) or isinstance(value, bool) or (floor and value < 0):
                raise InputError(f"{name}: got {value!r}; allowed: an integer{floor}")
        elif kinds and kinds <= {"int", "float"}:
            if not number or not math.isfinite(value) or (floor and value < 0):
                raise InputError(f"{name}: got {value!r}; allowed: a finite number{floor}")
        elif any(k.startswith(("Callable", "BaseSampler", "Sequence[Callable")) for k in kinds):
            raise InputError(f"{name}: set by code, not by a study file; allowed: leave it out")
        elif number and not math.isfinite(value):
            raise InputError(f"{name}: got {value!r}; allowed: a finite number")


def check_options(config: StudyConfig) -> None:
    """Validates the sampler's options before anything runs: known names, values of the right
    kind, and the sampler built once (so Optuna's own range checks run).

    Raises:
        ValueError: ``sampler.KEY: problem; allowed: ...``.
    """
    check_names(config)
    _check_values("sampler", getattr(optuna.samplers, _SAMPLER_CLASSES[config.sampler]),
                  config.sampler_options)
    if config.sampler != "grid":  # the grid sampler needs the space's grid: built in prepare
        make_sampler(config)


def claim_seed(base: int, stored: int) -> int:
    """The sampler seed of the claim made when the study holds ``stored`` trials: a function of
    the study's seed and the count only, so a one-worker search is reproducible, and two workers
    (whose claims are serialised by the budget lock, each adding a trial) never share one."""
    return (int(base) * 1_000_003 + 7919 * int(stored)) % 2**32


def directions(config: StudyConfig) -> list[str]:
    """Optuna's directions, one per objective: accuracy maximised, a cost minimised."""
    return ["maximize"] + ["minimize"] * (len(config.objectives) - 1)


def make_sampler(config: StudyConfig, grid: Callable[[], dict[str, list[Any]]] | None = None,
                 *, stored: int | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded, constraint-aware where the sampler supports it.

    Args:
        config: The study.
        grid: The search space's grid (for the grid sampler).
        stored: The number of trials the study holds at this claim: the seed becomes
            ``claim_seed(seed, stored)`` (None: the study's seed as it is).

    Raises:
        ValueError: An unknown name or bad options.
    """
    check_names(config)
    options = dict(config.sampler_options)
    seed = options.pop("seed", config.seed)
    if stored is not None:
        seed = claim_seed(seed, stored)
    # Cost limits and the predicted time reach TPE, NSGA-II and GP through the trials'
    # constraints (``Trial.set_constraint``, set by the backend before training), which those
    # samplers read from every trial; ``constraints_func`` is deprecated since Optuna 5.
    makers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **options),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, **options),
        "grid": lambda: optuna.samplers.GridSampler(_grid(grid), seed=seed, **options),
    }
    try:
        return makers[config.sampler]()
    except (TypeError, ValueError) as error:
        raise InputError(f"sampler: {str(error).splitlines()[0]}") from None


def _grid(grid: Callable[[], dict[str, list[Any]]] | None) -> dict[str, list[Any]]:
    if grid is None:
        raise InputError("sampler: grid needs a search space")
    return grid()


def make_pruner(config: StudyConfig, max_resource: int) -> optuna.pruners.BasePruner:
    """The study's Optuna pruner: Optuna's HyperbandPruner for ``early_stop.rule: hyperband``
    (its first rung at ``min_epochs``, brackets up to ``max_resource`` epochs), else none (pdenas's
    own rules run in the trial hook, ``backends/_early_stop.py``)."""
    early = config.early_stop
    if early.rule != "hyperband":
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=early.min_epochs,
                                          max_resource=max(max_resource, early.min_epochs),
                                          reduction_factor=early.reduction)
