"""The study's ``early_stop`` rules: the pure rules over learning curves (percentile, ASHA,
MO-ASHA at rungs ``min_epochs * reduction**k``), their Optuna adapter (the trial hook) and their
Ray Tune scheduler, which stop the same trials when fed the same curves in the same order; the
``early_stop:`` section's checks and the one line a removed key gets."""

from __future__ import annotations

import math
import random
import types

import optuna
import pytest

from pdenas.backends._early_stop import Curve, asha_keeps, is_rung, mo_asha_keeps, stops
from pdenas.backends._sampling import directions
from pdenas.backends.optuna import _Hooks, tell
from pdenas.runs import TrialRecord, TrialStatus
from pdenas.study import EarlyStop, StudyConfig

FINISHED = [(0.90, 4e5), (0.88, 3e5), (0.92, 6e5), (0.85, 2e5), (0.91, 5e5)]
"""(accuracy at the rung, FLOPs) of trials that reached it."""


def test_rungs_are_min_epochs_times_powers_of_the_reduction() -> None:
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


def test_asha_keeps_the_best_share_of_a_rung() -> None:
    others = [0.9, 0.8, 0.7, 0.6]  # five at the rung with eta 2: the best three go on
    assert asha_keeps(0.75, others, eta=2)
    assert not asha_keeps(0.65, others, eta=2)
    assert asha_keeps(0.7, others, eta=2)  # a tie with the last one kept goes on
    assert asha_keeps(0.0, others, eta=2, min_trials=6)  # too few trials: never stop


def _curve(accuracies: list[float], cost: float = math.inf) -> Curve:
    return Curve(tuple(accuracies), cost)


def test_the_rules_look_only_from_min_epochs_on_and_never_at_the_last_epoch() -> None:
    others = [_curve([0.5 + 0.1 * k] * 8, 1e5 * (k + 1)) for k in range(4)]
    low = [0.1] * 8
    percentile = EarlyStop(rule="median", min_epochs=2)
    asha = EarlyStop(rule="asha", min_epochs=2, reduction=2)  # rungs at 2, 4, 8
    assert [e for e in range(1, 9) if stops(percentile, _curve(low[:e]), others, 8)] == list(
        range(2, 8))
    assert [e for e in range(1, 9) if stops(asha, _curve(low[:e]), others, 8)] == [2, 4]
    assert not stops(EarlyStop(rule="none"), _curve(low), others, 9)
    assert not stops(percentile, _curve(low[:3]), others[:2], 8)  # three trials < MIN_TRIALS
    # The accuracy at an epoch is the best so far: a dip after a good epoch does not stop it.
    assert not stops(percentile, _curve([0.9, 0.1]), others, 8)


def test_percentile_compares_with_the_others_at_the_same_epoch() -> None:
    others = [_curve([0.1, a]) for a in (0.2, 0.4, 0.6, 0.8)]  # median 0.5, quarter 0.35
    median = EarlyStop(rule="median", min_epochs=1)
    quarter = EarlyStop(rule="median", min_epochs=1, percentile=25)
    assert stops(median, _curve([0.1, 0.49]), others, 8)
    assert not stops(median, _curve([0.1, 0.51]), others, 8)
    assert not stops(quarter, _curve([0.1, 0.49]), others, 8)
    assert stops(quarter, _curve([0.1, 0.34]), others, 8)
    # Trials that did not reach the epoch are left out (three left: too few).
    assert not stops(median, _curve([0.1, 0.1, 0.1]), others[:3] + [_curve([0.9] * 3)], 8)


# --- the backends' adapters ------------------------------------------------------------------------
def _ray() -> types.ModuleType:
    """The Ray backend's module (its scheduler needs no Ray runtime, only the library)."""
    pytest.importorskip("ray.tune")
    import pdenas.backends.ray

    return pdenas.backends.ray


def _config(rule: str, objectives: tuple[str, ...] = ("val_accuracy",), **early: int
            ) -> StudyConfig:
    return StudyConfig(name="es", objectives=objectives,
                       early_stop=EarlyStop(rule=rule, **early))


