"""Plots of a run as PNG files: accuracy against cost with the Pareto front, accuracy against the
step size and the depth per family, training curves of the top trials, the optimisation history,
retrained accuracy per family, the verdict (intervals, P(best), paired differences), the
expected best accuracy against the number of trials, and retrained accuracy against cost.

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
    "plot_cost_intervals",
    "plot_expected_max",
    "plot_fronts",
    "plot_hypervolume",
    "plot_optimisation_history",
    "plot_pareto",
    "plot_retrain",
    "plot_training_curves",
    "plot_verdict",
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


def _titled(width: float, height: float, title: str) -> tuple[Figure, Axes]:
    """A figure with one titled panel."""
    figure = _figure(width, height)
    ax = figure.subplots()
    ax.set_title(title)
    return figure, ax


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish_cost_plot(figure: Figure, ax: Axes, label: str, path: str | Path,
                      accuracy: str = "validation") -> Path:
    """Accuracy against a log-scale cost: axis labels, grid, legend; saved to ``path``."""
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log scale)")
    ax.set_ylabel(f"{accuracy} accuracy (%)")
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
        trials: The run's trials; finished ones are drawn as filled dots, early-stopped
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
                       edgecolors=colors[family], s=34, label="stopped early (fewer epochs)")
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
        ax.scatter([], [], facecolors="none", edgecolors="0.3", s=30, label="stopped early (fewer epochs)")
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


def plot_verdict(families: pd.DataFrame, pairs: pd.DataFrame, level: float, path: str | Path) -> Path:
    """The verdict: each family's mean test accuracy with its 95 % interval and P(best), and each
    paired difference (against the best, against the baseline) with its interval and zero.

    Args:
        families: ``Verdict.families`` (family, mean, low, high, p_best, seeds).
        pairs: ``Verdict.pairs`` (a, b, against, diff, low, high, different).
        level: The pairs' interval level.
        path: The PNG to write.
    """
    figure = _figure(10.0, 4.4)
    left, right = figure.subplots(1, 2)
    colors = family_colors(list(families["family"]))
    seeds = int(families["seeds"].max()) if len(families) else 0
    left.set_title(f"Test accuracy, 95 % interval ({seeds} seeds x test images)")
    for i, r in enumerate(families.itertuples()):
        mean, low, high = 100 * r.mean, 100 * r.low, 100 * r.high
        left.errorbar(i, mean, yerr=[[mean - low], [high - mean]], fmt="D", ms=8, capsize=10,
                      color=colors[r.family], lw=1.6)
        left.annotate(f"{mean:.2f}%\nP(best) {r.p_best:.2f}", (i, high), textcoords="offset points",
                      xytext=(0, 6), ha="center", fontsize=8)
    left.set_xticks(range(len(families)), list(families["family"]))
    left.set_xlim(-0.6, len(families) - 0.4)
    left.margins(y=0.25)
    left.set_ylabel("test accuracy (%)")
    left.grid(True, axis="y", alpha=0.3)
    right.set_title(f"Paired differences, {100 * level:.3g} % interval (points)")
    if pairs.empty:
        _empty(right, "one family: no pairs")
        return _save(figure, path)
    labels = [f"{a} - {b}" for a, b in zip(pairs["a"], pairs["b"])]
    for i, r in enumerate(pairs.itertuples()):
        diff, low, high = 100 * r.diff, 100 * r.low, 100 * r.high
        right.errorbar(diff, i, xerr=[[diff - low], [high - diff]], fmt="o", capsize=6,
                       color="tab:red" if r.different else "0.35", lw=1.5)
    right.axvline(0, color="black", lw=0.8)
    right.set_yticks(range(len(labels)), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("test accuracy difference (points); red: different")
    right.grid(True, axis="x", alpha=0.3)
    return _save(figure, path)


def plot_expected_max(curves: pd.DataFrame, path: str | Path) -> Path:
    """Each family's expected best validation accuracy of n trials, ± one standard deviation as a
    band, solid up to the family's own number of finished trials and dotted beyond.

    Args:
        curves: ``family, n, trials, expected, std`` (``pdenas.compare._estimand.expected_max_table``).
        path: The PNG to write.
    """
    figure, ax = _titled(7.0, 4.4, "Expected best validation accuracy of n trials (Dodge et al. 2019)")
    if curves.empty:
        _empty(ax, "no finished trials")
        return _save(figure, path)
    families = list(dict.fromkeys(curves["family"]))
    colors = family_colors(families)
    for family in families:
        mine = curves[curves["family"] == family]
        n = mine["n"].to_numpy(int)
        mean, std = 100 * mine["expected"].to_numpy(float), 100 * mine["std"].to_numpy(float)
        own = n <= int(mine["trials"].iloc[0])
        ax.fill_between(n, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100), color=colors[family],
                        alpha=0.15, lw=0)
        ax.plot(n[own], mean[own], color=colors[family], lw=1.8,
                label=f"{family} ({int(mine['trials'].iloc[0])} trials)")
        ax.plot(n[~own | (n == n[own].max(initial=0))], mean[~own | (n == n[own].max(initial=0))],
                color=colors[family], lw=1.2, ls=":")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("trials n (log scale); band: ± one standard deviation, capped at 100 %")
    ax.set_ylabel("expected best validation accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_cost_intervals(runs: pd.DataFrame, cost: str, path: str | Path, level: float = 0.95) -> Path:
    """Retrained test accuracy against cost: each retrained candidate's mean over its seeds with a
    Student-t interval over seeds at ``level``, per family.

    Args:
        runs: One row per retrained network (``family, trial, seed, test_accuracy, cost``).
        cost: The cost's name (axis label).
        path: The PNG to write.
    """
    from scipy import stats

    label = COST_LABELS.get(cost, cost)
    figure, ax = _titled(7.0, 4.4, f"Retrained test accuracy against {label} "
                                   f"({100 * level:.3g} % interval over seeds)")
    scored = runs.dropna(subset=["test_accuracy", "cost"]) if len(runs) else runs
    if scored.empty:
        _empty(ax, "no retrained networks with a cost")
        return _save(figure, path)
    colors = family_colors(family_order(scored))
    for i, family in enumerate(colors):
        first = True
        for trial, mine in scored[scored["family"] == family].groupby("trial", sort=False):
            values = 100 * mine["test_accuracy"].to_numpy(float)
            half = (stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
                    if len(values) > 1 else 0.0)
            ax.errorbar(float(mine["cost"].iloc[0]), values.mean(), yerr=half, capsize=5,
                        fmt=_MARKERS[i % len(_MARKERS)], color=colors[family], ms=7,
                        label=family if first else None)
            ax.annotate(f"#{int(trial)}", (float(mine["cost"].iloc[0]), values.mean()),
                        textcoords="offset points", xytext=(6, 4), fontsize=7, color="0.3")
            first = False
    return _finish_cost_plot(figure, ax, label, path, accuracy="test")


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
        if ax.get_legend_handles_labels()[0]:  # no run with finish times: no curve to name
            ax.legend(fontsize=8, loc="lower right")
    left.set_title("Hypervolume against wall time")
    right.set_title("Hypervolume against trials")
    return _save(figure, path)
