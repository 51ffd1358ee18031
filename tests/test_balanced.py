"""Tests for ``backends._balanced.next_family``: a balanced study's next trial goes to the family
that has used the least of the budget so far, in trials, FLOP-epochs or seconds; and for the
study's ``balance_families`` value that chooses the unit."""

from __future__ import annotations

import datetime
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from pdenas.backends._balanced import family_spent, next_family
from pdenas.errors import InputError
from pdenas.study import BALANCE_BY, StudyConfig

FAMILIES = ["parabolic", "hamiltonian", "second_order", "resnet"]
FLOPS = {"parabolic": 2e6, "hamiltonian": 1e6, "second_order": 2e6, "resnet": 4e6}
"""FLOPs per image of each family's candidates (a Hamiltonian step: about half a parabolic one)."""


def trial(family: str, state: TrialState = TrialState.COMPLETE, *, flops: float | None = None,
          epochs: int = 4, planned: int = 4, seconds: float = 0.0, fixed: bool = False,
          started_ago: float | None = None) -> FrozenTrial:
    """A stored trial of ``family`` as the Optuna backend leaves it (the codec's attributes)."""
    attrs: dict[str, Any] = {"epochs_trained": epochs, "epochs_planned": planned,
                             "seconds": seconds, "history": [{}] * epochs}
    if flops is not None:
        attrs["flops"] = flops
    params = {} if fixed else {"family": family}
    made = optuna.trial.create_trial(
        state=state, params=params, value=0.9 if state == TrialState.COMPLETE else None,
        distributions={} if fixed else {"family": CategoricalDistribution(FAMILIES)},
        user_attrs=attrs, system_attrs={"fixed_params": {"family": family}} if fixed else {})
    if started_ago is not None:
        made.datetime_start = (datetime.datetime.now()
                               - datetime.timedelta(seconds=started_ago))
    return made


def test_by_trials_the_family_with_fewest_trials_ties_in_space_order() -> None:
    trials = [trial("parabolic"), trial("hamiltonian"), trial("parabolic")]
    assert next_family(trials, "family", FAMILIES, "trials") == "second_order"
    trials += [trial("second_order"), trial("resnet"), trial("resnet")]
    assert next_family(trials, "family", FAMILIES, "trials") == "hamiltonian"
    assert next_family([], "family", FAMILIES) == "parabolic"  # every tie: the first
    # a queued trial (its family fixed, not yet suggested) counts for its family
    assert next_family([trial("parabolic", TrialState.WAITING, fixed=True)], "family",
                       FAMILIES) == "hamiltonian"


@pytest.mark.parametrize("by", ["flop_epochs", "seconds"])
def test_equal_compute_gives_a_cheaper_family_more_trials(by: str) -> None:
    """A claim loop over finished trials: the compute each family spends stays within one trial's
    of the others', so the family at half the cost per trial gets about twice the trials."""
    trials: list[FrozenTrial] = []
    for _ in range(36):
        family = next_family(trials, "family", FAMILIES, by)
        cost = FLOPS[family]
        trials.append(trial(family, flops=cost, epochs=4, seconds=cost / 1e5))
    spent = family_spent(trials, "family", FAMILIES, by)
    most = max(FLOPS.values()) * (4 if by == "flop_epochs" else 1e-5)
    assert max(spent.values()) - min(spent.values()) <= most
    counts = {f: sum(t.params["family"] == f for t in trials) for f in FAMILIES}
    assert counts["hamiltonian"] >= 2 * counts["parabolic"] - 1
    assert counts["parabolic"] >= 2 * counts["resnet"] - 1
    # by trials the same loop gives every family 9
    by_count: list[FrozenTrial] = []
    for _ in range(36):
        by_count.append(trial(next_family(by_count, "family", FAMILIES, "trials")))
    assert {sum(t.params["family"] == f for t in by_count) for f in FAMILIES} == {9}


def test_flop_epochs_count_the_epochs_trained_and_a_running_trials_planned_ones() -> None:
    stopped = trial("parabolic", TrialState.PRUNED, flops=2e6, epochs=1, planned=8)
    running = trial("hamiltonian", TrialState.RUNNING, flops=1e6, epochs=1, planned=8)
    spent = family_spent([stopped, running], "family", FAMILIES, "flop_epochs")
    assert spent["parabolic"] == 2e6 and spent["hamiltonian"] == 8e6
    assert next_family([stopped, running], "family", FAMILIES[:2], "flop_epochs") == "parabolic"


def test_a_trial_not_measured_yet_counts_as_its_familys_mean() -> None:
    """Workers claiming side by side: a queued or just-claimed trial has no cost yet; it counts
    as its family's mean (of every known trial when its family has none), so the next claim
    goes elsewhere."""
    done = [trial("parabolic", flops=2e6), trial("hamiltonian", flops=1e6),
            trial("hamiltonian", flops=1e6)]
    assert next_family(done, "family", FAMILIES[:2], "flop_epochs") == "parabolic"
    queued = trial("parabolic", TrialState.WAITING, fixed=True)
    spent = family_spent(done + [queued], "family", FAMILIES[:2], "flop_epochs")
    assert spent == {"parabolic": 16e6, "hamiltonian": 8e6}
    assert next_family(done + [queued], "family", FAMILIES[:2], "flop_epochs") == "hamiltonian"
    claimed = trial("resnet", TrialState.RUNNING, planned=0, epochs=0)  # no cost measured yet
    spent = family_spent(done + [claimed], "family", FAMILIES, "flop_epochs")
    assert spent["resnet"] == pytest.approx(16e6 / 3)  # the mean of the three known trials
    assert family_spent([trial("resnet", TrialState.WAITING, fixed=True)], "family", FAMILIES,
                        "seconds")["resnet"] == 0.0


def test_seconds_count_a_running_trial_since_it_started() -> None:
    finished = trial("parabolic", seconds=30.0)
    running = trial("hamiltonian", TrialState.RUNNING, seconds=0.0, started_ago=50.0)
    spent = family_spent([finished, running], "family", FAMILIES[:2], "seconds")
    assert spent["parabolic"] == 30.0 and 49 <= spent["hamiltonian"] <= 60
    assert next_family([finished, running], "family", FAMILIES[:2], "seconds") == "parabolic"


def test_trials_of_other_families_are_left_out_and_a_bad_unit_is_refused() -> None:
    two = ["parabolic", "hamiltonian"]
    assert next_family([trial("resnet"), trial("parabolic")], "family", two) == "hamiltonian"
    with pytest.raises(InputError, match=r"^balance_families: got 'x'; allowed: trials, "
                                         r"flop_epochs, seconds$"):
        next_family([], "family", FAMILIES, "x")


def test_the_study_value_names_the_unit_and_true_reads_as_trials() -> None:
    assert BALANCE_BY == ("trials", "flop_epochs", "seconds")
    for value, unit in [(True, "trials"), (False, None), ("trials", "trials"),
                        ("flop_epochs", "flop_epochs"), ("seconds", "seconds")]:
        config = StudyConfig.from_dict({"name": "s", "balance_families": value})
        assert config.balance_by == unit
        assert StudyConfig.from_dict(config.to_dict()).balance_by == unit  # round trip
    # a run.json written before the unit existed (balance_families: true) still reads
    assert StudyConfig.from_stored({"name": "s", "balance_families": True}).balance_by == "trials"
    with pytest.raises(InputError, match=r"^balance_families: got 'flops'; allowed: true or "
                                         r"false, or what to share equally: trials, flop_epochs, "
                                         r"seconds \(true: trials\)$"):
        StudyConfig.from_dict({"name": "s", "balance_families": "flops"})
