"""Tests for pdenas.results: trials as a DataFrame, Pareto ranks, hypervolume, leaderboard, export.

``make_synthetic_run`` builds a run folder through the real Optuna backend functions (study,
storage, run.json, record.json) with trials of every status; test_compare.py uses it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdenas.architecture import Architecture
from pdenas.results import (
    comparable,
    export_trials,
    hypervolume_2d,
    leaderboard,
    load_histories,
    load_run,
    load_trials,
    pareto_ranks,
)
from pdenas.runs import RunFolder, TrialRecord
from pdenas.study import StudyConfig
from pdenas.train import TrainConfig

EPOCHS = 3
FAMILIES = ["parabolic", "hamiltonian", "second_order", "resnet"]

# (family, status, val_accuracy, flops, h, depths, widths, epochs_trained)
SPEC = [
    ("parabolic", "completed", 0.55, 1.0e5, 0.1, (1, 1), (8, 8, 8), EPOCHS),
    ("parabolic", "completed", 0.62, 2.0e5, 0.2, (2, 1), (8, 16, 16), EPOCHS),
    ("parabolic", "completed", 0.75, 4.0e5, 0.4, (1, 2), (16, 16, 16), EPOCHS),
    ("parabolic", "completed", 0.83, 1.5e5, 0.6, (2, 2), (8, 8, 8), EPOCHS),
    ("parabolic", "completed", 0.90, 8.0e5, 0.8, (1, 1), (16, 32, 32), EPOCHS),
    ("parabolic", "completed", 0.95, 5.0e5, 1.0, (2, 2), (16, 16, 16), EPOCHS),
    ("hamiltonian", "completed", 0.97, 3.0e5, 0.5, (2, 2), (8, 8, 8), EPOCHS),
    ("hamiltonian", "completed", 0.60, 9.0e5, 0.3, (1, 2), (16, 32, 32), EPOCHS),
    ("hamiltonian", "completed", 0.70, 6.0e5, 0.9, (2, 1), (16, 16, 16), EPOCHS),
    ("hamiltonian", "stopped", 0.40, 2.5e5, 0.7, (1, 1), (8, 16, 16), 1),
    ("hamiltonian", "diverged", None, 7.0e5, 1.0, (2, 2), (16, 16, 16), 1),
    ("second_order", "completed", 0.50, 0.5e5, 0.25, (1, 1), (8, 8, 8), EPOCHS),
    ("second_order", "failed", None, 3.5e5, 0.5, (2, 1), (8, 16, 16), 0),
    ("second_order", "infeasible", None, 9.5e5, 0.5, (2, 2), (16, 32, 32), 0),
    ("resnet", "completed", 0.99, 1.0e4, 1.0, (1, 1), (8, 8, 8), 1),  # Ray-style early stop
    ("resnet", "running", None, 2.0e5, 1.0, (1, 1), (8, 8, 8), 0),
]
FRONT = {0, 3, 6, 11}  # S0 (cheapest), P0, P3, H0: the comparable non-dominated trials


def _history(acc: float | None, epochs: int) -> list[dict[str, float]]:
    final = 0.3 if acc is None else acc
    return [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": final * e / epochs,
             "val_loss": 2.1 / e, "val_accuracy": final * e / max(epochs, 1), "seconds": 0.1}
            for e in range(1, epochs + 1)]


def make_synthetic_run(run_dir: Path) -> Path:
    """A run folder with the records of ``SPEC``, written through ``RunFolder`` (no storage:
    every reader reads records)."""
    config = StudyConfig.from_dict({
        "name": "synthetic", "description": "Synthetic trials for the tests.",
        "data": {"name": "digits", "train_limit": 300}, "objectives": ["val_accuracy", "flops"],
        "train": {"epochs": EPOCHS, "batch_size": 64, "optimizer": "adamw", "lr": 0.01,
                  "augment": False, "time_smoothness": 0.0}, "device": "cpu",
    })
    folder = RunFolder(run_dir)
    folder.write_info(study_name=config.name, backend="optuna", config=config.to_dict())
    train = TrainConfig.from_dict({**config.train.to_dict(), "epochs": EPOCHS})
    for number, (family, status, acc, flops, h, depths, widths, trained) in enumerate(SPEC):
        arch = Architecture(family=family, widths=widths, depths=depths, step_size=h,
                            in_channels=1, num_classes=10).to_dict()
        trial = folder.trial(number)
        trial.write_architecture(arch)
        trial.write_record(TrialRecord(
            number=number, status=status, architecture=arch, train=train.to_dict(),
            params={"family": family, "step_size": h},
            failure_reason={"diverged": "non-finite training loss at epoch 2",
                            "failed": "RuntimeError: boom",
                            "infeasible": "breaks a cost limit: flops"}.get(status),
            val_accuracy=acc, epochs_trained=trained, epochs_planned=EPOCHS,
            history=_history(acc, trained), seconds=1.0 + number,
            cost={"params": int(flops / 20), "flops": flops, "latency_ms": flops / 1e5,
                  "latency_batch_ms": flops / 1e4, "memory_bytes": int(flops * 4)}))
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("results") / "run")


@pytest.fixture(scope="module")
def trials(run: Path) -> pd.DataFrame:
    return load_trials(run)


def test_load_trials_has_one_row_per_trial_with_flat_columns(trials: pd.DataFrame) -> None:
    assert list(trials["number"]) == list(range(len(SPEC)))  # the queued trial is left out
    assert list(trials["status"]) == [s[1] for s in SPEC]
    assert list(trials["family"]) == [s[0] for s in SPEC]
    row = trials.iloc[1]
    assert row["depths"] == (2, 1) and row["widths"] == (8, 16, 16)
    assert (row["num_units"], row["total_depth"], row["mean_depth"]) == (2, 3, 1.5)
    assert (row["mean_width"], row["total_width"]) == (12.0, 24.0)  # last connector excluded
    assert row["flops"] == 2.0e5 and row["epochs_planned"] == EPOCHS and row["state"] == "COMPLETE"
    assert row["params_suggested"] == {"family": "parabolic", "step_size": 0.2}
    assert trials.iloc[10]["failure_reason"] == "non-finite training loss at epoch 2"
    assert trials.iloc[10]["state"] == "FAIL" and np.isnan(trials.iloc[10]["val_accuracy"])


def test_comparable_means_completed_at_the_full_budget(trials: pd.DataFrame) -> None:
    expected = [s[1] == "completed" and s[7] == EPOCHS for s in SPEC]
    assert list(trials["comparable"]) == expected
    assert not trials.iloc[14]["comparable"]  # completed, but stopped after 1 of 3 epochs
    assert list(comparable(trials)) == expected


def test_load_run_refuses_folders_that_are_not_runs(tmp_path: Path, run: Path) -> None:
    with pytest.raises(ValueError, match="not a pdenas run folder"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trials(tmp_path)
    info = load_run(run)
    assert info.objectives == ["val_accuracy", "flops"] and info.cost_objective == "flops"


def test_every_backend_is_read_from_the_records_alone(tmp_path: Path, run: Path) -> None:
    """A Ray run folder reads exactly as an Optuna one: the same rows from the same records, and
    reading never opens or creates a storage."""
    import shutil

    copy = tmp_path / "ray-run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "backend": "ray"}))
    pd.testing.assert_frame_equal(load_trials(copy), load_trials(run))
    assert not (copy / "study.db").exists() and not (run / "study.db").exists()


def test_a_newer_or_damaged_run_file_is_refused_with_its_name(tmp_path: Path, run: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ValueError, match=r"run\.json: written by a newer pdenas .*version 99"):
        load_trials(copy)
    (copy / "run.json").write_text(json.dumps(info))
    (copy / "trials" / "3" / "record.json").write_text('{"number": 3, "stat')
    with pytest.raises(ValueError, match=r"trials/3/record\.json: not valid JSON"):
        load_trials(copy)


def test_pareto_ranks_peel_fronts() -> None:
    values = np.array([[0.9, 10], [0.8, 5], [0.7, 20], [0.85, 6], [0.6, 30], [0.9, 10]])
    ranks = pareto_ranks(values, [True, False])
    assert list(ranks) == [1, 1, 2, 1, 3, 1]  # equal points do not dominate each other


def _union_area(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area of the union of the boxes [p, reference], by compressing coordinates."""
    xs = np.unique(np.concatenate([points[:, 0], [reference[0]]]))
    ys = np.unique(np.concatenate([points[:, 1], [reference[1]]]))
    area = 0.0
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            if np.any((points[:, 0] <= x0) & (points[:, 1] <= y0)):
                area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_2d_matches_the_area_of_the_dominated_region() -> None:
    assert hypervolume_2d(np.zeros((0, 2)), (1, 1)) == 0.0
    assert hypervolume_2d([[0, 0]], (1, 1)) == 1.0
    assert hypervolume_2d([[0, 0.5], [0.5, 0], [0.6, 0.6]], (1, 1)) == pytest.approx(0.75)
    assert hypervolume_2d([[2, 0], [0, 2]], (1, 1)) == 0.0  # beyond the reference
    rng = np.random.default_rng(0)
    for _ in range(5):
        points = rng.uniform(0, 1, size=(12, 2))
        assert hypervolume_2d(points, (1.0, 1.2)) == pytest.approx(_union_area(points, (1.0, 1.2)))


