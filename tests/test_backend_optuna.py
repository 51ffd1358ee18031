"""The Optuna adapter: samplers by name, the pruner of ``early_stop``, storages by URL, the exact
budget without placeholder trials, stale trials marked lost, the codec between records and user
attributes, and early stopping within each family of a balanced study."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pdenas.architecture import Architecture
from pdenas.backends._sampling import make_pruner, make_sampler
from pdenas.backends._storage import make_storage
from pdenas.backends._time_model import flops_per_image
from pdenas.backends.optuna import claim_trial, fail_stale, open_study
from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import EarlyStop, StudyConfig


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
    with pytest.raises(ValueError, match="sampler: "):
        make_sampler(config)


@pytest.mark.parametrize("rule", ["none", "median", "asha"])
def test_only_hyperband_is_an_optuna_pruner(rule: str) -> None:
    """pdenas's own rules run in the trial hook: the study gets no pruner for them."""
    config = StudyConfig(name="p", early_stop=EarlyStop(rule=rule))
    assert isinstance(make_pruner(config, 8), optuna.pruners.NopPruner)


def test_hyperband_has_the_same_first_rung_and_reduction() -> None:
    config = StudyConfig(name="p", early_stop=EarlyStop(rule="hyperband", min_epochs=2,
                                                        reduction=3))
    pruner = make_pruner(config, 18)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 18, 3)


def test_the_codec_round_trips_a_record_and_reads_old_words() -> None:
    """``encode`` writes what optuna-dashboard shows (the family, each cost metric a column) and
    ``decode`` reads the record back; "pruned", written by earlier versions, is stopped."""
    from pdenas.backends._codec import decode, encode

    study = optuna.create_study()
    trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["resnet"])})
    record = TrialRecord(number=trial.number, status=TrialStatus.COMPLETED, val_accuracy=0.9,
                         architecture={"family": "resnet", "widths": [8, 16]},
                         params={"family": "resnet"}, epochs_trained=2, epochs_planned=2,
                         history=[{"epoch": 1, "val_accuracy": 0.8},
                                  {"epoch": 2, "val_accuracy": 0.9}],
                         cost={"params": 100, "flops": 2000}, constraints=[-1.0], seconds=3.0,
                         worker="host:1")
    encode(trial, record)
    study.tell(trial, 0.9)
    frozen = study.trials[0]
    assert frozen.user_attrs["family"] == "resnet" and frozen.user_attrs["flops"] == 2000
    assert decode(frozen) == record
    old = study.ask()
    old.set_user_attr("status", "pruned")
    study.tell(old, state=TrialState.PRUNED)
    assert decode(study.trials[1]).status is TrialStatus.STOPPED
    bare = study.ask()  # no attributes: the status from the state
    study.tell(bare, state=TrialState.FAIL)
    assert decode(study.trials[2]).status is TrialStatus.LOST


