"""Plots of a run as PNG files: accuracy against cost with the Pareto front, accuracy against the
step size and the depth per family, training curves of the top trials, the optimisation history,
and retrained accuracy per family.

Every function takes the trials DataFrame of ``pdenas.results.load_trials`` (or a table derived
from it), writes one PNG and returns its path. Figures are drawn with matplotlib's object API on
the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pdenas.results import PAPER_ORDER, family_order, fully_trained, pareto_ranks
from pdenas.runs import TrialStatus

__all__ = [
    "PAPER_ORDER",
    "family_colors",
    "family_order",
    "front_of",
    "plot_accuracy_vs",
    "plot_fronts",
    "plot_hypervolume",
    "plot_optimisation_history",
    "plot_pareto",
    "plot_retrain",
    "plot_training_curves",
]

COST_LABELS = {
    "flops": "FLOPs per image",
    "params": "parameters",
    "latency_ms": "latency, batch 1 (ms)",
    "latency_batch_ms": "latency, training batch (ms)",
    "memory_bytes": "training memory (bytes)",
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DPI = 110


def family_colors(families: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per family (tab10, in the order given), shared by every plot of a report."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {family: cmap(i % 10) for i, family in enumerate(families)}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish_cost_plot(figure: Figure, ax: Axes, label: str, path: str | Path) -> Path:
    """Accuracy against a log-scale cost: axis labels, grid, legend; saved to ``path``."""
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_pareto(trials: pd.DataFrame, cost: str, path: str | Path) -> Path:
    """Validation accuracy against a cost (log scale), coloured by family, with the Pareto front.

    Only trials completed at the full budget are drawn; the front is the non-dominated set over
    all families together.
    """
    done = fully_trained(trials).dropna(subset=["val_accuracy", cost])
    figure = _figure(7.5, 5.0)
    ax = figure.subplots()
    label = COST_LABELS.get(cost, cost)
    ax.set_title(f"Validation accuracy against {label}, with the Pareto front")
    if done.empty:
        _empty(ax, "no finished trials")
        return _save(figure, path)
    colors = family_colors(family_order(trials))
    for i, family in enumerate(colors):
        rows = done[done["family"] == family]
        if len(rows):
            ax.scatter(rows[cost], 100 * rows["val_accuracy"], color=colors[family], s=36,
                       marker=_MARKERS[i % len(_MARKERS)], label=f"{family} ({len(rows)})",
                       alpha=0.85, edgecolors="none")
    ranks = pareto_ranks(done[["val_accuracy", cost]].to_numpy(float), [True, False])
    front = done[ranks == 1].sort_values(cost)
    xs, ys = front[cost].to_numpy(float), 100 * front["val_accuracy"].to_numpy(float)
    ax.step(xs, ys, where="post", color="black", lw=1.2, zorder=1, label="Pareto front")
    ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", lw=1.0, zorder=3)
    for _, row in front.iterrows():
        ax.annotate(f"#{int(row['number'])}", (row[cost], 100 * row["val_accuracy"]),
                    textcoords="offset points", xytext=(5, -11), fontsize=7, color="0.25")
    return _finish_cost_plot(figure, ax, label, path)


def plot_accuracy_vs(trials: pd.DataFrame, column: str, label: str, path: str | Path,
                     log: bool = False) -> Path:
    """Validation accuracy against one architecture variable, one panel per family.

    Args:
        trials: The run's trials; finished ones are drawn as filled dots, pruned or early-stopped
            ones (accuracy at fewer epochs) as hollow ones.
        column: The variable, e.g. ``step_size`` or ``total_depth``.
        label: Its axis label, also used in the title.
        path: The PNG to write.
        log: Logarithmic x axis.
    """
    families = family_order(trials)
    colors = family_colors(families)
    n = max(1, len(families))
    figure = _figure(3.2 * n + 0.6, 3.6)
    axes = np.atleast_1d(figure.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0])
    figure.suptitle(f"Validation accuracy against {label}, per family")
    if not families:
        _empty(axes[0], "no trials")
        return _save(figure, path)
    scored = trials.dropna(subset=["val_accuracy", column])
    for ax, family in zip(axes, families):
        rows = scored[scored["family"] == family]
        full = rows[rows["comparable"].astype(bool)]
        partial = rows[~rows["comparable"].astype(bool)]
        if len(full):
            ax.scatter(full[column], 100 * full["val_accuracy"], color=colors[family], s=34,
                       label="finished")
        if len(partial):
            ax.scatter(partial[column], 100 * partial["val_accuracy"], facecolors="none",
                       edgecolors=colors[family], s=34, label="pruned (fewer epochs)")
        ax.set_title(f"{family} ({len(full)} finished)", fontsize=10)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if len(partial):
            ax.legend(fontsize=7, loc="best")
    if log:  # once, after plotting: the axes share x, and setting the scale resets the ticks
        axes[0].set_xscale("log")
        axes[0].xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes[0].xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes[0].xaxis.set_minor_formatter(ticker.NullFormatter())
    elif len(scored) and np.allclose(scored[column], np.round(scored[column])):
        axes[0].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("validation accuracy (%)")
    return _save(figure, path)


def plot_training_curves(trials: pd.DataFrame, histories: Mapping[int, Sequence[Mapping[str, float]]],
                         path: str | Path, top: int = 5) -> Path:
    """Validation accuracy and training loss per epoch of the ``top`` most accurate finished trials."""
    best = fully_trained(trials).sort_values(["val_accuracy", "number"], ascending=[False, True])
    best = best[best["number"].isin(list(histories))].head(top)
    figure = _figure(10.0, 4.0)
    acc_ax, loss_ax = figure.subplots(1, 2)
    figure.suptitle(f"Training curves of the top {len(best)} trials (by validation accuracy)")
    if best.empty:
        _empty(acc_ax, "no finished trials")
        _empty(loss_ax, "no finished trials")
        return _save(figure, path)
    colors = family_colors(family_order(trials))
    styles = ("-", "--", ":", "-.")
    for i, (_, row) in enumerate(best.iterrows()):
        history = histories[int(row["number"])]
        epochs = [h.get("epoch", k + 1) for k, h in enumerate(history)]
        label = f"#{int(row['number'])} {row['family']} ({100 * row['val_accuracy']:.1f}%)"
        style = dict(color=colors.get(row["family"]), ls=styles[i % len(styles)], marker=".")
        acc_ax.plot(epochs, [100 * h.get("val_accuracy", np.nan) for h in history], label=label, **style)
        loss_ax.plot(epochs, [h.get("train_loss", np.nan) for h in history], label=label, **style)
    acc_ax.set_title("validation accuracy", fontsize=10)
    acc_ax.set_ylabel("validation accuracy (%)")
    loss_ax.set_title("training loss", fontsize=10)
    loss_ax.set_ylabel("training loss")
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    acc_ax.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def plot_optimisation_history(trials: pd.DataFrame, path: str | Path) -> Path:
    """Validation accuracy of each trial in trial order, coloured by family, and the best so far.

    Pruned trials are hollow (their accuracy is at fewer epochs); failed ones are crosses on the
    bottom edge.
    """
    figure = _figure(8.0, 4.5)
    ax = figure.subplots()
    ax.set_title("Optimisation history: validation accuracy by trial, best so far")
    if trials.empty:
        _empty(ax, "no trials")
        return _save(figure, path)
    colors = family_colors(family_order(trials))
    full = trials["comparable"].astype(bool)
    scored = trials["val_accuracy"].notna()
    for family, color in colors.items():
        mine = trials["family"] == family
        rows = trials[mine & full]
        ax.scatter(rows["number"], 100 * rows["val_accuracy"], color=color, s=30, label=family)
        rows = trials[mine & ~full & scored]
        ax.scatter(rows["number"], 100 * rows["val_accuracy"], facecolors="none", edgecolors=color, s=30)
    done = trials[full].sort_values("number")
    if len(done):
        best = 100 * done["val_accuracy"].cummax()
        xs = [*done["number"], trials["number"].max()]
        ax.step(xs, [*best, best.iloc[-1]], where="post", color="black", lw=1.2, label="best so far")
    if (~full & scored).any():
        ax.scatter([], [], facecolors="none", edgecolors="0.3", s=30, label="pruned (fewer epochs)")
    failed = trials[trials["status"].isin([s.value for s in TrialStatus if s.failure])]
    if len(failed):
        bottom = 100 * trials["val_accuracy"].min() if scored.any() else 0.0
        ax.scatter(failed["number"], np.full(len(failed), bottom), marker="x", color="0.4",
                   s=30, label="failed / diverged")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_retrain(runs: pd.DataFrame, path: str | Path) -> Path:
    """Retrained accuracy per family: each run as a dot, the mean ± std as a diamond with error bars.

    Args:
        runs: One row per retraining (``family``, ``val_accuracy``, optionally ``test_accuracy``).
        path: The PNG to write.
    """
    metric = "test_accuracy" if "test_accuracy" in runs and runs["test_accuracy"].notna().any() else "val_accuracy"
    figure = _figure(6.5, 4.2)
    ax = figure.subplots()
    name = "test" if metric == "test_accuracy" else "validation"
    ax.set_title(f"Retrained top architectures: {name} accuracy per family (mean ± std)")
    scored = runs.dropna(subset=[metric]) if len(runs) else runs
    if scored.empty:
        _empty(ax, "no retrained runs")
        return _save(figure, path)
    families = family_order(scored)
    colors = family_colors(families)
    rng = np.random.default_rng(0)
    for i, family in enumerate(families):
        values = 100 * scored.loc[scored["family"] == family, metric].to_numpy(float)
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.errorbar(i, values.mean(), yerr=std, fmt="D", ms=9, color=colors[family], capsize=10,
                    lw=1.5, zorder=2)
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(values)), values, color=colors[family], s=16,
                   alpha=0.6, zorder=3)
        ax.annotate(f"{values.mean():.1f} ± {std:.1f}", (i, values.mean()), textcoords="offset points",
                    xytext=(14, -3), fontsize=8)
    ax.set_xticks(range(len(families)), families)
    ax.set_xlim(-0.6, len(families) - 0.4)
    ax.set_ylabel(f"{name} accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(figure, path)


def front_of(done: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The Pareto front (accuracy up, cost down) of fully trained trials, by cost."""
    if done.empty:
        return done
    ranks = pareto_ranks(done[["val_accuracy", cost]].to_numpy(float), [True, False])
    return done[ranks == 1].sort_values(cost)