def test_leaderboard_ranks_comparable_trials_by_front_then_accuracy(trials: pd.DataFrame) -> None:
    board = leaderboard(trials, ["val_accuracy", "flops"])
    assert set(board["number"]) == {i for i, s in enumerate(SPEC) if s[1] == "completed" and s[7] == EPOCHS}
    front = board[board["pareto_rank"] == 1]
    assert set(front["number"]) == FRONT
    assert list(front["number"]) == [6, 3, 0, 11]  # by accuracy within the front
    assert board["pareto_rank"].is_monotonic_increasing


def test_export_writes_csv_and_parquet_that_read_back(trials: pd.DataFrame, tmp_path: Path) -> None:
    export_trials(trials, tmp_path / "t.parquet")
    export_trials(trials, tmp_path / "t.csv")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert len(back) == len(trials) and list(back["depths"].iloc[1]) == [2, 1]
    assert json.loads(back["params_suggested"].iloc[1]) == {"family": "parabolic", "step_size": 0.2}
    csv = pd.read_csv(tmp_path / "t.csv")
    assert json.loads(csv["widths"].iloc[1]) == [8, 16, 16]
    assert list(csv["status"]) == list(trials["status"])
    assert csv["val_accuracy"].iloc[6] == pytest.approx(0.97)
    with pytest.raises(ValueError, match="use .csv or .parquet"):
        export_trials(trials, tmp_path / "t.xlsx")