def test_storage_urls(tmp_path: Path) -> None:
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 's.db'}"), optuna.storages.RDBStorage)
    journal = make_storage(f"journal:{tmp_path / 'j' / 's.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage)
    with pytest.raises(ValueError, match="not a storage URL"):
        make_storage("just-a-name")


def _finish(study: optuna.Study, trial: optuna.Trial, status: str = "completed") -> None:
    trial.set_user_attr("status", status)
    if status == "completed":
        study.tell(trial, [0.5])
    else:
        study.tell(trial, state=TrialState.FAIL)


def test_claim_trial_keeps_the_budget_exact_without_placeholders(tmp_path: Path) -> None:
    study = open_study(StudyConfig(name="budget"), f"sqlite:///{tmp_path / 's.db'}")
    seeds = [{"family": "parabolic"}, {"family": "resnet"}]
    first = claim_trial(study, 3, seeds)
    assert first.number == 0 and study._storage.get_trial_system_attrs(first._trial_id)[
        "fixed_params"] == seeds[0]
    # Only real trials exist: no WAITING placeholders for the rest of the budget.
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    second = claim_trial(study, 3, seeds)
    assert study._storage.get_trial_system_attrs(second._trial_id)["fixed_params"] == seeds[1]
    third = claim_trial(study, 3, seeds)
    assert "fixed_params" not in study._storage.get_trial_system_attrs(third._trial_id)
    assert claim_trial(study, 3, seeds) is None  # three running trials use the budget
    for trial in (first, second, third):
        _finish(study, trial)
    assert claim_trial(study, 3, seeds) is None  # a rerun with the same budget runs nothing
    assert claim_trial(study, 4, seeds).number == 3  # a larger budget tops up
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_queued_copy_is_claimed_first(tmp_path: Path) -> None:
    study = open_study(StudyConfig(name="copy"), f"sqlite:///{tmp_path / 's.db'}")
    trial = claim_trial(study, 2)
    _finish(study, trial, "interrupted")  # given back: it does not use the budget
    study.enqueue_trial({"family": "resnet"}, user_attrs={"status": "queued"})
    again = claim_trial(study, 1)
    assert again.number == 1
    assert study._storage.get_trial_system_attrs(again._trial_id)["fixed_params"] == {
        "family": "resnet"}


def test_fail_stale_marks_the_dead_workers_record_lost(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=1,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    study = optuna.create_study(study_name="stale", storage=storage)
    trial = claim_trial(study, 2)
    storage.record_heartbeat(trial._trial_id)
    run.trial(trial.number).write_record(TrialRecord(number=trial.number))
    import time

    time.sleep(2.5)
    assert fail_stale(study, run) == [0]
    assert run.trial(0).read_record().status is TrialStatus.LOST
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert claim_trial(study, 1).number == 1  # the retry: the lost trial used no budget


def test_open_study_refuses_other_objectives(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(StudyConfig(name="o"), url)
    with pytest.raises(ValueError, match="objectives"):
        open_study(StudyConfig(name="o", objectives=("val_accuracy", "flops")), url)


def test_a_trial_whose_worker_died_does_not_use_up_the_budget(tmp_path: Path) -> None:
    study = open_study(StudyConfig(name="lost"), f"sqlite:///{tmp_path / 's.db'}")
    for status in ("running", "completed", "diverged"):
        trial = study.ask()
        # "completed" with state FAIL: the worker died after recording, before telling Optuna
        trial.set_user_attr("status", status)
        study.tell(trial, state=TrialState.FAIL)
    assert claim_trial(study, 1) is None  # the diverged candidate used up its unit
    assert claim_trial(study, 2).number == 3
    assert claim_trial(study, 2) is None


def test_an_interrupted_first_trial_does_not_skip_a_family(tmp_path: Path) -> None:
    """``cover_families``: every family gets its first trial even when one of them was
    interrupted and queued again (the copy used to take the next family's place)."""
    families = ["parabolic", "hamiltonian", "second_order", "resnet"]
    first = [{"family": f} for f in families]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for number in range(6):
        trial = claim_trial(study, 5, first)
        seen.append(trial.suggest_categorical("family", families))
        if number == 1:  # interrupted: its slot given back as a queued copy, as on Ctrl-C
            study.enqueue_trial(trial.params, user_attrs={"status": "queued"})
            trial.set_user_attr("status", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("status", "completed")
            study.tell(trial, 0.5)
    assert seen[:5] == ["parabolic", "hamiltonian", "hamiltonian", "second_order", "resnet"]
    assert claim_trial(study, 5, first) is None  # 5 used: the interrupted one does not count


def test_start_with_comes_first_once_and_balanced_families_fill_in(tmp_path: Path) -> None:
    from pdenas.backends._balanced import FamilyBalancedSampler

    families = ["parabolic", "hamiltonian", "resnet"]
    sampler = FamilyBalancedSampler(lambda: optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}",
                                sampler=sampler)
    first = [{"family": "resnet", "step_size": 0.5}, {"step_size": 0.25}]
    seen = []
    for _ in range(6):
        trial = claim_trial(study, 6, first, balance=("family", families))
        seen.append((trial.suggest_categorical("family", families),
                     trial.suggest_float("step_size", 0.1, 1.0)))
        study.tell(trial, 0.5)
    assert seen[:2] == [("resnet", 0.5), ("parabolic", 0.25)]  # the second given the balanced family
    assert [family for family, _ in seen[2:]] == ["hamiltonian", "parabolic", "hamiltonian", "resnet"]
    assert not {0.5, 0.25} & {h for _, h in seen[2:]}  # each entry once: a top-up samples
    claim_trial(study, 7, first, balance=("family", families))
    assert study.get_trials()[-1].system_attrs["fixed_params"] == {"family": "parabolic"}


def test_balanced_claims_take_the_families_in_turn_with_their_own_sampler(tmp_path: Path) -> None:
    from pdenas.backends._balanced import FamilyBalancedSampler, _FamilyView, check_balanced

    families = ["parabolic", "hamiltonian", "resnet"]
    sampler = FamilyBalancedSampler(lambda: optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(study_name="b", storage=f"sqlite:///{tmp_path / 's.db'}",
                                sampler=sampler)
    seen = []
    for _ in range(7):
        trial = claim_trial(study, 7, balance=("family", families))
        seen.append(trial.suggest_categorical("family", families))
        trial.suggest_float("step_size", 0.1, 1.0)
        study.tell(trial, 0.5)
    assert seen == families * 2 + families[:1]  # equal shares, in the space's order
    assert set(sampler._samplers) == set(families)  # one sampler state per family
    view = _FamilyView(study, "resnet", "family")
    assert [t.number for t in view.get_trials()] == [2, 5]  # a family's sampler sees its own
    with pytest.raises(ValueError, match="balance_families: not with the nsga2 sampler"):
        check_balanced("nsga2")


def _family_curves(study: optuna.Study, family: str, curves: list[list[float]]) -> None:
    """Finished trials of ``family`` with these validation curves (reported and in history)."""
    for curve in curves:
        trial = _running(study, family, curve)
        trial.set_user_attr("history", [{"epoch": i + 1, "val_accuracy": a}
                                        for i, a in enumerate(curve)])
        trial.set_user_attr("latency_ms", 1.0)
        study.tell(trial, curve[-1] if len(study.directions) == 1 else [curve[-1], 1.0])


def _running(study: optuna.Study, family: str, curve: list[float]) -> optuna.Trial:
    """A running trial of ``family`` that has reported ``curve``."""
    study.enqueue_trial({"family": family})  # fixed, as claim_trial fixes it
    trial = study.ask()
    trial.suggest_categorical("family", ["parabolic", "resnet"])
    if len(study.directions) == 1:  # Optuna takes reports of single-objective trials only
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
    return trial


def test_balanced_early_stopping_measures_a_trial_against_its_own_family_only() -> None:
    """A slow-starting family is not stopped for being behind another family at an epoch, but
    still is for being behind its own (the trial hook's peers: the family's view)."""
    from pdenas.backends._balanced import family_view
    from pdenas.backends.optuna import _Hooks

    config = StudyConfig(name="b", early_stop=EarlyStop(rule="median", min_epochs=1))
    study = optuna.create_study(direction="maximize")
    _family_curves(study, "resnet", [[0.8, 0.9], [0.85, 0.92], [0.9, 0.95]])
    _family_curves(study, "parabolic", [[0.3, 0.6], [0.4, 0.7], [0.35, 0.65]])

    def stops(first: float, balanced: bool) -> bool:
        trial = _running(study, "parabolic", [])
        peers = family_view(study, "parabolic") if balanced else study
        record = TrialRecord(number=trial.number, epochs_trained=1, epochs_planned=4,
                             history=[{"epoch": 1, "val_accuracy": first}])
        return _Hooks(study, trial, config, peers).on_epoch(record, {"val_accuracy": first})

    assert stops(0.38, balanced=False)  # below the median of all six (0.6)
    assert not stops(0.38, balanced=True)  # above its own family's median (0.35)
    assert stops(0.32, balanced=True)  # below its own family's median


def test_a_balanced_study_stops_early_within_each_family(tiny_study, tmp_path: Path) -> None:
    """The Optuna backend of a balanced study measures a trial against its family's trials (its
    own rules need no Optuna pruner); Hyperband stays shared."""
    import torch

    from pdenas.backends._base import DataShape
    from pdenas.backends.optuna import OptunaBackend
    from pdenas.data import load_data
    from pdenas.space import SearchSpace

    def backend(**overrides: object) -> OptunaBackend:
        config = StudyConfig.load(tiny_study(balance_families=True, sampler={"name": "tpe"},
                                             **overrides))
        run = RunFolder(tmp_path / f"run-{len(overrides)}-{len(str(overrides))}")
        run.claim(config.name)
        data = load_data(config.data)
        engine = OptunaBackend(config, SearchSpace.load(config.space_path()), run,
                               DataShape.of(data), torch.device("cpu"), quiet=True)
        engine.prepare(data)
        return engine

    multi = backend(objectives=["val_accuracy", "latency_ms"],
                    early_stop={"rule": "mo_asha", "min_epochs": 1})
    assert isinstance(multi.study.pruner, optuna.pruners.NopPruner)
    _family_curves(multi.study, "resnet", [[0.9], [0.92], [0.95]])
    _family_curves(multi.study, "parabolic", [[0.3]])
    assert [t.number for t in multi._peers("parabolic").get_trials()] == [3]  # its family only
    hyperband = backend(early_stop={"rule": "hyperband"})
    assert isinstance(hyperband.study.pruner, optuna.pruners.HyperbandPruner)  # left shared


def test_cost_limits_reach_the_sampler_as_trial_constraints(tiny_study, tmp_path: Path) -> None:
    """The candidates' constraint values are set on the Optuna trials (``set_constraint``, which
    TPE, NSGA-II and GP read): infeasible ones positive, the others at most 0; no deprecated
    ``constraints_func`` is passed."""
    import warnings

    import pdenas

    study = tiny_study(constraints={"max_params": 8000}, sampler={"name": "tpe"}, n_trials=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*constraints_func.*")
        run = pdenas.search(study, out=tmp_path / "run", progress=False)
    stored = optuna.load_study(study_name=run.info["study_name"],
                               storage=f"sqlite:///{run.path / 'study.db'}").get_trials()
    assert len(stored) == 4
    statuses = {RunFolder(run.path).trial(t.number).read_record().status for t in stored}
    assert TrialStatus.INFEASIBLE in statuses and len(statuses) > 1, statuses
    for trial in stored:
        record = RunFolder(run.path).trial(trial.number).read_record()
        assert list(trial.constraints.values()) == pytest.approx(record.constraints)
        assert (record.status is TrialStatus.INFEASIBLE) == any(v > 0 for v in record.constraints)


def test_a_search_out_of_time_stops_when_its_cheapest_candidate_cannot_finish(
        tiny_study, tmp_path: Path) -> None:
    """With 30 s left and every candidate needing many minutes (5,000 epochs), the first is
    measured and skipped with the prediction in its reason, and the search stops before its
    time is up: even the space's cheapest candidate would not fit, which two calibrations of
    its own confirmed (one calibration is not enough to give up on the space).
    A skipped trial uses none of the budget, and the sampler is told through a violated
    constraint."""
    import time

    import pdenas
    from pdenas.backends.optuna import counts_toward_budget

    study = tiny_study(train={"epochs": 5000, "batch_size": 32, "augment": False}, n_trials=10)
    start = time.monotonic()
    run = pdenas.search(study, out=tmp_path / "run", progress=False, timeout=30)
    assert time.monotonic() - start < 30  # it gave up before its deadline
    records = RunFolder(run.path).records()
    assert records and all(r.status is TrialStatus.SKIPPED for r in records), records
    assert all("more than the search has left" in r.failure_reason for r in records)
    assert all(r.epochs_trained == 0 and not r.history for r in records)
    built = [r for r in records if r.cost and "predicted_seconds" in r.cost]  # calibrated
    # Both families cost the same FLOPs here, so each is as cheap as the space's cheapest.
    assert 2 <= len(built) <= 4 and built[0].number == 0, records
    cheapest = min(flops_per_image(Architecture.from_dict({**records[0].architecture,
                                                           "family": family}), (8, 8))
                   for family in ("parabolic", "resnet"))  # the space's two candidates' costs
    calibrations = collections.Counter((r.architecture["family"], r.cost["flops"]) for r in built)
    assert any(n >= 2 and flops == cheapest for (_, flops), n in calibrations.items()), built
    stored = optuna.load_study(study_name=run.config.name,
                               storage=f"sqlite:///{run.path / 'study.db'}").trials
    assert [t.state for t in stored] == [TrialState.PRUNED] * len(records)
    assert all(t.constraints["time_left"] > 0 for t in stored)  # samplers that read them learn
    assert not any(counts_toward_budget(t) for t in stored)


@pytest.mark.slow
def test_a_sampler_that_proposes_only_what_cannot_fit_still_trains_what_can(
        tiny_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampler that always asks for 4,000 epochs (minutes a trial) with 30 s left: its draws
    are skipped (predicted before building, not counted), the search draws from the part of the
    space that fits (2 epochs) and trains those until the time is spent."""
    import time

    import pdenas
    from pdenas.backends import optuna as backend

    path = tiny_study(n_trials=100)
    space = tmp_path / "tiny_space.yaml"  # the epochs become a dimension of the space
    space.write_text(space.read_text().replace("  optimizer: adamw",
                                               "  optimizer: adamw\n  epochs: [2, 4000]"))
    monkeypatch.setattr(backend, "make_sampler", lambda config, grid=None, stored=None:
                        optuna.samplers.PartialFixedSampler(
                            {"epochs": 4000}, optuna.samplers.RandomSampler(seed=stored)))
    start = time.monotonic()
    run = pdenas.search(path, out=tmp_path / "run", progress=False, timeout=30)
    elapsed = time.monotonic() - start
    records = RunFolder(run.path).records()
    trained = [r for r in records if r.status is TrialStatus.COMPLETED]
    skipped = [r for r in records if r.status is TrialStatus.SKIPPED]
    assert len(trained) >= 2 and {r.train["epochs"] for r in trained} == {2}, records
    long = [r for r in skipped if r.train["epochs"] == 4000]
    assert len(long) >= 3 and all(not r.history for r in skipped)
    # A draw that fits is skipped only at the end, when the search has less time left than it
    # needs (on a loaded machine).
    for record in skipped:
        if record.train["epochs"] == 2:
            left = float(re.search(r"the search has left \(([\d,.]+) s\)",
                                   record.failure_reason).group(1).replace(",", ""))
            assert left < 0.5 * 30, record.failure_reason
    assert len(trained) + len(skipped) == len(records)
    assert elapsed >= 0.7 * 30, elapsed  # it went on until the time was spent


@pytest.mark.parametrize(("by", "family"), [("trials", "resnet"), ("flop_epochs", "parabolic")])
def test_a_balanced_claim_goes_to_the_family_that_used_least_of_the_budget(
        tmp_path: Path, by: str, family: str) -> None:
    """resnet has one trial of 100 MFLOPs x 4 epochs, parabolic two of 1 MFLOP x 4: by trial
    count the next trial is resnet's, by FLOP-epochs (equal compute) parabolic's."""
    from pdenas.backends._codec import encode

    study = open_study(StudyConfig(name="b"), f"sqlite:///{tmp_path / 's.db'}")
    for name, flops in (("resnet", 1e8), ("parabolic", 1e6), ("parabolic", 1e6)):
        study.enqueue_trial({"family": name})
        trial = study.ask()
        assert trial.suggest_categorical("family", ["parabolic", "resnet"]) == name
        encode(trial, TrialRecord(number=trial.number, status=TrialStatus.COMPLETED,
                                  cost={"flops": flops}, epochs_trained=4, epochs_planned=4))
        study.tell(trial, 0.5)
    claimed = claim_trial(study, 10, balance=("family", ["parabolic", "resnet"]), balance_by=by)
    assert claimed.suggest_categorical("family", ["parabolic", "resnet"]) == family
