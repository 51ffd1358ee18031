"""``pdenas compare RUN``: the PDE families of a run side by side.

Per family: trials finished, pruned and failed (diverged counted apart), best and median
validation accuracy, the best accuracy within an equal cost budget (the run's median cost),
the family's share of the Pareto front and its hypervolume contribution; the importance of the
step size h, depth and width per family (fANOVA); plots; and, with ``--retrain-top K --seeds S``,
a fair comparison that retrains each family's top K architectures with S seeds at the full
budget and reports mean ± std. Everything is printed and written to the output folder as CSV,
PNG and one Markdown report.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdenas.plots import family_order
from pdenas.results import (
    RunInfo,
    export_trials,
    hypervolume_2d,
    load_histories,
    load_run,
    load_trials,
    pareto_ranks,
)

__all__ = [
    "IMPORTANCE_PARAMS",
    "MIN_IMPORTANCE_TRIALS",
    "family_importances",
    "family_table",
    "format_family_table",
    "format_importances",
    "run_compare",
]

MIN_IMPORTANCE_TRIALS = 5
"""Fewest finished trials of a family for which importances are computed."""

IMPORTANCE_PARAMS = {"h": "step_size", "depth": "total_depth", "width": "mean_width"}
"""Importance name -> trials column: the step size, time steps of all units, mean unit width."""

_LOG_PARAMS = ("step_size", "mean_width")
_PRUNED = ("pruned", "stopped", "infeasible")
_NOT_FINAL = ("running", "queued", "interrupted", "waiting")


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
        Columns ``family, trials, finished, pruned, diverged, failed, best_accuracy,
        median_accuracy, best_within_budget, front_points, front_share, hv_contribution,
        hv_share``. ``finished`` counts trials completed at the full budget; ``pruned`` also counts
        early-stopped and infeasible (over a cost limit, not trained) ones; ``failed`` crashes and
        out-of-memory. ``attrs`` holds ``cost``, ``budget`` (the median cost of the finished trials),
        ``front_size`` and ``hypervolume`` (of all finished trials, in accuracy × decades of cost).
    """
    final = trials[~trials["status"].isin(_NOT_FINAL)] if len(trials) else trials
    done = final[final["comparable"].astype(bool)] if len(final) else final
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
            "pruned": int((mine["status"].isin(_PRUNED) | (mine["status"].eq("completed") & ~full)).sum()),
            "diverged": int(mine["status"].eq("diverged").sum()),
            "failed": int((~mine["status"].isin((*_PRUNED, "completed", "diverged"))).sum()),
            "best_accuracy": float(scores.max()) if len(scores) else math.nan,
            "median_accuracy": float(scores.median()) if len(scores) else math.nan,
            "best_within_budget": float(within.max()) if len(within) else math.nan,
            "front_points": int(on_front[ok].sum()),
            "front_share": float(on_front[ok].sum() / on_front.sum()) if on_front.any() else math.nan,
            "hv_contribution": float(contribution),
            "hv_share": float(contribution / total_hv) if total_hv > 0 else math.nan,
        })
    table = pd.DataFrame(rows, columns=["family", "trials", "finished", "pruned", "diverged", "failed",
                                        "best_accuracy", "median_accuracy", "best_within_budget",
                                        "front_points", "front_share", "hv_contribution", "hv_share"])
    table.attrs.update(cost=cost, budget=budget, front_size=int(on_front.sum()), hypervolume=total_hv)
    return table


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _cost_text(cost: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    units = {"flops": (1e6, "M"), "params": (1e3, "k"), "memory_bytes": (2**20, " MiB")}
    scale, unit = units.get(cost, (1.0, " ms" if cost.startswith("latency") else ""))
    return f"{value / scale:.3g}{unit}"


def format_family_table(table: pd.DataFrame) -> pd.DataFrame:
    """The family table as display strings (for the terminal and the Markdown report)."""
    front = table.attrs.get("front_size", 0)
    return pd.DataFrame({
        "family": table["family"],
        "trials": table["trials"],
        "finished": table["finished"],
        "pruned": table["pruned"],
        "diverged": table["diverged"],
        "failed": table["failed"],
        "best acc": table["best_accuracy"].map(_pct),
        "median acc": table["median_accuracy"].map(_pct),
        "best acc ≤ budget": table["best_within_budget"].map(_pct),
        "Pareto front": [f"{n}/{front} ({_pct(s)})" if front else "-"
                         for n, s in zip(table["front_points"], table["front_share"])],
        "HV contribution": table["hv_share"].map(_pct),
    })


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
    done = trials[trials["comparable"].astype(bool)] if len(trials) else trials
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


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame of display strings as a GitHub-flavoured Markdown table."""
    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _plots(trials: pd.DataFrame, info: RunInfo, run_dir: Path, out: Path) -> dict[str, Path]:
    from pdenas import plots

    cost = info.cost_objective
    done = trials[trials["comparable"].astype(bool)] if len(trials) else trials
    top = done.sort_values("val_accuracy", ascending=False).head(5)["number"].tolist()
    return {
        "Accuracy against cost": plots.plot_pareto(trials, cost, out / "pareto.png"),
        "Accuracy against step size": plots.plot_accuracy_vs(
            trials, "step_size", "step size h", out / "accuracy_vs_step_size.png", log=True),
        "Accuracy against depth": plots.plot_accuracy_vs(
            trials, "total_depth", "depth (time steps of all units)", out / "accuracy_vs_depth.png"),
        "Training curves": plots.plot_training_curves(
            trials, load_histories(run_dir, top), out / "training_curves.png"),
        "Optimisation history": plots.plot_optimisation_history(trials, out / "history.png"),
    }


RETRAIN_SEED = 10_000
"""Seed offset of retraining runs: seed ``s`` initialises and shuffles with ``RETRAIN_SEED + s``."""


def _top_trials(trials: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Each family's ``top_k`` most accurate finished trials, identical architectures once."""
    done = trials[trials["comparable"].astype(bool)].sort_values(
        ["val_accuracy", "number"], ascending=[False, True])
    key = done[["family", "step_size", "depths", "widths", "activation", "norm"]].astype(str).agg("|".join, axis=1)
    done = done[~key.duplicated()]
    return done.groupby("family", sort=False).head(top_k)


def retrain_top(run_dir: str | Path, info: RunInfo, trials: pd.DataFrame, top_k: int, seeds: int,
                device: Any, log: Any = None, data: Any = None) -> pd.DataFrame:
    """Retrains each family's top ``top_k`` architectures ``seeds`` times at the full budget.

    Each run trains the trial's stored architecture with its stored training settings (all
    epochs) on the study's data split, keeps the best-validation weights and measures them on
    the test split.

    Args:
        run_dir: The run folder.
        info: Its ``run.json``.
        trials: ``load_trials`` of the run.
        top_k: Architectures per family.
        seeds: Runs per architecture.
        device: Where to train.
        log: Called with one line per finished run (progress); None for silence.
        data: The study's data splits on ``device``; None loads them from the run's config.

    Returns:
        One row per run: ``family, trial, seed, status, val_accuracy, test_accuracy,
        search_val_accuracy, epochs, seconds``.
    """
    import torch

    from pdenas.architecture import Architecture
    from pdenas.data import load_data
    from pdenas.network import build_model
    from pdenas.results import load_record
    from pdenas.study import StudyConfig
    from pdenas.train import TrainConfig, TrainingFailed, evaluate, fit

    if data is None:
        data = load_data(StudyConfig.from_dict(info["config"]).data, device=device)
    rows = []
    for _, trial in _top_trials(trials, top_k).iterrows():
        record = load_record(run_dir, int(trial["number"]))
        arch = Architecture.from_dict(record["architecture"])
        train = TrainConfig.from_dict(record["train"])
        for s in range(seeds):
            row: dict[str, Any] = {"family": arch.family, "trial": int(trial["number"]), "seed": s,
                                   "status": "completed", "val_accuracy": math.nan,
                                   "test_accuracy": math.nan,
                                   "search_val_accuracy": float(trial["val_accuracy"]),
                                   "epochs": 0, "seconds": math.nan}
            torch.manual_seed(RETRAIN_SEED + s)
            model = build_model(arch).to(device)
            try:
                result = fit(model, data, train, device, seed=RETRAIN_SEED + s)
                row.update(val_accuracy=float(result.best_val_accuracy), epochs=result.epochs_trained,
                           seconds=float(result.seconds))
                if len(data.test):
                    row["test_accuracy"] = float(evaluate(model, data.test, device)[1])
            except TrainingFailed as failure:
                row.update(status=type(failure).__name__.lower(), epochs=len(failure.history))
            rows.append(row)
            if log is not None:
                log(f"retrain #{row['trial']} {row['family']} seed {s + 1}/{seeds}: {row['status']}, "
                    f"val {_pct(row['val_accuracy'])}, test {_pct(row['test_accuracy'])}")
    return pd.DataFrame(rows, columns=["family", "trial", "seed", "status", "val_accuracy", "test_accuracy",
                                       "search_val_accuracy", "epochs", "seconds"])


def retrain_summary(runs: pd.DataFrame, by: tuple[str, ...] = ("family",)) -> pd.DataFrame:
    """Mean and sample standard deviation of retrained accuracy per family (or per ``by``).

    Returns:
        Columns ``*by, runs, failed, val_mean, val_std, test_mean, test_std`` (std NaN for 1 run).
    """
    order = {family: i for i, family in enumerate(family_order(runs))}
    runs = runs.sort_values(list(by), key=lambda c: c.map(order) if c.name == "family" else c, kind="stable")
    groups = runs.groupby(list(by), sort=False)
    table = groups.agg(runs=("seed", "size"),
                       failed=("status", lambda s: int((s != "completed").sum())),
                       val_mean=("val_accuracy", "mean"), val_std=("val_accuracy", "std"),
                       test_mean=("test_accuracy", "mean"), test_std=("test_accuracy", "std"))
    return table.reset_index()


def format_retrain(summary: pd.DataFrame) -> pd.DataFrame:
    """The retraining summary as display strings, accuracies as ``mean ± std`` in percent."""
    def pm(mean: float, std: float) -> str:
        if math.isnan(mean):
            return "-"
        return f"{100 * mean:.2f} ± {'n/a' if math.isnan(std) else f'{100 * std:.2f}'}%"

    keys = [c for c in summary.columns if c in ("family", "trial")]
    shown = summary[keys].copy()
    shown["runs"] = summary["runs"]
    shown["failed"] = summary["failed"]
    shown["val acc"] = [pm(m, s) for m, s in zip(summary["val_mean"], summary["val_std"])]
    shown["test acc"] = [pm(m, s) for m, s in zip(summary["test_mean"], summary["test_std"])]
    return shown


def write_report(out: Path, info: RunInfo, sections: list[tuple[str, str]],
                 figures: dict[str, Path]) -> Path:
    """Writes ``report.md``: the run, each (title, Markdown) section, then every figure."""
    config = info["config"]
    lines = [f"# pdenas compare: {info['study_name']}", "",
             f"{config.get('description') or ''}".strip(), "",
             f"Objectives: {', '.join(info.objectives)}; backend {info.get('backend', 'optuna')}; "
             f"data {config.get('data', {}).get('name', '?')}; "
             f"{config.get('train', {}).get('epochs', '?')} epochs per trial.", ""]
    for title, body in sections:
        lines += [f"## {title}", "", body, ""]
    lines += ["## Plots", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


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
    budget_line = (f"Equal cost budget: {cost} ≤ {_cost_text(cost, budget)} (the median over the run's {finished} "
                   f"finished trials). Pareto front and hypervolume: accuracy against log10 {cost}; "
                   f"HV contribution = HV(all) − HV(without the family), as a share of HV(all); reference "
                   f"point: the worst accuracy and cost, 10 % of their range beyond.")
    importance_line = ("Importance for validation accuracy (fANOVA over each family's finished trials, "
                       "normalised to 1): h = step size, depth = time steps of all units, "
                       "width = mean unit width.")
    running = int(trials["status"].isin(_NOT_FINAL).sum())
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
    figures = _plots(trials, info, run_dir, out)

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
