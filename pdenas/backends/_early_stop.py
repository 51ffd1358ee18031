"""The study's ``early_stop`` rules as pure functions of learning curves, for both backends.

A rule sees one trial's curve (its validation accuracy after each epoch, and its cost) and the
curves of the other trials that reached the same epoch, and says whether the trial stops there.
Each backend only gathers the curves: the Optuna backend from the other trials' records (decoded
from the study's user attributes, ``_codec.decode``) in its trial hook, the Ray backend in a Tune
scheduler (``EarlyStopScheduler`` in ``ray.py``) from the results reported to it. So the same
study, fed the same curves in the same order, stops the same trials on either backend
(``tests/test_backends_conformance.py``).

The rules (``EarlyStop.rule``); a trial is never stopped before ``min_epochs`` epochs nor at its
last epoch, and every trial goes on while fewer than ``MIN_TRIALS`` (itself included) reached
the epoch. A trial's accuracy at epoch e is its best validation accuracy over epochs 1..e:

- ``median``: at every epoch from ``min_epochs`` on, stop below the median (the ``percentile``-th
  percentile, 50) (numpy's linear interpolation) of the others' accuracy at that epoch (as Optuna's
  MedianPruner/PercentilePruner compare).
- ``asha``: successive halving at rungs ``min_epochs * reduction**k``: of the ``n`` trials that
  reached a rung, the best ``ceil(n / reduction)`` go on (ties with the last kept one go on).
- ``mo_asha``: the same by non-dominated sorting of (accuracy, cost), then crowding distance
  (Schmucker et al. 2021, "Multi-objective asynchronous successive halving"), so a candidate
  cheaper than every other one is never stopped for its accuracy alone.

Written here rather than taken from Optuna's ``SuccessiveHalvingPruner`` or Ray's
``ASHAScheduler``: their cut-off arithmetic differs (Optuna keeps the top ``floor(n / eta)``,
at least one, of the ``n`` trials at a rung; Ray compares with the ``(1 - 1/eta)`` quantile of
the values recorded at the rung, interpolated, and counts no minimum of trials), so the same
study would stop different trials on the two backends; Optuna's pruners also refuse multi-objective studies and Ray ships no multi-objective
scheduler. ``hyperband`` stays each backend's own (Optuna's HyperbandPruner, Ray's asynchronous
HyperBand), with the same first rung and reduction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pdenas.results import pareto_ranks

if TYPE_CHECKING:
    from pdenas.runs import TrialRecord
    from pdenas.space import SearchSpace
    from pdenas.study import EarlyStop, StudyConfig

__all__ = ["MIN_TRIALS", "OWN_RULES", "Curve", "asha_keeps", "checks", "is_rung", "max_epochs",
           "mo_asha_keeps", "stop_reason", "stops"]

MIN_TRIALS = 4
"""pdenas's rules keep every trial while fewer than this many (itself included) reached the
epoch: with fewer, a percentile or a share of the trials says little."""

OWN_RULES = ("median", "asha", "mo_asha")
"""The rules this module decides; ``hyperband`` and ``none`` are the backends' own."""


@dataclass(frozen=True)
class Curve:
    """A trial as the rules see it.

    Attributes:
        accuracy: Validation accuracy after each epoch (epoch k at index k - 1).
        cost: The cost objective's value (infinity when unknown or not a multi-objective study).
    """

    accuracy: tuple[float, ...]
    cost: float = math.inf

    @classmethod
    def of(cls, record: TrialRecord, cost: str | None = None) -> Curve:
        """A record's curve (its ``history``) and its ``cost`` metric."""
        accuracy = tuple(float(h.get("val_accuracy", math.nan)) for h in record.history)
        value = record.cost.get(cost) if cost else None
        return cls(accuracy, math.inf if value is None else float(value))

    def best(self, epoch: int) -> float:
        """The best accuracy over epochs 1..``epoch`` (NaN epochs ignored; -inf if none)."""
        return max((a for a in self.accuracy[:epoch] if not math.isnan(a)),
                   default=-math.inf)


def is_rung(epoch: int, grace: int, eta: int) -> bool:
    """Whether ``epoch`` is a rung: ``grace * eta**k`` for some k >= 0."""
    if epoch < grace:
        return False
    rung = grace
    while rung < epoch:
        rung *= eta
    return rung == epoch


