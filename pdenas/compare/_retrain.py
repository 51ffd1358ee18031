"""The fair comparison of ``pdenas compare --retrain-top K --seeds S``: each family's top K
architectures retrained with S seeds at the full budget, summarised as mean ± std."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pdenas.compare._report import pct
from pdenas.results import RunInfo, family_order, fully_trained
from pdenas.runs import TrialStatus

__all__ = ["RETRAIN_SEED", "format_retrain", "retrain_summary", "retrain_top"]

RETRAIN_SEED = 10_000
"""Seed offset of retraining runs: seed ``s`` initialises and shuffles with ``RETRAIN_SEED + s``."""


def _top_trials(trials: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Each family's ``top_k`` most accurate finished trials, identical architectures once."""
    done = fully_trained(trials).sort_values(
        ["val_accuracy", "number"], ascending=[False, True])
    key = done[["family", "step_size", "depths", "widths", "activation", "norm", "opening_stride"]]
    key = key.astype(str).agg("|".join, axis=1)
    done = done[~key.duplicated()]
    return done.groupby("family", sort=False).head(top_k)


def retrain_top(run_dir: str | Path, info: RunInfo, trials: pd.DataFrame, top_k: int, seeds: int,
                device: Any, log: Any = None, data: Any = None) -> pd.DataFrame:
    """Retrains each family's top ``top_k`` architectures ``seeds`` times at the full budget.

    Each run trains the trial's stored architecture with its stored training settings (all
    epochs) on the study's data split, keeps the best-validation weights and measures them on
    the test split. An architecture's seeds train together as one stacked model where it
    allows (``_train_seeds``): the same networks as separate runs up to rounding.

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
    from pdenas.architecture import Architecture
    from pdenas.data import load_data
    from pdenas.results import load_record
    from pdenas.study import StudyConfig
    from pdenas.train import TrainConfig, evaluate

    if data is None:
        data = load_data(StudyConfig.from_stored(info["config"]).data, device=device)
    rows = []
    for _, trial in _top_trials(trials, top_k).iterrows():
        record = load_record(run_dir, int(trial["number"]))
        arch = Architecture.from_dict(record["architecture"])
        train = TrainConfig.from_stored(record["train"])
        trained = _train_seeds(arch, data, train, device, seeds)
        for s, (model, result, failure) in enumerate(trained):
            row: dict[str, Any] = {"family": arch.family, "trial": int(trial["number"]), "seed": s,
                                   "status": TrialStatus.COMPLETED.value, "val_accuracy": math.nan,
                                   "test_accuracy": math.nan,
                                   "search_val_accuracy": float(trial["val_accuracy"]),
                                   "epochs": 0, "seconds": math.nan}
            if failure is not None:
                row.update(status=failure.status.value, epochs=len(failure.history))
            else:
                row.update(val_accuracy=float(result.best_val_accuracy), epochs=result.epochs_trained,
                           seconds=float(result.seconds))
                if len(data.test):
                    row["test_accuracy"] = float(evaluate(model, data.test, device)[1])
            rows.append(row)
            if log is not None:
                log(f"retrain #{row['trial']} {row['family']} seed {s + 1}/{seeds}: {row['status']}, "
                    f"val {pct(row['val_accuracy'])}, test {pct(row['test_accuracy'])}")
    return pd.DataFrame(rows, columns=["family", "trial", "seed", "status", "val_accuracy", "test_accuracy",
                                       "search_val_accuracy", "epochs", "seconds"])


def _train_seeds(arch: Any, data: Any, train: Any, device: Any, seeds: int
                 ) -> list[tuple[Any, Any, Any]]:
    """(model, FitResult, failure or None) of seeds ``RETRAIN_SEED + 0 .. seeds - 1``, each with
    its best-validation weights: the seeds as one stacked model (``pdenas.stacked.fit_seeds``)
    where the architecture and settings allow it, else one ``fit`` per seed. A stacked row's
    seconds are its share of the stacked run's wall time."""
    import torch

    from pdenas.network import build_model
    from pdenas.stacked import fit_seeds, stacking_problems
    from pdenas.train import OutOfMemory, TrainingFailed, fit

    if seeds >= 2 and not stacking_problems(train, arch):
        runs = fit_seeds(arch, data, train, device, [RETRAIN_SEED + s for s in range(seeds)])
        if not all(isinstance(run.failure, OutOfMemory) for run in runs):
            for run in runs:
                run.result.seconds /= seeds
            return [(run.model, run.result, run.failure) for run in runs]
    out = []
    for s in range(seeds):
        torch.manual_seed(RETRAIN_SEED + s)
        model = build_model(arch).to(device)
        try:
            out.append((model, fit(model, data, train, device, seed=RETRAIN_SEED + s), None))
        except TrainingFailed as failure:
            out.append((model, None, failure))
    return out


def retrain_summary(runs: pd.DataFrame, by: tuple[str, ...] = ("family",)) -> pd.DataFrame:
    """Mean and sample standard deviation of retrained accuracy per family (or per ``by``).

    Returns:
        Columns ``*by, runs, failed, val_mean, val_std, test_mean, test_std`` (std NaN for 1 run).
    """
    order = {family: i for i, family in enumerate(family_order(runs))}
    runs = runs.sort_values(list(by), key=lambda c: c.map(order) if c.name == "family" else c, kind="stable")
    groups = runs.groupby(list(by), sort=False)
    table = groups.agg(runs=("seed", "size"),
                       failed=("status", lambda s: int((s != TrialStatus.COMPLETED.value).sum())),
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
