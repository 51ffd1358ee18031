"""Optuna samplers and pruners by name: the search vocabulary both backends share (the Ray
backend drives Ray's ``OptunaSearch`` with the same samplers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from pdenas.study import StudyConfig

__all__ = ["PRUNERS", "SAMPLERS", "check_names", "directions", "make_pruner", "make_sampler"]

SAMPLERS = ("tpe", "random", "nsga2", "cmaes", "gp", "grid")
PRUNERS = ("median", "hyperband", "successive_halving", "none")


MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "nsga2", "gp", "grid")
"""Samplers that take several objectives (CMA-ES optimises one)."""


def check_names(config: StudyConfig) -> None:
    """Refuses an unknown sampler or pruner name, CMA-ES for a multi-objective study and CMA-ES
    without its package (``section.key: problem; allowed: ...``)."""
    if config.sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {config.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if config.sampler == "cmaes":
        if config.multi_objective:
            raise ValueError(f"sampler: cmaes optimises one objective, and the study has "
                             f"{len(config.objectives)} ({', '.join(config.objectives)}); allowed "
                             f"with several: {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            raise ValueError("sampler: cmaes needs the cmaes package; allowed: "
                             "pip install 'pdenas[cmaes]'")
    if config.pruner not in PRUNERS:
        raise ValueError(f"pruner: unknown {config.pruner!r}; allowed: {', '.join(PRUNERS)}")


def directions(config: StudyConfig) -> list[str]:
    """Optuna's directions, one per objective: accuracy maximised, a cost minimised."""
    return ["maximize"] + ["minimize"] * (len(config.objectives) - 1)


def _constraints(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints") or [])


def make_sampler(config: StudyConfig, grid: Callable[[], dict[str, list[Any]]] | None = None,
                 *, constrained: bool = True) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded, constraint-aware where the sampler supports it.

    Args:
        config: The study.
        grid: The search space's grid (for the grid sampler).
        constrained: Pass the study's cost limits to the sampler (they are read from the
            trials' ``constraints`` user attribute).

    Raises:
        ValueError: An unknown name or bad options.
    """
    check_names(config)
    options = dict(config.sampler_options)
    seed = options.pop("seed", config.seed)
    limits = ({"constraints_func": _constraints}
              if constrained and config.constraints.active else {})
    makers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **limits, **options),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, **limits, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, **limits, **options),
        "grid": lambda: optuna.samplers.GridSampler(_grid(grid), seed=seed, **options),
    }
    try:
        return makers[config.sampler]()
    except TypeError as error:
        raise ValueError(f"sampler_options: {error}") from None


def _grid(grid: Callable[[], dict[str, list[Any]]] | None) -> dict[str, list[Any]]:
    if grid is None:
        raise ValueError("sampler: grid needs a search space")
    return grid()


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; multi-objective studies get none (pdenas's own rule applies)."""
    check_names(config)
    options = dict(config.pruner_options)
    if config.multi_objective or config.pruner == "none":
        return optuna.pruners.NopPruner()
    try:
        if config.pruner == "median":
            options.setdefault("n_startup_trials", 4)
            options.setdefault("n_warmup_steps", 1)
            return optuna.pruners.MedianPruner(**options)
        if config.pruner == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", config.train.epochs)
            return optuna.pruners.HyperbandPruner(**options)
        options.setdefault("min_resource", 1)
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    except TypeError as error:
        raise ValueError(f"pruner_options: {error}") from None
