"""``compare_run``, behind ``pdenas compare RUN``: prints the family tables and writes CSV, PNG
and ``report.md``, with the retraining comparison when asked."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pdenas import plots
from pdenas.compare._estimand import (EXPECTED_MAX_TEXT, estimand_text, expected_max_table,
                                      format_expected_max)
from pdenas.compare._families import NOT_FINAL, family_table, format_family_table
from pdenas.compare._importance import family_importances, format_importances
from pdenas.compare._report import cost_text, markdown_table, write_plots, write_report
from pdenas.compare._retrain import format_retrain, retrain_summary
from pdenas.compare._retrain import retrain_top as retrain_families
from pdenas.compare._verdict import Verdict, VerdictOptions
from pdenas.compare._verdict_report import give_verdict, select_for_verdict
from pdenas.errors import InputError
from pdenas.results import export_trials, load_run, load_trials, parquet_available, split_skipped

__all__ = ["Comparison", "compare_run"]


@dataclass(frozen=True)
class Comparison:
    """What a comparison wrote.

    Attributes:
        report: The Markdown report (``report.md``), beside the plots and CSV tables.
        tables: The tables by name (also written as ``<name>.csv``).
        figures: The plots by title (PNG files).
        verdict: With ``verdict=True``: ``pdenas.compare.Verdict`` (its ``to_dict()`` is
            ``verdict.json``); else None.
    """

    report: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    verdict: Verdict | None = None

    @property
    def folder(self) -> Path:
        """The folder holding the report, the plots and the tables."""
        return self.report.parent


def _silent(line: str) -> None:
    """Prints nothing (``echo=None``)."""


def compare_run(run_dir: str | Path, *, out: str | Path | None = None, retrain_top: int = 0,
                seeds: int = 3, device: str = "auto",
                echo: Callable[[str], None] | None = print, verdict: bool = False,
                candidates: int = 1, max_seeds: int | None = None, max_seconds: float | None = None,
                budget: str = "flop_epochs", alpha: float = 0.05, margin: float = 0.005,
                cost_levels: Sequence[float] | str = ()) -> Comparison:
    """The PDE families of one run side by side: tables, plots and ``report.md``.

    Args:
        run_dir: The run folder.
        out: The folder for the report, plots and tables (default ``RUN/compare``).
        retrain_top: Retrain each family's top K architectures at the full budget (0: none).
        seeds: Seeds per retrained architecture.
        device: Where to retrain: "auto", "cpu" or "cuda".
        echo: Where the tables are printed (None: nowhere).
        verdict: Retrain each family's selected candidates on paired seeds and give the verdict
            (``pdenas.compare._verdict``): intervals, P(best), paired differences, one sentence,
            ``verdict.json``. ``seeds`` is then the seeds of its first look.
        candidates: Verdict: candidates per family (the best on the search's validation); with
            more than one, the bootstrap also redraws the search among them.
        max_seeds: Verdict: the budget in seeds (default: 8, or ``seeds`` when larger).
        max_seconds: Verdict: the budget in seconds of retraining (None: none).
        budget: Verdict: what makes the families' search budgets equal when their candidates
            are picked: ``flop_epochs``, ``seconds`` or ``trials``.
        alpha: Verdict: the family-wise error rate over all pairs and looks.
        margin: Verdict: differences within ± margin (a fraction) count as settled.
        cost_levels: Verdict: also give it at these costs (each family's candidates at most that
            costly; the run's cost objective), or ``auto`` (the finished trials' cost terciles).

    Raises:
        ValueError: Not a run folder, a run without trials, or a bad ``retrain_top``/``seeds``
            or verdict option.
    """
    from pdenas.study import resolve_device

    say = echo or _silent
    run_dir = Path(run_dir)
    info = load_run(run_dir)
    top_k = retrain_top
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"--retrain-top: must be >= 0, got {top_k!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds: must be >= 1, got {seeds!r}")
    options = VerdictOptions(candidates=candidates, min_seeds=seeds,
                             max_seeds=max(8, seeds) if max_seeds is None else max_seeds,
                             max_seconds=max_seconds, budget=budget, alpha=alpha,
                             margin=margin, cost_levels=cost_levels if isinstance(cost_levels, str)
                             else tuple(cost_levels)) if verdict else None
    dev = resolve_device(device or "auto") if top_k or verdict else None
    trials, draws = split_skipped(load_trials(run_dir))
    if trials.empty:
        raise InputError(f"{run_dir}: the study {info['study_name']!r} has no trials yet")
    data = None
    if top_k or verdict:
        if not trials["comparable"].any():
            flag = "--retrain-top" if top_k else "--verdict"
            raise InputError(f"{flag}: {run_dir} has no finished trials to retrain yet")
        from pdenas.data import load_data
        from pdenas.study import StudyConfig

        data = load_data(StudyConfig.from_stored(info["config"]).data, device=dev)  # fail early
    selection = select_for_verdict(run_dir, info, trials, options) if options else None
    out = Path(out) if out else run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)

    cost = info.cost_objective
    table = family_table(trials, cost)
    importances = family_importances(trials)
    budget = table.attrs["budget"]
    finished = int(table["finished"].sum())
    budget_line = (f"Equal cost budget: {cost} ≤ {cost_text(cost, budget)} (the median over the run's {finished} "
                   f"finished trials). Pareto front and hypervolume: accuracy against log10 {cost}; "
                   f"HV contribution = HV(all) − HV(without the family), as a share of HV(all); reference "
                   f"point: the worst accuracy and cost, 10 % of their range beyond.")
    importance_line = ("Importance for validation accuracy (fANOVA over each family's finished trials, "
                       "normalised to 1): h = step size, depth = time steps of all units, "
                       "width = mean unit width.")
    running = int(trials["status"].isin(NOT_FINAL).sum())
    say(f"study {info['study_name']}: {len(trials)} trials ({running} running or queued){draws}, "
        f"{finished} finished at the full budget (objectives: {', '.join(info.objectives)})")
    say(format_family_table(table).to_string(index=False))
    say(budget_line)
    say("")
    say(importance_line)
    say(format_importances(importances).to_string(index=False))
    export_trials(table, out / "families.csv")
    export_trials(importances, out / "importance.csv")
    export_trials(trials, out / "trials.csv")
    if parquet_available():  # an optional extra: trials.csv holds the same table
        export_trials(trials, out / "trials.parquet")
    sections = [("Estimand", estimand_text(trials, info, options))]
    if options is not None:
        the_verdict, verdict_sections, verdict_figures = give_verdict(
            run_dir, info, trials, options, selection, dev, data, out, say,
            log=lambda line: echo and sys.stderr.write(line + "\n"))
        sections += verdict_sections
    sections += [("Families", markdown_table(format_family_table(table)) + "\n\n" + budget_line),
                ("Importance of h, depth and width", importance_line + "\n\n"
                 + markdown_table(format_importances(importances)))]
    curves = expected_max_table(trials)
    export_trials(curves, out / "expected_max.csv")
    sections.append(("Expected best accuracy against the number of trials", EXPECTED_MAX_TEXT
                     + "\n\n" + markdown_table(format_expected_max(curves))))
    figures = write_plots(trials, info, run_dir, out)
    figures["Expected best accuracy against trials"] = plots.plot_expected_max(
        curves, out / "expected_max.png")
    tables = {"families": table, "importance": importances, "trials": trials, "expected_max": curves}
    if options is not None:
        figures = {**verdict_figures, **figures}
        tables.update(verdict_families=the_verdict.families, verdict_pairs=the_verdict.pairs,
                      verdict_runs=the_verdict.runs)

    if top_k:
        runs = retrain_families(run_dir, info, trials, top_k, seeds, dev,
                           log=lambda line: echo and sys.stderr.write(line + "\n"), data=data)
        per_family, per_trial = retrain_summary(runs), retrain_summary(runs, ("family", "trial"))
        export_trials(runs, out / "retrain_runs.csv")
        export_trials(per_family, out / "retrain.csv")
        export_trials(per_trial, out / "retrain_architectures.csv")
        headline = (f"Each family's top {top_k} architecture(s) retrained with {seeds} seed(s) at the "
                    f"full budget; best-validation weights, mean ± sample std over all runs.")
        say("")
        say(headline)
        say(format_retrain(per_family).to_string(index=False))
        sections.append(("Retrained at the full budget", headline + "\n\n"
                         + markdown_table(format_retrain(per_family)) + "\n\nPer architecture:\n\n"
                         + markdown_table(format_retrain(per_trial))))
        figures["Retrained accuracy per family"] = plots.plot_retrain(runs, out / "retrain.png")
        tables.update(retrain_runs=runs, retrain=per_family, retrain_architectures=per_trial)
    report = write_report(out, info, sections, figures)
    say(f"\nwrote {report} with {len(figures)} plots, and CSV tables in {out}")
    return Comparison(report=report, tables=tables, figures=figures,
                      verdict=the_verdict if options is not None else None)
