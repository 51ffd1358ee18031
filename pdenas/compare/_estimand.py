"""What ``pdenas compare`` estimates, said at the top of its report, and each family's expected
best validation accuracy as a function of the number of trials (Dodge et al. 2019), so that a
family with fewer finished trials is judged at the same number of trials as the others."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pdenas.compare._stats import expected_max_curve
from pdenas.results import RunInfo, family_order, fully_trained

__all__ = ["EXPECTED_MAX_TEXT", "EXPECTED_MAX_SHOWN", "estimand_text", "expected_max_table",
           "format_expected_max"]

BUDGET_WORDS = {"flop_epochs": "FLOP-epochs (FLOPs per image times epochs trained, summed over the "
                               "family's trials, stopped and failed ones included)",
                "seconds": "device seconds (the wall time of the family's trials, summed)",
                "trials": "trials (a count; families' trials may differ a lot in cost)"}

EXPECTED_MAX_SHOWN = (1, 2, 3, 5, 10, 20)
"""The numbers of trials shown in the report's table (the CSV and the plot have every n)."""

EXPECTED_MAX_TEXT = (
    "Expected best validation accuracy of n trials drawn from each family's finished trials "
    "(Dodge et al. 2019, \"Show Your Work\": the expected maximum of n draws with replacement, "
    "± its standard deviation). A family's best accuracy in the family table is the maximum of "
    "however many trials it got; here every family is read at the same n. Beyond a family's own "
    "count of trials the curve only repeats its best.")


def _balance_text(config: dict[str, Any]) -> str:
    """How the search shared its budget among the families (the study's ``balance_families``)."""
    by = config.get("balance_families") or False
    by = "trials" if by is True else by
    if by not in BUDGET_WORDS:
        return ("The search did not balance the families (balance_families: false): each got the "
                "trials its sampler drew.")
    return (f"The search gave each family an equal share of its budget, counted in "
            f"{BUDGET_WORDS[by]} (balance_families: {by}).")


def estimand_text(trials: pd.DataFrame, info: RunInfo, options: Any = None) -> str:
    """The estimand, the run's budget B per family, and what in the report estimates it."""
    config = info["config"]
    final = fully_trained(trials)
    epochs = config.get("train", {}).get("epochs", "?")
    per_family = ", ".join(f"{f} {int((final['family'] == f).sum())}" for f in family_order(trials))
    lines = [
        "For each PDE family: the test accuracy of the network that \"search this space with "
        f"budget B, then select on validation\" gives, on {config.get('data', {}).get('name', '?')} "
        f"with {epochs} epochs per network. Here B is this run: {len(trials)} trials, finished at "
        f"the full budget per family: {per_family or 'none'}. {_balance_text(config)}",
        "",
        "The family table and the expected-best curves read validation accuracies of the "
        "search itself: the maximum of a family's trials is biased upward, more for a family with "
        "more trials, and the validation split also chose them. They describe the search, they do "
        "not estimate the quantity above.",
    ]
    if options is None:
        lines += ["", "`pdenas compare RUN --verdict` estimates it: it retrains each family's "
                      "selected candidates on paired seeds and measures them once on the test split."]
    else:
        lines += ["", "The verdict below estimates it: B is made equal across families in "
                      f"{BUDGET_WORDS[options.budget]}: the smallest budget any family spent; each "
                      f"family's {options.candidates} best candidate(s) within it are retrained at "
                      "the full budget on paired seeds (one seed fixes initialisation, data order and "
                      "augmentation for every family), the final weights kept and the test split "
                      "touched once per retrained network. The family's network is the candidate its "
                      "search ranked best on validation; with several candidates the bootstrap also "
                      "redraws the search among them (k draws with replacement, the best on "
                      "validation kept), so the search's own luck is part of the interval. With one "
                      "candidate the verdict is about the networks this search selected."]
    return "\n".join(lines)


def expected_max_table(trials: pd.DataFrame, n_max: int | None = None) -> pd.DataFrame:
    """Each family's expected best validation accuracy of n trials, n = 1..n_max.

    Args:
        trials: ``load_trials`` of a run.
        n_max: The largest n (default: the most finished trials of any family, at least 20).

    Returns:
        Columns ``family, n, trials`` (the family's finished trials), ``expected``, ``std``.
    """
    done = fully_trained(trials)
    done = done[done["val_accuracy"].notna()] if len(done) else done
    families = family_order(done)
    counts = {f: int((done["family"] == f).sum()) for f in families}
    n_max = n_max or max([20, *counts.values()])
    frames = []
    for family in families:
        curve = expected_max_curve(done.loc[done["family"] == family, "val_accuracy"].to_numpy(float), n_max)
        frames.append(pd.DataFrame({"family": family, "n": curve[:, 0].astype(int), "trials": counts[family],
                                    "expected": curve[:, 1], "std": curve[:, 2]}))
    if not frames:
        return pd.DataFrame(columns=["family", "n", "trials", "expected", "std"])
    return pd.concat(frames, ignore_index=True)


def format_expected_max(table: pd.DataFrame) -> pd.DataFrame:
    """One row per family, one column per n in ``EXPECTED_MAX_SHOWN``: ``mean ± std`` in percent."""
    rows = []
    for family, mine in table.groupby("family", sort=False):
        row: dict[str, Any] = {"family": family, "finished": int(mine["trials"].iloc[0])}
        for n in EXPECTED_MAX_SHOWN:
            hit = mine[mine["n"] == n]
            row[f"n={n}"] = ("-" if hit.empty else
                             f"{100 * hit['expected'].iloc[0]:.1f} ± {100 * np.nan_to_num(hit['std'].iloc[0]):.1f}%")
        rows.append(row)
    return pd.DataFrame(rows, columns=["family", "finished", *(f"n={n}" for n in EXPECTED_MAX_SHOWN)])
