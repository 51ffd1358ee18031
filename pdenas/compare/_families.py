"""The family table of ``pdenas compare``: per PDE family, trials by outcome, best and median
accuracy, the best accuracy within the run's median cost, the share of the Pareto front and the
hypervolume contribution."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pdenas.compare._report import pct
from pdenas.results import family_order, fully_trained, hypervolume_2d, pareto_ranks
from pdenas.runs import TrialStatus

__all__ = ["NOT_FINAL", "family_table", "format_family_table"]

_STOPPED = tuple(s.value for s in TrialStatus if s.state == "PRUNED")
"""Stopped early (stopped, timeout) or not trained (infeasible)."""
NOT_FINAL = tuple(s.value for s in TrialStatus if not (s.final and s.uses_budget))
"""Statuses of trials that did not use up the budget (under way, or interrupted or lost and
queued again): left out of the tables."""


def _hv_points(done: pd.DataFrame, cost: str) -> tuple[np.ndarray, tuple[float, float]]:
    """(n, 2) minimised points (-accuracy, log10 cost) and the reference: the worst value of each,
    pushed out by 10 % of its range so that the extreme points count too."""
    points = np.column_stack([-done["val_accuracy"].to_numpy(float),
                              np.log10(done[cost].to_numpy(float))])
    worst, best = points.max(axis=0), points.min(axis=0)
    margin = np.maximum(0.1 * (worst - best), (0.01, 0.1))
    return points, (float(worst[0] + margin[0]), float(worst[1] + margin[1]))


def family_table(trials: pd.DataFrame, cost: str) -> pd.DataFrame:
    """One row per family with the counts and the accuracy, budget, front and hypervolume columns.

    Args:
        trials: ``load_trials`` of a run.
        cost: The cost objective (e.g. ``flops``).

    Returns:
        Columns ``family, trials, finished, stopped, diverged, failed, best_accuracy,
        best_val_loss`` (the lowest validation loss, which separates equal accuracies),
        ``median_accuracy, best_within_budget, front_points, front_share, hv_contribution,
        hv_share, norms, epochs, seconds, devices`` (the normalisation each family's units used,
        and the compute it got: epochs trained and wall seconds of its trials, on which devices).
        ``finished`` counts trials completed at the full budget; ``stopped`` also counts
        early-stopped and infeasible (over a cost limit, not trained) ones; ``failed`` crashes and
        out-of-memory. ``attrs`` holds ``cost``, ``budget`` (the median cost of the finished trials),
        ``front_size`` and ``hypervolume`` (of all finished trials, in accuracy × decades of cost).
    """
    final = trials[~trials["status"].isin(NOT_FINAL)] if len(trials) else trials
    done = fully_trained(final)
    done = done[done[cost].notna() & (done[cost] > 0)] if len(done) else done
    budget = float(done[cost].median()) if len(done) else math.nan
    on_front = np.zeros(len(done), dtype=bool)
    total_hv, reference, points = 0.0, (0.0, 0.0), np.zeros((0, 2))
    if len(done):
        on_front = pareto_ranks(done[["val_accuracy", cost]].to_numpy(float), [True, False]) == 1
        points, reference = _hv_points(done, cost)
        total_hv = hypervolume_2d(points, reference)
    rows = []
    for family in family_order(final):
        mine = final[final["family"] == family]
        ok = (done["family"] == family).to_numpy(bool)
        scores = done.loc[ok, "val_accuracy"]
        within = done.loc[ok & (done[cost] <= budget).to_numpy(bool), "val_accuracy"]
        contribution = total_hv - hypervolume_2d(points[~ok], reference) if ok.any() else 0.0
        full = mine["comparable"].astype(bool)
        rows.append({
            "family": family,
            "trials": len(mine),
            "finished": int(full.sum()),
            "stopped": int((mine["status"].isin(_STOPPED)
                            | (mine["status"].eq(TrialStatus.COMPLETED.value) & ~full)).sum()),
            "diverged": int(mine["status"].eq(TrialStatus.DIVERGED.value).sum()),
            "failed": int((~mine["status"].isin((*_STOPPED, TrialStatus.COMPLETED.value,
                                                    TrialStatus.DIVERGED.value))).sum()),
            "best_accuracy": float(scores.max()) if len(scores) else math.nan,
            "best_val_loss": (float(done.loc[ok, "val_loss"].min())
                              if len(scores) and "val_loss" in done else math.nan),
            "median_accuracy": float(scores.median()) if len(scores) else math.nan,
            "best_within_budget": float(within.max()) if len(within) else math.nan,
            "front_points": int(on_front[ok].sum()),
            "front_share": float(on_front[ok].sum() / on_front.sum()) if on_front.any() else math.nan,
            "hv_contribution": float(contribution),
            "hv_share": float(contribution / total_hv) if total_hv > 0 else math.nan,
            "norms": ", ".join(sorted(str(n) for n in mine["norm"].dropna().unique())) or "-",
            "epochs": int(pd.to_numeric(mine["epochs_trained"], errors="coerce").fillna(0).sum()),
            "seconds": float(pd.to_numeric(mine["seconds"], errors="coerce").fillna(0).sum()),
            "devices": ", ".join(sorted(str(d) for d in mine.get("device", pd.Series(dtype=object))
                                        .dropna().unique())) or "-",
        })
    table = pd.DataFrame(rows, columns=["family", "trials", "finished", "stopped", "diverged", "failed",
                                        "best_accuracy", "best_val_loss", "median_accuracy",
                                        "best_within_budget",
                                        "front_points", "front_share", "hv_contribution", "hv_share",
                                        "norms", "epochs", "seconds", "devices"])
    table.attrs.update(cost=cost, budget=budget, front_size=int(on_front.sum()), hypervolume=total_hv)
    return table


def format_family_table(table: pd.DataFrame) -> pd.DataFrame:
    """The family table as display strings (for the terminal and the Markdown report)."""
    front = table.attrs.get("front_size", 0)
    return pd.DataFrame({
        "family": table["family"],
        "trials": table["trials"],
        "finished": table["finished"],
        "stopped": table["stopped"],
        "diverged": table["diverged"],
        "failed": table["failed"],
        "best acc": table["best_accuracy"].map(pct),
        "best loss": table["best_val_loss"].map(lambda v: "-" if v != v else f"{v:.3f}"),
        "median acc": table["median_accuracy"].map(pct),
        "best acc ≤ budget": table["best_within_budget"].map(pct),
        "Pareto front": [f"{n}/{front} ({pct(s)})" if front else "-"
                         for n, s in zip(table["front_points"], table["front_share"])],
        "HV contribution": table["hv_share"].map(pct),
        "norm": table["norms"],
        "epochs": table["epochs"],
        "seconds": [f"{t:,.0f} ({d})" for t, d in zip(table["seconds"], table["devices"])],
    })