class _OptunaFeed:
    """Feeds curves to the Optuna backend's trial hook, one epoch at a time, as a search does."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.study = optuna.create_study(directions=directions(config))
        self.trials: dict[int, tuple[optuna.Trial, TrialRecord, _Hooks]] = {}

    def epoch(self, key: int, accuracy: float, planned: int, cost: float) -> bool:
        if key not in self.trials:
            trial = self.study.ask()
            record = TrialRecord(number=trial.number, epochs_planned=planned,
                                 cost={"flops": cost})
            hooks = _Hooks(self.study, trial, self.config)
            hooks.on_cost(record)
            self.trials[key] = (trial, record, hooks)
        trial, record, hooks = self.trials[key]
        record.history.append({"epoch": len(record.history) + 1, "val_accuracy": accuracy})
        record.epochs_trained = len(record.history)
        record.val_accuracy = max(h["val_accuracy"] for h in record.history)
        stop = hooks.on_epoch(record, {"val_accuracy": accuracy})
        if stop or record.epochs_trained == planned:
            record.status = TrialStatus.STOPPED if stop else TrialStatus.COMPLETED
            tell(self.study, trial, record, self.config.objectives)
        return stop


class _RayFeed:
    """Feeds the same curves to the Ray backend's scheduler as Tune results (no Ray runtime)."""

    def __init__(self, config: StudyConfig) -> None:
        EarlyStopScheduler = _ray().EarlyStopScheduler
        self.scheduler = EarlyStopScheduler(
            config.early_stop, config.objectives[1] if config.multi_objective else None)
        self.epochs: dict[int, int] = {}

    def epoch(self, key: int, accuracy: float, planned: int, cost: float) -> bool:
        trial = types.SimpleNamespace(trial_id=f"t{key}")
        epoch = self.epochs[key] = self.epochs.get(key, 0) + 1
        result = {"epoch": epoch, "val_accuracy": accuracy, "epochs_planned": planned,
                  "flops": cost, "status": "running"}
        stop = self.scheduler.on_trial_result(None, trial, result) == self.scheduler.STOP
        if not stop and epoch == planned:
            self.scheduler.on_trial_complete(None, trial, {**result, "status": "completed"})
        return stop


def _curves(seed: int, n: int = 12, epochs: int = 8) -> list[tuple[list[float], float]]:
    """Noisy rising learning curves, each with a cost."""
    rng = random.Random(seed)
    curves = []
    for _ in range(n):
        ceiling, rate = rng.uniform(0.5, 0.98), rng.uniform(0.2, 0.9)
        curve = [min(1.0, ceiling * (1 - (1 - rate) ** e) + rng.gauss(0, 0.03))
                 for e in range(1, epochs + 1)]
        curves.append((curve, rng.uniform(1e4, 1e6)))
    return curves


def _orders(n: int, epochs: int) -> dict[str, list[tuple[int, int]]]:
    """(trial, epoch) in the order results arrive: one trial after another; four trials side
    by side, started one epoch apart (as a search with several workers)."""
    sequential = [(k, e) for k in range(n) for e in range(epochs)]
    interleaved = sorted(((k, e) for k in range(n) for e in range(epochs)),
                         key=lambda ke: (ke[0] // 4, ke[1] + ke[0] % 4, ke[0]))
    return {"sequential": sequential, "interleaved": interleaved}


def _feed(feed: _OptunaFeed | _RayFeed, curves: list[tuple[list[float], float]],
          order: list[tuple[int, int]]) -> dict[int, int | None]:
    """Each trial's epoch it stopped at (None: trained all its epochs)."""
    stopped: dict[int, int | None] = {k: None for k in range(len(curves))}
    for key, index in order:
        if stopped[key] is not None:
            continue  # a stopped trial reports nothing more
        curve, cost = curves[key]
        if feed.epoch(key, curve[index], len(curve), cost):
            stopped[key] = index + 1
    return stopped


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
@pytest.mark.parametrize(("rule", "objectives"), [
    ("median", ("val_accuracy",)), ("asha", ("val_accuracy",)),
    ("mo_asha", ("val_accuracy", "flops")), ("asha", ("val_accuracy", "flops"))])
@pytest.mark.parametrize("seed", [0, 1])
def test_both_backends_stop_the_same_trials(rule: str, objectives: tuple[str, ...], order: str,
                                            seed: int) -> None:
    """The conformance test: the same learning curves, in the same order, through the Optuna
    backend's trial hook (an in-memory study, the records through the codec) and through the
    Ray backend's scheduler stop the same trials at the same epochs."""
    config = _config(rule, objectives, min_epochs=1, reduction=2)
    curves = _curves(seed)
    arrival = _orders(len(curves), len(curves[0][0]))[order]
    on_optuna = _feed(_OptunaFeed(config), curves, arrival)
    on_ray = _feed(_RayFeed(config), curves, arrival)
    assert on_optuna == on_ray
    stopped = {e for e in on_optuna.values() if e is not None}
    assert stopped and None in on_optuna.values()  # some stop, some train to the end
    if rule != "median":
        assert stopped <= {1, 2, 4}  # rungs at min_epochs * reduction**k only


def test_a_cheaper_candidate_is_not_stopped_for_accuracy_alone() -> None:
    """Through the Optuna hook, at its rung a candidate far below the others' accuracy but
    cheaper than every finished trial goes on under MO-ASHA; the percentile rule stops it."""
    finished = [(0.90, 4e5), (0.88, 3e5), (0.92, 6e5), (0.85, 2e5), (0.91, 5e5)]

    reasons = []

    def stops_at_2(rule: str, flops: float) -> bool:
        feed = _OptunaFeed(_config(rule, ("val_accuracy", "flops"), min_epochs=2, reduction=2))
        for k, (accuracy, cost) in enumerate(finished):
            for e in range(1, 5):
                if feed.epoch(k, accuracy * e / 4, 4, cost):
                    break
        assert feed.epoch(99, 0.01, 8, flops) is False  # before min_epochs
        stop = feed.epoch(99, 0.05, 8, flops)
        reasons.append(feed.trials[99][1].failure_reason)
        return stop

    assert stops_at_2("mo_asha", 1e4) is False
    assert stops_at_2("mo_asha", 1e6) is True
    assert stops_at_2("median", 1e4) is True  # accuracy alone would stop it
    # The record says why, in the words the Ray backend's driver writes too.
    assert reasons == [None, "stopped early by the mo_asha rule after 2 of 8 epochs",
                       "stopped early by the median rule after 2 of 8 epochs"]


def test_the_ray_scheduler_forgets_a_failed_trial_and_restarts_a_restored_one() -> None:
    scheduler = _ray().EarlyStopScheduler(EarlyStop(rule="asha", min_epochs=1), min_trials=2)

    def result(key: str, accuracy: float, epoch: int = 1) -> str:
        return scheduler.on_trial_result(None, types.SimpleNamespace(trial_id=key),
                                         {"epoch": epoch, "val_accuracy": accuracy,
                                          "epochs_planned": 4})

    assert result("a", 0.9) == scheduler.CONTINUE
    scheduler.on_trial_complete(None, types.SimpleNamespace(trial_id="a"),
                                {"status": "diverged"})
    assert result("b", 0.1) == scheduler.CONTINUE  # alone at the rung again
    assert result("c", 0.2) == scheduler.CONTINUE  # best of two
    assert result("b", 0.1) == scheduler.STOP  # b restored from scratch: epoch 1 again
    assert scheduler._curves["b"] == [0.1]


# --- the early_stop section ------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "needle"), [
    ({"early_stop": {"rule": "successive_halving"}},
     "early_stop.rule: got 'successive_halving'; allowed: none, median, asha, mo_asha, hyperband"),
    ({"early_stop": {"reduction": 1}}, "early_stop.reduction: got 1; allowed: an integer from 2"),
    ({"early_stop": {"min_epochs": 0}}, "early_stop.min_epochs: got 0; allowed: an integer >= 1"),
    ({"early_stop": {"percentile": 25}}, "early_stop.percentile: removed; the rule is median"),
    ({"early_stop": {"grace": 2}}, "early_stop.grace: unknown key; allowed: rule, min_epochs"),
    ({"early_stop": "mo_asha"}, "early_stop.rule: mo_asha needs a cost objective"),
    ({"early_stop": "hyperband", "objectives": ["val_accuracy", "flops"]},
     "early_stop.rule: hyperband ranks by one objective"),
])
def test_bad_early_stop_options_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        StudyConfig.from_dict({"name": "x", **data})


