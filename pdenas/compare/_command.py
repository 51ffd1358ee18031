"""The ``pdenas compare RUN`` command: prints the family tables and writes CSV, PNG and
``report.md``, with the retraining comparison when asked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdenas.compare._families import NOT_FINAL, family_table, format_family_table
from pdenas.compare._importance import family_importances, format_importances
from pdenas.compare._report import cost_text, markdown_table, write_plots, write_report
from pdenas.compare._retrain import format_retrain, retrain_summary, retrain_top
from pdenas.results import export_trials, load_run, load_trials

__all__ = ["run_compare"]


def run_compare(args: argparse.Namespace) -> int:
    """The ``compare`` command: prints the family tables and writes CSV, PNG and ``report.md``.

    Raises:
        ValueError: Not a run folder, a run without trials, or a bad ``--retrain-top``/``--seeds``.
    """
    from pdenas.study import resolve_device

    run_dir = Path(args.run)
    info = load_run(run_dir)
    top_k, seeds = int(getattr(args, "retrain_top", 0) or 0), int(getattr(args, "seeds", 3))
    if top_k < 0:
        raise ValueError(f"--retrain-top: must be >= 0, got {top_k}")
    if seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {seeds}")
    device = resolve_device(getattr(args, "device", None) or "auto") if top_k else None
    trials = load_trials(run_dir)
    if trials.empty:
        raise ValueError(f"{run_dir}: the study {info['study_name']!r} has no trials yet")
    data = None
    if top_k:
        if not trials["comparable"].any():
            raise ValueError(f"--retrain-top: {run_dir} has no finished trials to retrain yet")
        from pdenas.data import load_data
        from pdenas.study import StudyConfig

        data = load_data(StudyConfig.from_dict(info["config"]).data, device=device)  # fail early
    out = Path(args.out) if getattr(args, "out", None) else run_dir / "compare"
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
    print(f"study {info['study_name']}: {len(trials)} trials ({running} running or queued), {finished} "
          f"finished at the full budget (objectives: {', '.join(info.objectives)})")
    print(format_family_table(table).to_string(index=False))
    print(budget_line)
    print()
    print(importance_line)
    print(format_importances(importances).to_string(index=False))
    table.to_csv(out / "families.csv", index=False)
    importances.to_csv(out / "importance.csv", index=False)
    export_trials(trials, out / "trials.csv")
    export_trials(trials, out / "trials.parquet")
    sections = [("Families", markdown_table(format_family_table(table)) + "\n\n" + budget_line),
                ("Importance of h, depth and width", importance_line + "\n\n"
                 + markdown_table(format_importances(importances)))]
    figures = write_plots(trials, info, run_dir, out)

    if top_k:
        from pdenas import plots

        runs = retrain_top(run_dir, info, trials, top_k, seeds, device,
                           log=lambda line: print(line, file=sys.stderr, flush=True), data=data)
        per_family, per_trial = retrain_summary(runs), retrain_summary(runs, ("family", "trial"))
        runs.to_csv(out / "retrain_runs.csv", index=False)
        per_family.to_csv(out / "retrain.csv", index=False)
        per_trial.to_csv(out / "retrain_architectures.csv", index=False)
        headline = (f"Each family's top {top_k} architecture(s) retrained with {seeds} seed(s) at the "
                    f"full budget; best-validation weights, mean ± sample std over all runs.")
        print()
        print(headline)
        print(format_retrain(per_family).to_string(index=False))
        sections.append(("Retrained at the full budget", headline + "\n\n"
                         + markdown_table(format_retrain(per_family)) + "\n\nPer architecture:\n\n"
                         + markdown_table(format_retrain(per_trial))))
        figures["Retrained accuracy per family"] = plots.plot_retrain(runs, out / "retrain.png")
    report = write_report(out, info, sections, figures)
    print(f"\nwrote {report} with {len(figures)} plots, and CSV tables in {out}")
    return 0
