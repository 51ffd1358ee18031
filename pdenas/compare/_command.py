"""``compare_run``, behind ``pdenas compare RUN``: prints the family tables and writes CSV, PNG
and ``report.md``, with the retraining comparison when asked."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pdenas.compare._families import NOT_FINAL, family_table, format_family_table
from pdenas.compare._importance import family_importances, format_importances
from pdenas.compare._report import cost_text, markdown_table, write_plots, write_report
from pdenas.compare._retrain import format_retrain, retrain_summary
from pdenas.compare._retrain import retrain_top as retrain_families
from pdenas.errors import InputError
from pdenas.results import export_trials, load_run, load_trials

__all__ = ["Comparison", "compare_run"]


@dataclass(frozen=True)
class Comparison:
    """What a comparison wrote.

    Attributes:
        report: The Markdown report (``report.md``), beside the plots and CSV tables.
        tables: The tables by name (also written as ``<name>.csv``).
        figures: The plots by title (PNG files).
    """

    report: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The folder holding the report, the plots and the tables."""
        return self.report.parent


def _silent(line: str) -> None:
    """Prints nothing (``echo=None``)."""


def compare_run(run_dir: str | Path, *, out: str | Path | None = None, retrain_top: int = 0,
                seeds: int = 3, device: str = "auto",
                echo: Callable[[str], None] | None = print) -> Comparison:
    """The PDE families of one run side by side: tables, plots and ``report.md``.

    Args:
        run_dir: The run folder.
        out: The folder for the report, plots and tables (default ``RUN/compare``).
        retrain_top: Retrain each family's top K architectures at the full budget (0: none).
        seeds: Seeds per retrained architecture.
        device: Where to retrain: "auto", "cpu" or "cuda".
        echo: Where the tables are printed (None: nowhere).

    Raises:
        ValueError: Not a run folder, a run without trials, or a bad ``retrain_top``/``seeds``.
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
    dev = resolve_device(device or "auto") if top_k else None
    trials = load_trials(run_dir)
    if trials.empty:
        raise InputError(f"{run_dir}: the study {info['study_name']!r} has no trials yet")
    data = None
    if top_k:
        if not trials["comparable"].any():
            raise InputError(f"--retrain-top: {run_dir} has no finished trials to retrain yet")
        from pdenas.data import load_data
        from pdenas.study import StudyConfig

        data = load_data(StudyConfig.from_dict(info["config"]).data, device=dev)  # fail early
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
    say(f"study {info['study_name']}: {len(trials)} trials ({running} running or queued), {finished} "
          f"finished at the full budget (objectives: {', '.join(info.objectives)})")
    say(format_family_table(table).to_string(index=False))
    say(budget_line)
    say("")
    say(importance_line)
    say(format_importances(importances).to_string(index=False))
    export_trials(table, out / "families.csv")
    export_trials(importances, out / "importance.csv")
    export_trials(trials, out / "trials.csv")
    export_trials(trials, out / "trials.parquet")
    sections = [("Families", markdown_table(format_family_table(table)) + "\n\n" + budget_line),
                ("Importance of h, depth and width", importance_line + "\n\n"
                 + markdown_table(format_importances(importances)))]
    figures = write_plots(trials, info, run_dir, out)
    tables = {"families": table, "importance": importances, "trials": trials}

    if top_k:
        from pdenas import plots

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
    return Comparison(report=report, tables=tables, figures=figures)