def plot_fronts(runs: Mapping[str, pd.DataFrame], cost: str, path: str | Path) -> Path:
    """Several runs' Pareto fronts on one plot: each run's fully trained trials (faint) and its
    front (a step line), one colour per run; accuracy against a cost (log scale)."""
    figure = _figure(7.5, 5.0)
    ax = figure.subplots()
    label = COST_LABELS.get(cost, cost)
    ax.set_title(f"Pareto fronts: validation accuracy against {label}")
    if all(done.empty for done in runs.values()):
        _empty(ax, "no finished trials")
        return _save(figure, path)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for i, (name, done) in enumerate(runs.items()):
        color = cmap(i % 10)
        if done.empty:
            continue
        ax.scatter(done[cost], 100 * done["val_accuracy"], color=color, s=22, alpha=0.35,
                   marker=_MARKERS[i % len(_MARKERS)], edgecolors="none")
        front = front_of(done, cost)
        xs, ys = front[cost].to_numpy(float), 100 * front["val_accuracy"].to_numpy(float)
        ax.step(xs, ys, where="post", color=color, lw=1.6,
                label=f"{name} ({len(front)} on the front of {len(done)})")
        ax.scatter(xs, ys, s=60, color=color, marker=_MARKERS[i % len(_MARKERS)],
                   edgecolors="black", lw=0.6, zorder=3)
    return _finish_cost_plot(figure, ax, label, path)


def plot_hypervolume(curves: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Hypervolume against wall time (left) and against finished trials (right), one line per
    run (``compare_runs``'s curves)."""
    figure = _figure(11.0, 4.2)
    left, right = figure.subplots(1, 2)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for i, (name, curve) in enumerate(curves.items()):
        if curve.empty:
            continue
        color = cmap(i % 10)
        left.step(curve["wall_seconds"] / 60, curve["hypervolume"], where="post", color=color,
                  lw=1.5, label=name)
        right.step(curve["trials"], curve["hypervolume"], where="post", color=color, lw=1.5,
                   label=name)
    left.set_xlabel("wall time (minutes since the run's first trial started)")
    right.set_xlabel("trials finished")
    for ax in (left, right):
        ax.set_ylabel("hypervolume (accuracy x decades of cost)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    left.set_title("Hypervolume against wall time")
    right.set_title("Hypervolume against trials")
    return _save(figure, path)
