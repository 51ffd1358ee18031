"""The importance of the step size h, depth and width for validation accuracy, per PDE family
(Optuna's fANOVA over each family's finished trials)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd

from pdenas.results import family_order, fully_trained

__all__ = ["IMPORTANCE_PARAMS", "MIN_IMPORTANCE_TRIALS", "family_importances", "format_importances"]

MIN_IMPORTANCE_TRIALS = 5
"""Fewest finished trials of a family for which importances are computed."""

IMPORTANCE_PARAMS = {"h": "step_size", "depth": "total_depth", "width": "mean_width"}
"""Importance name -> trials column: the step size, time steps of all units, mean unit width."""

_LOG_PARAMS = ("step_size", "mean_width")


def _evaluator() -> Any:
    import optuna

    try:
        import sklearn  # noqa: F401  (fANOVA fits a random forest)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def family_importances(trials: pd.DataFrame, min_trials: int = MIN_IMPORTANCE_TRIALS,
                       evaluator: Any = None) -> pd.DataFrame:
    """The importance of h, depth and width for validation accuracy, per family.

    The per-unit search parameters are reduced to ``IMPORTANCE_PARAMS`` (step size, total time
    steps, mean unit width); each family's finished trials become an in-memory Optuna study over
    those, and Optuna's importance evaluator (fANOVA by default) scores them, normalised to sum
    to 1. A family with fewer than ``min_trials`` finished trials gets no scores and a note.

    Returns:
        Columns ``family, trials, h, depth, width, note`` (scores NaN where there are none).
    """
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = fully_trained(trials)
    done = done.dropna(subset=["val_accuracy", *IMPORTANCE_PARAMS.values()]) if len(done) else done
    distributions = {}
    for name, column in IMPORTANCE_PARAMS.items():
        if len(done) and done[column].max() > done[column].min():
            log = column in _LOG_PARAMS and done[column].min() > 0
            distributions[name] = FloatDistribution(float(done[column].min()), float(done[column].max()), log=log)
    rows = []
    for family in family_order(trials):
        mine = done[done["family"] == family] if len(done) else done
        row: dict[str, Any] = {"family": family, "trials": len(mine), "h": math.nan,
                               "depth": math.nan, "width": math.nan, "note": ""}
        varied = {n: d for n, d in distributions.items() if mine[IMPORTANCE_PARAMS[n]].nunique() > 1}
        if len(mine) < min_trials:
            row["note"] = f"n/a: {len(mine)} finished trial{'s' if len(mine) != 1 else ''}, needs {min_trials}"
        elif not varied:
            row["note"] = "n/a: h, depth and width did not vary"
        else:
            study = optuna.create_study(direction="maximize")
            study.add_trials([
                optuna.trial.create_trial(
                    params={n: float(r[IMPORTANCE_PARAMS[n]]) for n in varied},
                    distributions=varied, value=float(r["val_accuracy"]))
                for _, r in mine.iterrows()
            ])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(
                    study, evaluator=evaluator or _evaluator(), normalize=True)
            row.update({name: float(scores.get(name, 0.0)) for name in IMPORTANCE_PARAMS})
            fixed = [n for n in IMPORTANCE_PARAMS if n not in varied]
            if fixed:
                row["note"] = f"{', '.join(fixed)} did not vary"
        rows.append(row)
    return pd.DataFrame(rows, columns=["family", "trials", "h", "depth", "width", "note"])


def format_importances(table: pd.DataFrame) -> pd.DataFrame:
    """The importance table as display strings: scores, or the note where there are none."""
    shown = pd.DataFrame({"family": table["family"], "finished": table["trials"]})
    for name in IMPORTANCE_PARAMS:
        shown[name] = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in table[name].astype(float)]
    shown["note"] = table["note"].fillna("")
    return shown
