"""The Optuna adapter: samplers and pruners by name, storages by URL, the queued budget, and
pdenas's own early-stopping rule for multi-objective studies."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pdenas.backends.optuna import (_EarlyStopRule, make_pruner, make_sampler, make_storage,
                                    open_study, top_up)
from pdenas.study import StudyConfig


@pytest.mark.parametrize(
    ("name", "cls"),
    [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
     ("nsga2", optuna.samplers.NSGAIISampler), ("cmaes", optuna.samplers.CmaEsSampler),
     ("gp", optuna.samplers.GPSampler), ("grid", optuna.samplers.GridSampler)],
)
def test_samplers_by_name(name: str, cls: type) -> None:
    config = StudyConfig(name="s", sampler=name)
    sampler = make_sampler(config, grid=lambda: {"family": ["parabolic", "resnet"]})
    assert isinstance(sampler, cls)


def test_bad_sampler_option_is_a_value_error() -> None:
    config = StudyConfig(name="s", sampler="tpe", sampler_options={"n_startup": 3})
    with pytest.raises(ValueError, match="sampler_options"):
        make_sampler(config)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner),
     ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
     ("none", optuna.pruners.NopPruner)],
)
def test_pruners_by_name(name: str, cls: type) -> None:
    assert isinstance(make_pruner(StudyConfig(name="p", pruner=name)), cls)


def test_multi_objective_studies_get_no_optuna_pruner() -> None:
    config = StudyConfig(name="p", pruner="median", objectives=("val_accuracy", "flops"))
    assert isinstance(make_pruner(config), optuna.pruners.NopPruner)


def test_storage_urls(tmp_path: Path) -> None:
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 's.db'}"), optuna.storages.RDBStorage)
    journal = make_storage(f"journal:{tmp_path / 'j' / 's.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage)
    with pytest.raises(ValueError, match="not a storage URL"):
        make_storage("just-a-name")


def test_top_up_queues_the_budget_once_and_family_seeds_first(tmp_path: Path) -> None:
    config = StudyConfig(name="budget")
    study = open_study(config, f"sqlite:///{tmp_path / 's.db'}")
    seeds = [{"family": "parabolic"}, {"family": "resnet"}]
    assert top_up(study, 5, seeds) == 5
    assert top_up(study, 5, seeds) == 0  # a rerun with the same budget queues nothing
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs.get("fixed_params") for t in waiting[:2]] == seeds
    assert all(not t.system_attrs.get("fixed_params") for t in waiting[2:])
    assert top_up(study, 7, seeds) == 2  # a larger budget tops up, without new seeds
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 7


def test_open_study_refuses_other_objectives(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(StudyConfig(name="o"), url)
    with pytest.raises(ValueError, match="objectives"):
        open_study(StudyConfig(name="o", objectives=("val_accuracy", "flops")), url)


def _study_with_histories(curves: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr("history", [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(curve)])
        study.tell(trial, [curve[-1], 1.0])
    return study


def test_early_stop_rule_uses_a_percentile_after_warmup() -> None:
    study = _study_with_histories([[0.1, 0.2, 0.3], [0.1, 0.4, 0.5], [0.1, 0.6, 0.7], [0.1, 0.8, 0.9]])
    median = _EarlyStopRule(study, warmup=1)
    assert median(1, 0.0) is False  # warm-up: never stop
    assert median(2, 0.49) is True  # median at epoch 2 is 0.5
    assert median(2, 0.51) is False
    quarter = _EarlyStopRule(study, warmup=1, percentile=25)
    assert quarter(2, 0.49) is False  # 25th percentile at epoch 2 is 0.35
    assert quarter(2, 0.34) is True


def test_early_stop_rule_waits_for_enough_trials() -> None:
    study = _study_with_histories([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]])
    assert _EarlyStopRule(study, warmup=0)(1, 0.0) is False  # 3 < min_trials


def test_a_trial_whose_worker_died_does_not_use_up_the_budget(tmp_path: Path) -> None:
    study = open_study(StudyConfig(name="lost"), f"sqlite:///{tmp_path / 's.db'}")
    for status in ("running", "completed", "diverged"):
        trial = study.ask()
        # "completed" with state FAIL: the worker died after recording, before telling Optuna
        trial.set_user_attr("status", status)
        study.tell(trial, state=TrialState.FAIL)
    assert top_up(study, 3) == 2  # only the diverged candidate used up its unit