def test_histories_come_from_the_trial_records(run: Path) -> None:
    histories = load_histories(run, [5, 9, 99])
    assert set(histories) == {5, 9}  # trial 99 has no record
    assert [h["epoch"] for h in histories[5]] == [1, 2, 3]
    assert histories[5][-1]["val_accuracy"] == pytest.approx(0.95)
    assert len(histories[9]) == 1  # stopped after one epoch


def test_equal_accuracies_are_ranked_by_validation_loss(tmp_path: Path) -> None:
    """On a small validation set many trials reach the same accuracy; the lower validation loss
    (at the best epoch) ranks first instead of the trial number."""
    run = RunFolder(tmp_path / "run")
    config = StudyConfig.from_dict({"name": "ties", "objectives": ["val_accuracy"]})
    run.write_info(study_name="ties", backend="optuna", config=config.to_dict())
    arch = Architecture(family="resnet", widths=(8, 8), depths=(1,), in_channels=1).to_dict()
    for number, loss in enumerate((0.30, 0.10, 0.20)):
        history = [{"epoch": 1, "val_accuracy": 0.9, "val_loss": loss + 0.5},
                   {"epoch": 2, "val_accuracy": 1.0, "val_loss": loss}]
        run.trial(number).write_record(TrialRecord(
            number=number, status="completed", architecture=arch, val_accuracy=1.0,
            epochs_trained=2, epochs_planned=2, history=history, cost={"flops": 1e5}))
    trials = load_trials(run.path)
    assert list(trials["val_loss"]) == [0.30, 0.10, 0.20]
    assert list(leaderboard(trials, ["val_accuracy"])["number"]) == [1, 2, 0]
