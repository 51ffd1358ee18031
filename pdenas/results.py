"""Trials of a run as a pandas DataFrame, Pareto ranking, hypervolume, leaderboard and export.

Every command after ``search`` starts from a run folder (``pdenas.runs.RunFolder``): each trial's
record (``trials/<n>/record.json``) says what it trained, how it went and what it cost. Rows come
from the records alone, the same for every backend, so reading a run never opens (or creates) a
backend's storage, and a copied run folder reads the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdenas.errors import InputError
from pdenas.runs import RunFolder, RunInfo, TrialRecord, TrialStatus

__all__ = [
    "ARCH_COLUMNS",
    "METRIC_COLUMNS",
    "PAPER_ORDER",
    "RunInfo",
    "TRIAL_COLUMNS",
    "check_table_path",
    "comparable",
    "export_trials",
    "family_order",
    "format_leaderboard",
    "format_predictions",
    "fully_trained",
    "hypervolume_2d",
    "leaderboard",
    "load_histories",
    "load_record",
    "load_run",
    "load_trials",
    "parquet_available",
    "pareto_ranks",
    "split_skipped",
    "trained_gain",
    "trial_row",
]

ARCH_COLUMNS = ("family", "step_size", "depths", "widths", "activation", "norm", "reversible",
                "opening_stride", "start", "layer_init", "bn_eps")
_ARCH_DEFAULTS = {"opening_stride": 1, "start": "rest", "layer_init": "torch", "bn_eps": 1e-5}
"""What records written before a field existed mean by its absence (``Architecture``'s defaults)."""
METRIC_COLUMNS = ("val_accuracy", "params", "flops", "latency_ms", "latency_batch_ms",
                  "memory_bytes", "predicted_seconds", "max_stable_step", "gain")
DERIVED_COLUMNS = ("num_units", "total_depth", "mean_depth", "mean_width", "total_width")
"""Per-unit lists reduced to one number each (what importance and plots use)."""


def load_run(run_dir: str | Path) -> RunInfo:
    """Reads ``run.json`` of a run folder (``RunFolder.read_info``).

    Raises:
        ValueError: When the folder is not a pdenas run, or its ``run.json`` is damaged or newer.
    """
    return RunFolder(run_dir).read_info()


TRIAL_COLUMNS = ("number", "state", "status", "failure_reason", *ARCH_COLUMNS, *METRIC_COLUMNS, "val_loss",
                 "epochs_trained", "epochs_planned", "seconds", "history", "params_suggested",
                 "worker", "device", "warm_start_from", "datetime_start", "datetime_complete")


def trial_row(record: TrialRecord) -> dict[str, Any]:
    """One trial's row of ``load_trials``, from its record."""
    arch, cost = record.architecture, record.cost
    row: dict[str, Any] = {"number": record.number, "state": record.status.state,
                           "status": record.status.value, "failure_reason": record.failure_reason}
    for key in ARCH_COLUMNS:
        value = arch.get(key, _ARCH_DEFAULTS.get(key))  # records from before a field: its default
        row[key] = tuple(value) if isinstance(value, list) else value
    row["val_accuracy"] = record.val_accuracy
    row["val_loss"] = _loss_at_best(record)
    for key in ("params", "flops", "latency_ms", "latency_batch_ms", "memory_bytes",
                "predicted_seconds"):
        row[key] = cost.get(key)
    row["max_stable_step"], row["gain"] = record.max_stable_step, trained_gain(record)
    row.update(epochs_trained=record.epochs_trained, epochs_planned=record.epochs_planned,
               seconds=record.seconds, history=list(record.history),
               params_suggested=dict(record.params), worker=record.worker, device=record.device,
               warm_start_from=record.warm_start.get("from_trial"),
               datetime_start=_time(record.started_at), datetime_complete=_time(record.finished_at))
    return row


def trained_gain(record: TrialRecord) -> float | None:
    """The gain of a trial's trained weights: the largest over its units of the largest singular
    value of d(unit output)/d(unit input) at a few training images (``stability.final.gain``,
    recorded after training whatever the study's ``stability.mode``); None for a trial that did
    not finish training, a network without PDE units, or a record from before it was kept."""
    final = record.stability.get("final") if isinstance(record.stability, dict) else None
    gain = final.get("gain") if isinstance(final, dict) else None
    number = isinstance(gain, (int, float)) and not isinstance(gain, bool)
    return float(gain) if number and math.isfinite(gain) else None


def _loss_at_best(record: TrialRecord) -> float | None:
    """The validation loss of the epoch with the best accuracy (ties: the lower loss), what
    breaks accuracy ties in the rankings."""
    epochs = [h for h in record.history if "val_accuracy" in h and "val_loss" in h]
    if not epochs:
        return None
    return float(max(epochs, key=lambda h: (h["val_accuracy"], -h["val_loss"]))["val_loss"])


def _time(text: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(text) if text else None


def load_trials(run_dir: str | Path) -> pd.DataFrame:
    """All trials of a run, one row each, from the trials' records (the same for every backend).

    Columns: ``number``, ``state`` (RUNNING, COMPLETE, PRUNED or FAIL: ``TrialStatus.state``),
    ``status`` (``TrialStatus``), ``failure_reason``, the architecture fields flattened
    (``depths`` and ``widths`` as tuples), the metrics, ``epochs_trained``, ``epochs_planned``,
    ``seconds``, ``history``, ``params_suggested``, ``worker``, ``datetime_start``,
    ``datetime_complete``, ``gain`` (``trained_gain``: the trained weights' largest unit gain;
    NaN where none was recorded, as in records written before it), the derived ``num_units``, ``total_depth`` (time steps of all units),
    ``mean_depth``, ``mean_width`` and ``total_width`` (over the units, the last connector's
    output excluded), and ``comparable`` (completed at the full budget of epochs: the trials that
    may be ranked against each other).

    Raises:
        ValueError: Not a run folder, or a damaged record (naming its file).
    """
    run = RunFolder(run_dir)
    run.read_info()
    frame = pd.DataFrame([trial_row(r) for r in run.records()])
    if frame.empty:
        frame = pd.DataFrame(columns=list(TRIAL_COLUMNS))
    frame = _add_derived(frame)
    return frame.sort_values("number").reset_index(drop=True)


def _units(value: Any, last: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value:
        return []
    values = [float(v) for v in value]
    return values[:-1] if last and len(values) > 1 else values


def _add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for key in ("depths", "widths"):
        if key in frame:
            frame[key] = frame[key].map(lambda v: tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else v)
    depths = frame["depths"].map(_units) if "depths" in frame else pd.Series([[]] * len(frame))
    widths = frame["widths"].map(lambda w: _units(w, last=True)) if "widths" in frame else depths
    frame["num_units"] = depths.map(lambda d: len(d) or np.nan)
    frame["total_depth"] = depths.map(lambda d: sum(d) if d else np.nan)
    frame["mean_depth"] = depths.map(lambda d: float(np.mean(d)) if d else np.nan)
    frame["mean_width"] = widths.map(lambda w: float(np.mean(w)) if w else np.nan)
    frame["total_width"] = widths.map(lambda w: sum(w) if w else np.nan)
    for key in (*METRIC_COLUMNS, "val_loss", "epochs_trained", "epochs_planned", "seconds",
                "step_size"):
        if key not in frame:
            frame[key] = np.nan
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    frame["comparable"] = comparable(frame)
    return frame


def comparable(trials: pd.DataFrame) -> pd.Series:
    """Which trials were completed at the full budget (Ray's early-stopped trials are not).

    Returns:
        A boolean Series aligned with ``trials``.
    """
    if trials.empty:
        return pd.Series(dtype=bool)
    done = trials["status"].eq(TrialStatus.COMPLETED.value) & trials["val_accuracy"].notna()
    trained = pd.to_numeric(trials["epochs_trained"], errors="coerce").fillna(0)
    planned = pd.to_numeric(trials["epochs_planned"], errors="coerce").fillna(0)
    return (done & (trained >= planned)).astype(bool)


def split_skipped(trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The trials without the draws skipped as too long for the time left (never built, so
    trials of no family), and a phrase counting those draws for a header ("" when none)."""
    skipped = int((trials["status"] == "skipped").sum()) if len(trials) else 0
    if not skipped:
        return trials, ""
    kept = trials[trials["status"] != "skipped"].reset_index(drop=True)
    return kept, f", {skipped} draw{'s' * (skipped != 1)} skipped as too long for the time left"


def fully_trained(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``trials`` whose ``comparable`` column is true (see ``comparable``)."""
    if trials.empty or "comparable" not in trials:
        return trials.iloc[0:0]
    return trials[trials["comparable"].astype(bool)]


PAPER_ORDER = ("parabolic", "hamiltonian", "second_order", "resnet")
"""Families in the paper's order, the baseline last; other registered families follow by name."""


def family_order(trials: pd.DataFrame) -> list[str]:
    """The families present in ``trials``, in ``PAPER_ORDER`` then by name (tables and plots)."""
    present = set(trials["family"].dropna()) if len(trials) and "family" in trials else set()
    return [f for f in PAPER_ORDER if f in present] + sorted(present - set(PAPER_ORDER))


def load_record(run_dir: str | Path, number: int) -> dict[str, Any]:
    """A trial's record as plain data (architecture, train settings, history, cost, status).

    Raises:
        ValueError: When the trial has no record in the run folder, or it is damaged.
    """
    return RunFolder(run_dir).trial(int(number)).read_record().to_dict()


def load_histories(run_dir: str | Path, numbers: Sequence[int]) -> dict[int, list[dict[str, float]]]:
    """Per-epoch metrics (epoch, train_loss, val_accuracy, ...) of the given trials.

    Trials without a record (a crashed worker's) are left out.
    """
    run, histories = RunFolder(run_dir), {}
    for number in numbers:
        folder = run.trial(int(number))
        if folder.has_record():
            histories[int(number)] = list(folder.read_record().history)
    return histories


def pareto_ranks(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting: rank 1 is the Pareto front, rank 2 the front once it is removed...

    Args:
        values: (n, m) objective values.
        maximize: Per objective, whether larger is better.

    Returns:
        (n,) integer ranks starting at 1.
    """
    v = np.asarray(values, dtype=float).reshape(len(values), -1)
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


def hypervolume_2d(points: np.ndarray, reference: Sequence[float]) -> float:
    """The area dominated by 2-D points (both objectives minimised) up to a reference point.

    Points that do not strictly dominate the reference add nothing.

    Args:
        points: (n, 2) objective values, smaller is better in both.
        reference: The worst corner (r0, r1).

    Returns:
        The hypervolume (0 for no points).
    """
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    r0, r1 = float(reference[0]), float(reference[1])
    p = p[np.all(np.isfinite(p), axis=1) & (p[:, 0] < r0) & (p[:, 1] < r1)]
    if not len(p):
        return 0.0
    p = p[np.lexsort((p[:, 1], p[:, 0]))]  # by the first objective, ties by the second
    volume, best = 0.0, r1
    front: list[tuple[float, float]] = []
    for x, y in p:  # sweep: keep the points that lower the best second objective so far
        if y < best:
            front.append((float(x), float(y)))
            best = y
    for i, (x, y) in enumerate(front):
        next_x = front[i + 1][0] if i + 1 < len(front) else r0
        volume += (next_x - x) * (r1 - y)
    return volume


def leaderboard(trials: pd.DataFrame, objectives: Sequence[str] = ("val_accuracy", "flops")) -> pd.DataFrame:
    """The finished, fully trained trials ranked by Pareto rank, then accuracy, then validation
    loss (so equal accuracies, common on small validation sets, are not ties).

    Only trials that trained their whole budget are ranked (trials stopped early would be
    compared at fewer epochs). The Pareto rank uses accuracy against the run's cost objective
    (FLOPs when the study had a single objective).
    """
    if trials.empty:
        return trials.assign(pareto_rank=pd.Series(dtype=int))
    mask = trials["comparable"] if "comparable" in trials else comparable(trials)
    done = trials[mask.astype(bool)].copy()
    if done.empty:
        return done.assign(pareto_rank=pd.Series(dtype=int))
    cost = objectives[1] if len(objectives) > 1 else "flops"
    values = done[["val_accuracy", cost]].to_numpy(dtype=float, copy=True)
    values[np.isnan(values[:, 1]), 1] = np.inf  # unknown cost never dominates
    done["pareto_rank"] = pareto_ranks(values, [True, False])
    order = ["pareto_rank", "val_accuracy", "val_loss", "number"]
    return done.sort_values(order, ascending=[True, False, True, True]).reset_index(drop=True)


def _fmt(value: Any, pattern: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(number) else pattern.format(number)


def format_leaderboard(board: pd.DataFrame, top: int | None = None) -> str:
    """The leaderboard as a plain-text table."""
    if board.empty:
        return "no finished trials yet"
    rows = board if top is None else board.head(top)
    table = pd.DataFrame({
        "rank": rows["pareto_rank"],
        "trial": rows["number"],
        "family": rows["family"],
        "h": rows["step_size"].map(lambda h: _fmt(h, "{:.3g}")),
        "depths": rows["depths"].map(lambda d: "-".join(map(str, d))),
        "widths": rows["widths"].map(lambda w: "-".join(map(str, w))),
        "val_acc": rows["val_accuracy"].map(lambda a: _fmt(100 * a, "{:.2f}%")),
        "params": rows["params"].map(lambda p: _fmt(p, "{:,.0f}")),
        "MFLOPs": rows["flops"].map(lambda f: _fmt(f / 1e6, "{:.2f}")),
        "latency_ms": rows["latency_ms"].map(lambda t: _fmt(t, "{:.2f}")),
    })
    if "opening_stride" in rows and rows["opening_stride"].fillna(1).ne(1).any():
        table.insert(table.columns.get_loc("widths") + 1, "stride",
                     rows["opening_stride"].fillna(1).astype(int).to_numpy())
    if "start" in rows and rows["start"].fillna("rest").ne("rest").any():
        table.insert(table.columns.get_loc("widths") + 1, "start",
                     rows["start"].fillna("rest").to_numpy())
    if "gain" in rows and rows["gain"].notna().any():
        table["gain"] = rows["gain"].map(lambda g: _fmt(g, "{:.3g}"))
    if "warm_start_from" in rows and rows["warm_start_from"].notna().any():
        table["warm from"] = rows["warm_start_from"].map(lambda n: "-" if n != n or n is None
                                                          else f"#{int(n)}")
    return table.to_string(index=False)


def format_predictions(trials: pd.DataFrame) -> str:
    """Predicted against actual seconds of every trial, and how well the prediction held (the
    median and the range of actual / predicted over the trials that trained all their epochs)."""
    if trials.empty or trials["predicted_seconds"].isna().all():
        return "no time predictions recorded"
    table = pd.DataFrame({
        "trial": trials["number"], "family": trials["family"], "status": trials["status"],
        "predicted_s": trials["predicted_seconds"].map(lambda t: _fmt(t, "{:,.1f}")),
        "actual_s": trials["seconds"].map(lambda t: _fmt(t, "{:,.1f}")),
    })
    full = trials[trials["comparable"].astype(bool) & trials["predicted_seconds"].gt(0)]
    ratio = (full["seconds"] / full["predicted_seconds"]).dropna()
    held = (f"actual / predicted over {len(ratio)} fully trained trials: median {ratio.median():.2f}"
            f" (range {ratio.min():.2f}-{ratio.max():.2f})" if len(ratio) else
            "no fully trained trial to compare the prediction with yet")
    return "time per trial, predicted before training and actual:\n" + table.to_string(index=False) + "\n" + held


def _plain_value(value: Any, as_text: bool) -> Any:
    if isinstance(value, (tuple, list, np.ndarray)):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        return json.dumps(items) if as_text else items
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (pyarrow, the ``parquet`` extra, is optional)."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def check_table_path(path: str | Path) -> Path:
    """The path of a table to write, checked before any work: a .csv or .parquet name, and for
    Parquet its engine installed.

    Raises:
        InputError: Another suffix, or Parquet without pyarrow (naming the extra to install).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{path}: unknown table format {suffix or '(none)'!r}; use .csv or .parquet")
    if suffix == ".parquet" and not parquet_available():
        raise InputError(f"{path}: writing Parquet needs pyarrow; pip install 'pdenas[parquet]' "
                         "(or write .csv)")
    return path


def export_trials(trials: pd.DataFrame, path: str | Path) -> Path:
    """Writes trials (or a leaderboard) as CSV or Parquet, chosen by the file suffix.

    Per-unit lists stay lists in Parquet and become JSON text (``[2, 3]``) in CSV; the suggested
    parameters become JSON text in both.

    Raises:
        InputError: See ``check_table_path``.
    """
    path = check_table_path(path)
    suffix = path.suffix.lower()
    frame = trials.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: _plain_value(v, suffix == ".csv"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