@pytest.mark.parametrize(("data", "line"), [
    ({"pruner": "median"}, "pruner: removed; use early_stop.rule"),
    ({"pruner_options": {}}, "pruner_options: removed; use early_stop"),
    ({"early_stop_rule": "mo_asha"}, "early_stop_rule: removed; use early_stop.rule"),
    ({"early_stop_warmup": 2}, "early_stop_warmup: removed; use early_stop.min_epochs"),
    ({"early_stop_reduction": 2}, "early_stop_reduction: removed; use early_stop.reduction"),
    ({"early_stop_percentile": 50}, "early_stop_percentile: removed; use early_stop.rule: median"),
    ({"sampler_options": {"n_startup_trials": 3}}, "sampler_options: removed; write the options "
                                                   "in the sampler mapping"),
])
def test_a_removed_key_names_its_replacement(data: dict, line: str) -> None:
    with pytest.raises(ValueError, match=line) as caught:
        StudyConfig.from_dict({"name": "x", **data})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("key", "line"), [
    ("scheduler", "ray.scheduler: removed; use early_stop.rule"),
    ("grace_period", "ray.grace_period: removed; use early_stop.min_epochs"),
    ("reduction_factor", "ray.reduction_factor: removed; use early_stop.reduction"),
    ("address", "ray.address: removed; use --address"),
])
def test_a_removed_ray_key_names_its_replacement(key: str, line: str) -> None:
    with pytest.raises(ValueError, match=line):
        _ray().RayOptions.from_dict({key: 1})


def test_the_section_has_one_spelling_and_a_short_form() -> None:
    config = StudyConfig.from_dict({"name": "x", "early_stop": "none",
                                    "sampler": {"name": "tpe", "n_startup_trials": 3}})
    assert config.early_stop == EarlyStop(rule="none")
    assert config.sampler == "tpe" and config.sampler_options == {"n_startup_trials": 3}
    assert StudyConfig.from_dict(config.to_dict()) == config  # run.json round-trips
    assert StudyConfig(name="x").early_stop == EarlyStop(rule="median", min_epochs=1,
                                                         reduction=2, percentile=50)
