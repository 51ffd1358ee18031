"""Early stopping for multi-objective studies that keeps the Pareto front: MO-ASHA.

Successive halving with non-dominated sorting at each rung (Schmucker et al. 2021, "Multi-
objective asynchronous successive halving"): rungs sit at ``grace * eta**k`` epochs; a trial
that reaches a rung goes on only when it is among the best ``ceil(n / eta)`` of the ``n`` trials
that reached that rung, ordered by Pareto rank of (accuracy at the rung, cost), then, within a
rank, by crowding distance (the ends of each front first). So a candidate cheaper than every
other one is never stopped for its accuracy alone. Written here because Optuna's pruners refuse
multi-objective studies and Ray Tune ships no multi-objective scheduler; both backends call
``mo_asha_keeps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pdenas.results import pareto_ranks

__all__ = ["is_rung", "mo_asha_keeps"]


def is_rung(epoch: int, grace: int, eta: int) -> bool:
    """Whether ``epoch`` is a rung: ``grace * eta**k`` for some k >= 0."""
    if epoch < grace:
        return False
    rung = grace
    while rung < epoch:
        rung *= eta
    return rung == epoch


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
    """Whether a trial at a rung goes on.

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
