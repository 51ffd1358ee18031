"""The verdict of one run as ``pdenas compare --verdict`` prints and writes it: candidates picked
at an equal search budget, the sequential retraining, ``verdict.json`` and its tables, the
report's section and the plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from pdenas.compare._estimand import BUDGET_WORDS
from pdenas.compare._report import cost_text, markdown_table
from pdenas.compare._verdict import (STOP_TEXT, Candidate, Verdict, VerdictOptions,
                                     first_look_seeds, format_verdict_tables, look_schedule,
                                     pooled, run_verdict, select_candidates)
from pdenas.results import RunInfo, fully_trained

__all__ = ["VerdictSelection", "give_verdict", "select_for_verdict"]


def _budget_table(budgets: pd.DataFrame, options: VerdictOptions, cost: str) -> pd.DataFrame:
    return pd.DataFrame({"family": budgets["family"],
                         "spent by the search": budgets["spent"].map(lambda v: _amount(v, options.budget)),
                         "trials within B": budgets["trials_within"],
                         "finished within B": budgets["finished_within"],
                         "candidates": [c if n else f"{c} (none finished within B: its first)"
                                        for c, n in zip(budgets["candidates"], budgets["finished_within"])]})


def _stacked_text(runs: pd.DataFrame) -> str:
    """How many of the networks were trained as seeds of one stacked model."""
    if "stacked" not in runs or not (runs["stacked"] > 1).any():
        return ""
    together = int((runs["stacked"] > 1).sum())
    return (f"; {together} of them trained with the other seeds of their look as one stacked "
            "model: the training of separate runs, rounded in another order, which over a few "
            "epochs can move a network's test accuracy by a few images")


def _prediction_text(verdict: Verdict, options: VerdictOptions) -> str:
    """What the search's trial seconds predicted for the first look, and what it took."""
    if verdict.predicted is None or not verdict.looks:
        return ""
    first = verdict.looks[0]
    took = verdict.runs.loc[verdict.runs["seed"] < first, "seconds"].sum()
    text = (f" The candidates' search trials predicted {verdict.predicted * first:,.0f} s for the "
            f"first look ({first} seeds); it took {took:,.0f} s")
    if verdict.first_seeds < options.min_seeds:
        text += (f"; it was cut from --seeds {options.min_seeds} to {verdict.first_seeds}, as "
                 f"{options.min_seeds} were predicted to need "
                 f"{verdict.predicted * options.min_seeds:,.0f} s, more than --max-seconds")
    return text + "."


def _amount(value: float, budget: str) -> str:
    """A search budget in its unit."""
    if budget == "flop_epochs":
        return f"{cost_text('flops', value)} FLOP-epochs"
    return f"{value:,.0f} s" if budget == "seconds" else f"{value:.0f} trials"


class VerdictSelection(NamedTuple):
    """What the verdict retrains: the candidates, the families' budgets (``select_candidates``)
    and the candidates at each cost level."""

    candidates: list[Candidate]
    budgets: pd.DataFrame
    at_cost: list[tuple[float, list[Candidate]]]


def select_for_verdict(run_dir: Path, info: RunInfo, trials: pd.DataFrame,
                       options: VerdictOptions) -> VerdictSelection:
    """The verdict's candidates, chosen before anything is written or trained; a
    ``--max-seconds`` that their first look (2 seeds of every candidate, at their search trials'
    seconds) would not fit is refused here.

    Raises:
        InputError: As ``first_look_seeds``.
    """
    cost = info.cost_objective
    candidates, budgets = select_candidates(run_dir, trials, options.candidates, options.budget, cost)
    at_cost = [(level, select_candidates(run_dir, trials, options.candidates, options.budget, cost,
                                         max_cost=level)[0])
               for level in cost_levels(trials, options.cost_levels, cost)]
    first_look_seeds(pooled(candidates, [c for _, cands in at_cost for c in cands]), options)
    return VerdictSelection(candidates, budgets, at_cost)


