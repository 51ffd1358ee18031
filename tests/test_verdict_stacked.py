"""Tests for the verdict's stacked retraining: a look's seeds of one candidate trained as one
stacked model (``pdenas.stacked.fit_seeds``) give the networks that separate ``fit`` runs give,
seed by seed; candidates that cannot be stacked train separately."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_compare import single_thread  # noqa: F401  (autouse: one thread)

from pdenas.architecture import Architecture
from pdenas.compare._retrain import RETRAIN_SEED, _train_seeds
from pdenas.compare._verdict import Candidate, retrain_network, retrain_seeds
from pdenas.data import DataConfig, load_data
from pdenas.train import TrainConfig


@pytest.fixture(scope="module")
def digits() -> object:
    return load_data(DataConfig(name="digits", train_limit=240), device="cpu")


def _candidate(**arch: object) -> Candidate:
    architecture = Architecture(**{"family": "parabolic", "widths": (8, 8, 8), "depths": (1, 2),
                                   "step_size": 0.5, "in_channels": 1, "num_classes": 10, **arch})
    # The contiguous memory format the stacked step runs in, so that both paths round alike.
    train = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=0.01, time_smoothness=0.0,
                        augment=True, clip_weights=1.0, channels_last=False)
    return Candidate(family=architecture.family, trial=7, architecture=architecture, train=train,
                     search_val=0.5, cost=1e5)


def test_stacked_seeds_give_the_separate_runs_results(digits: object) -> None:
    candidate = _candidate()
    stacked = retrain_seeds(candidate, digits, [2, 3, 4], "cpu")
    separate = [retrain_network(candidate, digits, s, "cpu") for s in (2, 3, 4)]
    assert [row["stacked"] for row, _ in stacked] == [3, 3, 3]
    assert [row["seed"] for row, _ in stacked] == [2, 3, 4]
    for (row, correct), (alone, correct_alone) in zip(stacked, separate):
        assert alone["stacked"] == 1 and row["status"] == alone["status"] == "completed"
        assert row["epochs"] == alone["epochs"] == 2
        # per-seed accuracies: equal up to floating-point rounding (at most one image of 360)
        assert row["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1.5 / len(correct))
        assert row["val_accuracy"] == pytest.approx(alone["val_accuracy"], abs=1.5 / 360)
        assert row["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-3)
        assert np.mean(correct != correct_alone) <= 1.5 / len(correct)
    # the seeds are paired across candidates, not copies of each other
    assert not np.array_equal(stacked[0][1], stacked[1][1])


def test_what_cannot_be_stacked_or_one_seed_trains_separately(digits: object) -> None:
    reversible = _candidate(reversible=True, family="hamiltonian")
    rows = retrain_seeds(reversible, digits, [0, 1], "cpu")
    assert [row["stacked"] for row, _ in rows] == [1, 1]
    assert all(row["status"] == "completed" for row, _ in rows)
    one = retrain_seeds(_candidate(), digits, [5], "cpu")
    assert one[0][0]["stacked"] == 1
    assert one[0][0]["test_accuracy"] == retrain_network(_candidate(), digits, 5, "cpu")[0][
        "test_accuracy"]


def test_retrain_top_seeds_stacked_keep_their_best_epoch(digits: object) -> None:
    """``--retrain-top``'s seeds train stacked too, each keeping its best-validation epoch."""
    candidate = _candidate()
    runs = _train_seeds(candidate.architecture, digits, candidate.train, "cpu", 2)
    assert all(failure is None for _, _, failure in runs)
    import torch

    from pdenas.network import build_model
    from pdenas.train import fit

    for s, (_, result, _) in enumerate(runs):
        torch.manual_seed(RETRAIN_SEED + s)
        alone = fit(build_model(candidate.architecture), digits, candidate.train, "cpu",
                    seed=RETRAIN_SEED + s)
        assert result.best_epoch == alone.best_epoch
        assert result.best_val_accuracy == pytest.approx(alone.best_val_accuracy, abs=1.5 / 360)
    assert dataclasses.is_dataclass(runs[0][1])
