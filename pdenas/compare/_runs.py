"""``compare_runs``, behind ``pdenas compare RUN RUN ...``: several runs side by side (search
spaces, samplers or backends against each other): their Pareto fronts on one plot, hypervolume
against wall time and against trials, the best accuracy per family per run, and a summary. Runs
on different data (another data set, subset, split or input scaling) are compared all the same,
with one warning line and a note in the report: their accuracies are on different images."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdenas.compare._command import Comparison, _silent
from pdenas.compare._report import cost_text, markdown_table, pct
from pdenas.errors import InputError
from pdenas.results import (PAPER_ORDER, export_trials, fully_trained, hypervolume_2d, load_run,
                            load_trials)

__all__ = ["compare_runs", "data_differences", "hypervolume_curve", "run_labels"]

log = logging.getLogger(__name__)

_LOCATION_KEYS = ("root", "download")
"""Data settings that say where the files are, not which images a run trained and validated on."""


def run_labels(paths: Sequence[Path], names: Sequence[str]) -> list[str]:
    """One label per run: its study name, or the folder name (then the index) when names repeat."""
    labels = list(names)
    if len(set(labels)) < len(labels):
        labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}:{label}" for i, label in enumerate(labels)]
    return labels


def data_differences(configs: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """Each run's data as text when the runs' data differ, else None.

    Args:
        configs: The runs' study configurations (``run.json``'s ``config``).

    Returns:
        One text per run: the data set's name and the settings in which the runs differ (``digits``
        against ``fashion_mnist (train_limit 15000)``), or None when every run has the same data.
    """
    data = [{k: v for k, v in (c.get("data") or {}).items() if k not in _LOCATION_KEYS}
            for c in configs]
    if all(d == data[0] for d in data[1:]):
        return None
    keys = sorted({k for d in data for k in d if k != "name"
                   and len({repr(e.get(k)) for e in data}) > 1})
    texts = []
    for d in data:
        settings = ", ".join(f"{k} {d.get(k)}" for k in keys)
        texts.append(f"{d.get('name', '?')}" + (f" ({settings})" if settings else ""))
    return texts


def _points(done: pd.DataFrame, cost: str) -> np.ndarray:
    """(n, 2) minimised points: (-accuracy, log10 cost)."""
    return np.column_stack([-done["val_accuracy"].to_numpy(float),
                            np.log10(done[cost].to_numpy(float))])


def _usable(trials: pd.DataFrame, cost: str) -> pd.DataFrame:
    done = fully_trained(trials)
    return done[done["val_accuracy"].notna() & done[cost].notna() & (done[cost] > 0)]


def hypervolume_curve(trials: pd.DataFrame, cost: str, reference: tuple[float, float]
                      ) -> pd.DataFrame:
    """The hypervolume of a run's fully trained trials as its trials finish.

    Args:
        trials: ``load_trials`` of the run.
        cost: The cost column (accuracy is maximised, log10 cost minimised).
        reference: The reference point in (-accuracy, log10 cost).

    Returns:
        One row per finished trial in the order they finished: ``trials`` (how many had
        finished), ``number``, ``wall_seconds`` (since the run's first trial started, from the
        records' ``started_at`` / ``finished_at``), ``hypervolume``.
    """
    finished = trials[trials["datetime_complete"].notna()].sort_values(
        ["datetime_complete", "number"])
    if finished.empty:
        return pd.DataFrame(columns=["trials", "number", "wall_seconds", "hypervolume"])
    start = trials["datetime_start"].dropna().min()
    usable = set(_usable(finished, cost)["number"])
    rows, kept = [], []
    for k, (_, row) in enumerate(finished.iterrows(), start=1):
        if row["number"] in usable:
            kept.append((-float(row["val_accuracy"]), float(np.log10(row[cost]))))
        hv = hypervolume_2d(np.array(kept), reference) if kept else 0.0
        rows.append({"trials": k, "number": int(row["number"]),
                     "wall_seconds": float((row["datetime_complete"] - start).total_seconds()),
                     "hypervolume": hv})
    return pd.DataFrame(rows)


def compare_runs(run_dirs: Sequence[str | Path], *, out: str | Path | None = None,
                 echo: Callable[[str], None] | None = print) -> Comparison:
    """Several runs side by side: tables, plots and ``report.md``.

    The cost axis is the runs' shared cost objective (FLOPs when they differ or have none). The
    hypervolume is of (accuracy, log10 cost) over each run's fully trained trials, against one
    reference point for all runs (the worst accuracy and cost of any run, 10 % of the range
    beyond), so the curves can be compared.

    Args:
        run_dirs: Two or more run folders.
        out: The folder for the report, plots and tables (default ``FIRST_RUN/compare_runs``).
        echo: Where the tables are printed (None: nowhere).

    Returns:
        The report, the tables ``runs`` (one row per run), ``families`` (best accuracy per family
        per run) and ``hypervolume`` (the curves), and the plots.

    Raises:
        ValueError: Fewer than two runs, the same run twice, or a folder that is not a run.
    """
    from pdenas import plots

    say = echo or _silent
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise InputError("compare: several runs need at least two run folders")
    if len({p.resolve() for p in paths}) < len(paths):
        raise InputError("compare: the same run folder is named twice")
    infos = [load_run(p) for p in paths]
    frames = [load_trials(p) for p in paths]
    labels = run_labels(paths, [str(i["study_name"]) for i in infos])
    data_texts = data_differences([i["config"] for i in infos])
    different_data = None
    if data_texts is not None:
        different_data = ("the runs are on different data (" + "; ".join(
            f"{label}: {text}" for label, text in zip(labels, data_texts)) + "): their accuracies "
            "are measured on different images, and so are their fronts and hypervolumes")
        if echo is not None:
            sys.stderr.write(f"pdenas compare: warning: {different_data}\n")
        else:
            log.warning("pdenas compare: %s", different_data)
    costs = {i.cost_objective for i in infos}
    cost = costs.pop() if len(costs) == 1 else "flops"

    usable = [_usable(f, cost) if len(f) else f for f in frames]
    every = pd.concat([u for u in usable if len(u)]) if any(len(u) for u in usable) else None
    reference = (0.0, 0.0)
    if every is not None:
        points = _points(every, cost)
        worst, best = points.max(axis=0), points.min(axis=0)
        margin = np.maximum(0.1 * (worst - best), (0.01, 0.1))
        reference = (float(worst[0] + margin[0]), float(worst[1] + margin[1]))

    curves, summary, best_rows = {}, [], []
    data_column = data_texts or [str((i["config"].get("data") or {}).get("name")) for i in infos]
    for label, path, info, trials, done, data in zip(labels, paths, infos, frames, usable,
                                                     data_column):
        curve = hypervolume_curve(trials, cost, reference) if len(trials) else pd.DataFrame(
            columns=["trials", "number", "wall_seconds", "hypervolume"])
        curves[label] = curve
        config = info["config"]
        summary.append({
            "run": label, "folder": str(path),
            "data": data, "backend": info.get("backend"),
            "space": config.get("space"), "sampler": config.get("sampler"),
            "trials": len(trials), "finished": len(done),
            "best_accuracy": float(done["val_accuracy"].max()) if len(done) else np.nan,
            "front_points": int((plots.front_of(done, cost)).shape[0]) if len(done) else 0,
            "hypervolume": float(curve["hypervolume"].iloc[-1]) if len(curve) else 0.0,
            "wall_seconds": float(curve["wall_seconds"].iloc[-1]) if len(curve) else 0.0,
        })
        for family, rows in done.groupby("family") if len(done) else []:
            best_rows.append({"family": family, "run": label,
                              "best_accuracy": float(rows["val_accuracy"].max())})
    runs_table = pd.DataFrame(summary)
    families = (pd.DataFrame(best_rows).pivot(index="family", columns="run", values="best_accuracy")
                if best_rows else pd.DataFrame(columns=labels))
    order = [f for f in PAPER_ORDER if f in families.index] + sorted(
        f for f in families.index if f not in PAPER_ORDER)
    families = families.reindex(index=order, columns=labels).reset_index()
    hv = pd.concat([c.assign(run=label) for label, c in curves.items()], ignore_index=True)

    out = Path(out) if out else paths[0] / "compare_runs"
    out.mkdir(parents=True, exist_ok=True)
    export_trials(runs_table, out / "runs.csv")
    export_trials(families, out / "families.csv")
    export_trials(hv, out / "hypervolume.csv")
    figures = {
        "Pareto fronts": plots.plot_fronts(dict(zip(labels, usable)), cost, out / "fronts.png"),
        "Hypervolume against wall time and trials": plots.plot_hypervolume(
            curves, out / "hypervolume.png"),
    }

    shown = runs_table.assign(
        best_accuracy=runs_table["best_accuracy"].map(pct),
        hypervolume=runs_table["hypervolume"].map(lambda v: f"{v:.4f}"),
        wall_seconds=runs_table["wall_seconds"].map(lambda v: f"{v:.0f}")).drop(columns="folder")
    shown_families = families.copy()
    for label in labels:
        shown_families[label] = families[label].map(pct)
    hv_line = (f"Hypervolume of (validation accuracy, log10 {cost}) over each run's fully trained "
               f"trials; one reference point for all runs: accuracy {pct(-reference[0])}, "
               f"{cost} {cost_text(cost, 10 ** reference[1])}"
               + (" (shared although the runs' data differ)" if different_data else "")
               + ". Wall time from the run's first trial start to each trial's finish (records' "
               "started_at / finished_at).")
    say(f"{len(paths)} runs, cost axis {cost}:")
    say(shown.to_string(index=False))
    say("")
    say("Best validation accuracy per family (fully trained trials):")
    say(shown_families.to_string(index=False))
    say(hv_line)
    lines = ["# pdenas compare: " + " vs ".join(labels), "",
             "## Runs", ""]
    if different_data:
        lines += [f"**Different data:** {different_data}.", ""]
    lines += [markdown_table(shown), "", hv_line, "",
              "## Best accuracy per family", "", markdown_table(shown_families), "", "## Plots", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    say(f"\nwrote {report} with {len(figures)} plots, and CSV tables in {out}")
    return Comparison(report=report, figures=figures,
                      tables={"runs": runs_table, "families": families, "hypervolume": hv})
