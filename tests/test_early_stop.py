"""MO-ASHA, the multi-objective early stopping that keeps the Pareto front: the rung rule, the
Optuna rule over a study's trials, and the Ray Tune scheduler."""

from __future__ import annotations

import types

import optuna
import pytest

from pdenas.backends._early_stop import is_rung, mo_asha_keeps
from pdenas.backends.optuna import EarlyStopRule, MOASHARule
from pdenas.runs import TrialRecord
from pdenas.study import StudyConfig

FINISHED = [(0.90, 4e5), (0.88, 3e5), (0.92, 6e5), (0.85, 2e5), (0.91, 5e5)]
"""(accuracy at the rung, FLOPs) of trials that reached it."""


def test_rungs_are_grace_times_powers_of_eta() -> None:
    assert [e for e in range(1, 30) if is_rung(e, 3, 3)] == [3, 9, 27]
    assert [e for e in range(1, 20) if is_rung(e, 1, 2)] == [1, 2, 4, 8, 16]


def test_the_cheapest_candidate_goes_on_whatever_its_accuracy() -> None:
    assert mo_asha_keeps((0.30, 1e5), FINISHED, eta=3)  # cheaper than all: on the front
    assert not mo_asha_keeps((0.30, 7e5), FINISHED, eta=3)  # dominated by all
    assert mo_asha_keeps((0.95, 9e5), FINISHED, eta=3)  # most accurate: the front's other end
    # A front larger than the share that goes on keeps its ends (crowding distance).
    front = [(0.5 + 0.1 * k, 1e5 * (k + 1)) for k in range(4)]  # four mutually non-dominated
    assert mo_asha_keeps((0.4, 0.5e5), front, eta=3)  # the new cheap end of a front of five
    # A middle point of a front of five: ceil(5 / 3) = 2 go on, the two ends.
    assert not mo_asha_keeps((0.62, 2.1e5), front, eta=3)
    assert mo_asha_keeps((0.1, 1e9), [], eta=3, min_trials=4)  # too few trials: never stop


def _study(points: list[tuple[float, float]], epochs: int = 4) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, flops in points:
        trial = study.ask()
        history = [{"epoch": e, "val_accuracy": accuracy * e / epochs} for e in range(1, epochs + 1)]
        trial.set_user_attr("history", history)
        trial.set_user_attr("flops", flops)
        study.tell(trial, [accuracy, flops])
    return study


def test_a_cheaper_candidate_is_not_stopped_for_accuracy_alone() -> None:
    """At its rung a candidate far below the others' accuracy but cheaper than every finished
    trial goes on under MO-ASHA; the accuracy-only percentile rule stops it."""
    study = _study(FINISHED)
    config = StudyConfig(name="mo", objectives=("val_accuracy", "flops"), early_stop_warmup=0,
                         early_stop_reduction=2)
    rule = MOASHARule(study, config)  # rungs at epochs 1, 2, 4
    cheap = TrialRecord(number=99, val_accuracy=0.05, cost={"flops": 1e4}, epochs_planned=8)
    costly = TrialRecord(number=98, val_accuracy=0.05, cost={"flops": 1e6}, epochs_planned=8)
    assert rule(2, cheap) is False
    assert rule(2, costly) is True
    assert rule(3, costly) is False  # not a rung
    assert rule(4, TrialRecord(number=97, val_accuracy=0.05, cost={"flops": 1e6},
                               epochs_planned=4)) is False  # its last epoch: nothing to save
    assert EarlyStopRule(study, warmup=0)(2, 0.05) is True  # accuracy alone would stop it


def test_the_ray_scheduler_stops_and_keeps_as_the_rule_says() -> None:
    from ray.tune.schedulers import TrialScheduler

    from pdenas.backends.ray import MOASHAScheduler

    scheduler = MOASHAScheduler("flops", grace=1, eta=2, min_trials=2)

    def result(trial_id: str, accuracy: float, flops: float, epoch: int = 1):
        return scheduler.on_trial_result(None, types.SimpleNamespace(trial_id=trial_id),
                                         {"epoch": epoch, "val_accuracy": accuracy,
                                          "flops": flops, "epochs_planned": 4})

    assert result("a", 0.9, 5e5) == TrialScheduler.CONTINUE  # alone at the rung
    assert result("b", 0.2, 9e5) == TrialScheduler.STOP  # dominated by a
    assert result("c", 0.1, 1e4) == TrialScheduler.CONTINUE  # cheaper than all
    assert result("a", 0.95, 5e5, epoch=3) == TrialScheduler.CONTINUE  # not a rung


@pytest.mark.parametrize(("change", "needle"), [
    ({"early_stop_rule": "median"}, "early_stop_rule: got 'median'; allowed: mo_asha"),
    ({"early_stop_reduction": 1}, "early_stop_reduction: got 1; allowed: an integer from 2"),
])
def test_bad_early_stop_options_name_the_key(change: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        StudyConfig.from_dict({"name": "x", **change})
