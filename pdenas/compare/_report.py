"""What ``pdenas compare`` shows and writes besides the tables' contents: display formatting
(percentages, costs, Markdown tables), the plots and ``report.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pdenas.results import RunInfo, fully_trained, load_histories

__all__ = ["cost_text", "markdown_table", "pct", "write_plots", "write_report"]


def pct(value: Any) -> str:
    """An accuracy in percent with one decimal; ``-`` for None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def cost_text(cost: str, value: float) -> str:
    """A value of the cost objective ``cost`` with its unit (M FLOPs, k params, MiB, ms)."""
    if math.isnan(value):
        return "-"
    units = {"flops": (1e6, "M"), "params": (1e3, "k"), "memory_bytes": (2**20, " MiB")}
    scale, unit = units.get(cost, (1.0, " ms" if cost.startswith("latency") else ""))
    return f"{value / scale:.3g}{unit}"


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame of display strings as a GitHub-flavoured Markdown table."""
    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_plots(trials: pd.DataFrame, info: RunInfo, run_dir: Path, out: Path) -> dict[str, Path]:
    """Draws the run's plots into ``out``; returns title -> PNG path, in report order."""
    from pdenas import plots

    cost = info.cost_objective
    done = fully_trained(trials)
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