def checks(config: EarlyStop, epoch: int, planned: int) -> bool:
    """Whether the study's own rule looks at a trial after ``epoch`` of its ``planned`` epochs."""
    if config.rule not in OWN_RULES or epoch < config.min_epochs or epoch >= planned:
        return False
    return config.rule == "median" or is_rung(epoch, config.min_epochs, config.reduction)


def stops(config: EarlyStop, me: Curve, others: Iterable[Curve], planned: int,
          min_trials: int = MIN_TRIALS) -> bool:
    """Whether the trial whose curve is ``me`` stops after its last epoch so far.

    Args:
        config: The study's ``early_stop`` section.
        me: The trial's curve up to now (its length is the epoch).
        others: The other trials' curves (any length: those shorter than ``me`` did not reach
            the epoch and are left out).
        planned: The trial's planned epochs (it never stops at its last).
        min_trials: Keep every trial while fewer than this many reached the epoch.
    """
    epoch = len(me.accuracy)
    if not checks(config, epoch, planned):
        return False
    reached = [c for c in others if len(c.accuracy) >= epoch]
    if len(reached) + 1 < min_trials:
        return False
    mine, theirs = me.best(epoch), [c.best(epoch) for c in reached]
    if config.rule == "median":
        return mine < float(np.percentile(theirs, config.percentile))
    if config.rule == "asha":
        return not asha_keeps(mine, theirs, config.reduction)
    return not mo_asha_keeps((mine, me.cost), [(c.best(epoch), c.cost) for c in reached],
                             config.reduction)


def stop_reason(rule: str, epochs: int, planned: int) -> str:
    """The record's reason for a trial stopped early, the same words on both backends."""
    return f"stopped early by the {rule} rule after {epochs} of {planned} epochs"


def asha_keeps(me: float, others: Sequence[float], eta: int, min_trials: int = 1) -> bool:
    """Whether a trial at a rung goes on: among the best ``ceil(n / eta)`` of the ``n`` trials
    that reached it by accuracy (a tie with the last one kept goes on)."""
    n = len(others) + 1
    if n < min_trials:
        return True
    return sum(a > me for a in others) < math.ceil(n / eta)


def _crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of points (n, m) on one front (ends: infinity)."""
    n = len(points)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for m in range(points.shape[1]):
        order = np.argsort(points[:, m], kind="stable")
        span = points[order[-1], m] - points[order[0], m]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            gaps = (points[order[2:], m] - points[order[:-2], m]) / span
            distance[order[1:-1]] += gaps
    return distance


def mo_asha_keeps(me: tuple[float, float], others: Sequence[tuple[float, float]], eta: int,
                  min_trials: int = 1) -> bool:
    """Whether a trial at a rung goes on (MO-ASHA).

    Args:
        me: This trial's (accuracy at the rung, cost); accuracy maximised, cost minimised.
        others: The same for every other trial that reached the rung.
        eta: The reduction factor: the best ``ceil(n / eta)`` of ``n`` go on.
        min_trials: Keep every trial while fewer than this many reached the rung.
    """
    points = np.array([me, *others], dtype=float).reshape(-1, 2)
    points[~np.isfinite(points[:, 1]), 1] = np.inf  # unknown cost never dominates
    n = len(points)
    if n < min_trials:
        return True
    keep = math.ceil(n / eta)
    ranks = pareto_ranks(points, [True, False])
    order: list[int] = []
    for rank in sorted(set(ranks)):
        members = np.flatnonzero(ranks == rank)
        minimised = np.column_stack([-points[members, 0], points[members, 1]])
        minimised[~np.isfinite(minimised)] = np.finfo(float).max
        crowd = _crowding(minimised)
        order.extend(members[np.argsort(-crowd, kind="stable")])
    return 0 in order[:keep]


def max_epochs(config: StudyConfig, space: SearchSpace) -> int:
    """The most epochs any candidate trains (Hyperband's largest resource, Tune's ``max_t``)."""
    most = int(config.train.epochs)
    for family in space.families.extremes():
        for key, dim in space.dimensions_for(family).train:
            if key == "epochs":
                most = max(most, *(int(v) for v in dim.extremes()))
    return most
