"""Trials of a run as a pandas DataFrame, Pareto ranking and the leaderboard.

Every command after ``search`` starts from a run folder: ``run.json`` says where the study's
storage is, and each trial's record says what it trained and what it cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RunInfo",
    "leaderboard",
    "load_run",
    "load_trials",
    "format_leaderboard",
    "pareto_ranks",
]

ARCH_COLUMNS = ("family", "step_size", "depths", "widths", "activation", "norm", "reversible")
METRIC_COLUMNS = ("val_accuracy", "params", "flops", "latency_ms", "latency_batch_ms",
                  "memory_bytes")


class RunInfo(dict):
    """The contents of a run folder's ``run.json`` (study name, storage URL, backend, config)."""

    @property
    def objectives(self) -> list[str]:
        return list(self["config"].get("objectives", ["val_accuracy"]))


def load_run(run_dir: str | Path) -> RunInfo:
    """Reads ``run.json`` of a run folder.

    Raises:
        ValueError: When the folder is not a pdenas run.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"{run_dir}: not a pdenas run folder (no run.json); run `pdenas search` first")
    return RunInfo(json.loads(path.read_text()))


def load_trials(run_dir: str | Path) -> pd.DataFrame:
    """All trials of a run, one row each, from the backend's storage.

    Columns: ``number``, ``state`` (the backend's), ``status`` (pdenas's: completed, pruned,
    stopped, infeasible, diverged, oom, failed), ``failure_reason``, the architecture fields
    flattened, the metrics, ``epochs_trained``, ``epochs_planned`` and ``seconds``.
    """
    info = load_run(run_dir)
    if info.get("backend") == "ray":
        from pdenas.backends.ray import load_records

        rows = load_records(run_dir)
    else:
        rows = _optuna_rows(info)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "status", *ARCH_COLUMNS, *METRIC_COLUMNS])
    return frame.sort_values("number").reset_index(drop=True)


def _optuna_rows(info: RunInfo) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from pdenas.backends.optuna import make_storage

    study = optuna.load_study(study_name=info["study_name"], storage=make_storage(info["storage"]))
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if t.state.name == "WAITING":
            continue
        arch = attrs.get("architecture") or {}
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "status": attrs.get("status", t.state.name.lower()),
            "failure_reason": attrs.get("failure_reason"),
        }
        for key in ARCH_COLUMNS:
            value = arch.get(key)
            row[key] = tuple(value) if isinstance(value, list) else value
        for key in METRIC_COLUMNS:
            row[key] = attrs.get(key)
        row["epochs_trained"] = attrs.get("epochs_trained")
        row["epochs_planned"] = attrs.get("epochs_planned")
        row["seconds"] = attrs.get("seconds")
        row["params_suggested"] = dict(t.params)
        rows.append(row)
    return rows


def pareto_ranks(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting: rank 1 is the Pareto front, rank 2 the front once it is removed...

    Args:
        values: (n, m) objective values.
        maximize: Per objective, whether larger is better.

    Returns:
        (n,) integer ranks starting at 1.
    """
    v = np.asarray(values, dtype=float)
    signs = np.where(np.asarray(maximize), -1.0, 1.0)
    v = v * signs  # now every objective is minimised
    n = len(v)
    ranks = np.zeros(n, dtype=int)
    remaining = np.arange(n)
    rank = 1
    while remaining.size:
        sub = v[remaining]
        dominated = np.zeros(len(sub), dtype=bool)
        for i in range(len(sub)):
            better_eq = np.all(sub <= sub[i], axis=1)
            strictly = np.any(sub < sub[i], axis=1)
            dominated[i] = np.any(better_eq & strictly)
        front = remaining[~dominated]
        ranks[front] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def leaderboard(trials: pd.DataFrame, objectives: Sequence[str] = ("val_accuracy", "flops")) -> pd.DataFrame:
    """The finished, fully trained trials ranked by Pareto rank, then accuracy.

    Only trials that trained their whole budget are ranked (pruned or early-stopped trials would
    be compared at fewer epochs). The Pareto rank uses accuracy against the run's cost objective
    (FLOPs when the study had a single objective).
    """
    done = trials[trials["status"] == "completed"].copy()
    if done.empty:
        return done.assign(pareto_rank=pd.Series(dtype=int))
    full = done["epochs_trained"].fillna(0) >= done["epochs_planned"].fillna(0)
    done = done[full]
    cost = objectives[1] if len(objectives) > 1 else "flops"
    values = done[["val_accuracy", cost]].to_numpy(dtype=float)
    done["pareto_rank"] = pareto_ranks(values, [True, False])
    return done.sort_values(["pareto_rank", "val_accuracy"], ascending=[True, False]).reset_index(drop=True)


def format_leaderboard(board: pd.DataFrame, top: int | None = None) -> str:
    """The leaderboard as a plain-text table."""
    if board.empty:
        return "no finished trials yet"
    rows = board if top is None else board.head(top)
    table = pd.DataFrame({
        "rank": rows["pareto_rank"],
        "trial": rows["number"],
        "family": rows["family"],
        "h": rows["step_size"].map(lambda h: f"{h:.3g}"),
        "depths": rows["depths"].map(lambda d: "-".join(map(str, d))),
        "widths": rows["widths"].map(lambda w: "-".join(map(str, w))),
        "val_acc": rows["val_accuracy"].map(lambda a: f"{100 * a:.2f}%"),
        "params": rows["params"].map(lambda p: f"{int(p):,}"),
        "MFLOPs": rows["flops"].map(lambda f: f"{f / 1e6:.2f}"),
        "latency_ms": rows["latency_ms"].map(lambda t: f"{t:.2f}"),
    })
    return table.to_string(index=False)