def give_verdict(run_dir: Path, info: RunInfo, trials: pd.DataFrame, options: VerdictOptions,
                 selection: VerdictSelection, device: Any, data: Any, out: Path,
                 say: Callable[[str], None],
                 log: Callable[[str], Any] | None = None
                 ) -> tuple[Verdict, list[tuple[str, str]], dict[str, Path]]:
    """Runs the verdict on a run and writes it into ``out``.

    Returns:
        The verdict, the report's sections (title, Markdown) and its plots (title -> PNG).
    """
    from pdenas import plots

    cost = info.cost_objective
    candidates, budgets, at_cost = selection
    limit = float(budgets["budget"].iloc[0]) if len(budgets) else float("nan")
    verdict = run_verdict(candidates, data, device, options, cost=cost,
                          data_name=str(info["config"].get("data", {}).get("name", "")), log=log,
                          at_cost=at_cost)
    json_path = verdict.write(out)
    shown_families, shown_pairs = format_verdict_tables(verdict)
    budget_table = _budget_table(budgets, options, cost)
    looks = ", ".join(str(n) for n in verdict.looks)
    rule = (f"Sequential rule: looks at {looks} seed(s) of the planned "
            f"{', '.join(str(n) for n in look_schedule(verdict.first_seeds or options.min_seeds, options.max_seeds))} (budget: {options.max_seeds} seeds"
            f"{f', {options.max_seconds:,.0f} s' if options.max_seconds else ''}); alpha "
            f"{options.alpha:g} split over the planned looks (Bonferroni), Holm over the pairs "
            f"within a look; margin ± {100 * options.margin:g} points. It stopped because "
            f"{STOP_TEXT[verdict.stopped]}, after {verdict.seconds:,.0f} s of retraining "
            f"({len(verdict.runs)} networks{_stacked_text(verdict.runs)})."
            f"{_prediction_text(verdict, options)}")
    method = ("Intervals: a bootstrap over seeds and test images together (both resampled in each "
              "replicate, the same draw for every family, so differences are paired; the seed "
              "level stretched to Student-t width for few seeds, the seed-by-image noise counted "
              "once). P(best): the share of replicates in which the family has the highest mean. With several "
              "candidates per family each replicate also redraws the family's search among them "
              "(as many draws as candidates, with replacement, the best search validation kept); "
              "the mean is the expectation over that draw (`weight` in `verdict_runs.csv`). "
              "Pairs: a minus b; p from the bootstrap, Holm-adjusted; d_z = mean paired per-seed "
              "difference over its standard deviation.")
    budget_line = (f"Equal search budget B = {_amount(limit, options.budget)}, counted in "
                   f"{BUDGET_WORDS[options.budget]}: the smallest any family spent; each family's "
                   f"candidates are its best finished trials within B (trials taken in the order "
                   f"they were numbered).") if limit == limit else ""
    say("")
    say(f"Verdict: {verdict.sentence}")
    say(shown_families.to_string(index=False))
    say(shown_pairs.to_string(index=False))
    say(rule)
    cost_sections = []
    for view in verdict.at_cost:
        families, _ = format_verdict_tables(replace(verdict, families=view.families, pairs=view.pairs))
        say(f"At {cost} ≤ {cost_text(cost, view.level)}: {view.sentence}")
        say(families.to_string(index=False))
        cost_sections += [f"**{cost} ≤ {cost_text(cost, view.level)}:** {view.sentence}",
                          markdown_table(families)]
    say(f"wrote {json_path}")
    body = "\n\n".join([
        f"**{verdict.sentence}**",
        markdown_table(shown_families),
        markdown_table(shown_pairs),
        rule,
        budget_line + "\n\n" + markdown_table(budget_table),
        method,
        f"`{json_path.name}` holds the families, pairs and sentence; `verdict_runs.csv` every "
        "retrained network; `verdict_correct.npy` every retrained network's per-image results "
        "(candidate x seed x test image, candidates in the order of the runs).",
    ])
    figures = {
        "Verdict: intervals, P(best) and paired differences": plots.plot_verdict(
            verdict.families, verdict.pairs, verdict.level, out / "verdict.png"),
        "Retrained accuracy against cost": plots.plot_cost_intervals(
            verdict.runs, cost, out / "verdict_cost.png"),
    }
    sections = [("Verdict", body)]
    if cost_sections:
        sections.append(("The verdict at the user's cost", (
            "The same seeds, each family's candidates limited to the cost level (its best "
            "finished trials within B that cost at most that; `verdict_at_cost.csv`).\n\n")
            + "\n\n".join(cost_sections)))
    return verdict, sections, figures


def cost_levels(trials: pd.DataFrame, asked: Any, cost: str) -> list[float]:
    """The cost levels of the verdict: those asked for, or with ``auto`` the terciles of the
    finished trials' costs (3 significant digits); sorted, without duplicates."""
    if asked == "auto":
        done = fully_trained(trials)
        values = pd.to_numeric(done[cost], errors="coerce").dropna() if len(done) else pd.Series(dtype=float)
        asked = [float(f"{v:.3g}") for v in values.quantile([1 / 3, 2 / 3])] if len(values) else []
    return sorted(set(float(v) for v in asked))

