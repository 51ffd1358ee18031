"""The trial runner every backend shares: build, measure, train, record; a bad candidate is a
record with its status and reason, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pdenas.architecture import Architecture
from pdenas.backends import DataShape, TrialHooks, TrialRunner
from pdenas.data import DataConfig, load_data
from pdenas.runs import RunFolder
from pdenas.study import Constraints, StudyConfig
from pdenas.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def hooks(on_epoch=None, on_hung=None) -> TrialHooks:
    """A backend's hooks, some replaced (as a backend's subclass would)."""
    made = TrialHooks()
    if on_epoch is not None:
        made.on_epoch = on_epoch
    if on_hung is not None:
        made.on_hung = on_hung
    return made


def run_candidate(number, arch, train, config, data, device, run_dir, report=None):
    runner = TrialRunner(config, None, RunFolder(run_dir), DataShape.of(data))
    return runner.run(number, arch, train, data=data, device=device, hooks=hooks(report))


def _tiny_data():
    return load_data(DataConfig(name="digits", train_limit=300, seed=0))


def test_run_candidate_trains_and_saves(tmp_path: Path) -> None:
    data = _tiny_data()
    config = StudyConfig(name="t", latency_repeats=2)
    arch = Architecture("hamiltonian", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 2, "batch_size": 64, "lr": 0.05})
    seen = []
    record = run_candidate(3, arch, train, config, data, torch.device("cpu"), tmp_path,
                           report=lambda r, m: seen.append(r.epochs_trained) and False)
    assert record.status == "completed"
    assert seen == [1, 2]
    assert record.epochs_trained == 2 and len(record.history) == 2
    assert 0.0 <= record.val_accuracy <= 1.0
    assert arch.norm == "tv" and record.max_stable_step is None  # the bound bounds nothing there
    plain = Architecture("hamiltonian", (8, 8, 8), (1, 1), 0.5, in_channels=1, norm="none")
    unnormed = run_candidate(4, plain, TrainConfig.from_dict({"epochs": 1, "batch_size": 64}),
                             config, data, torch.device("cpu"), tmp_path)
    torch.manual_seed(4)  # run_candidate seeds the initial weights with seed * 100_003 + number
    expected = min(u.max_stable_step() for u in __import__("pdenas").build_model(plain).units)
    assert unnormed.max_stable_step == pytest.approx(expected, rel=1e-9)
    assert record.cost["params"] == sum(p.numel() for p in __import__("pdenas").build_model(arch).parameters())
    folder = tmp_path / "trials" / "3"
    state = torch.load(folder / "model.pt", weights_only=True)
    assert set(state) == set(__import__("pdenas").build_model(arch).state_dict())
    assert Architecture.from_dict(json.loads((folder / "architecture.json").read_text())) == arch
    assert json.loads((folder / "record.json").read_text())["status"] == "completed"


def test_run_candidate_stopped_by_report(tmp_path: Path) -> None:
    data = _tiny_data()
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 4, "batch_size": 64})
    record = run_candidate(0, arch, train, StudyConfig(name="t", latency_repeats=2), data,
                           torch.device("cpu"), tmp_path, report=lambda r, m: r.epochs_trained >= 2)
    assert record.status == "stopped"
    assert record.epochs_trained == 2


def test_diverging_candidate_is_a_record_not_a_crash(tmp_path: Path) -> None:
    data = _tiny_data()
    arch = Architecture("resnet", (8, 8, 8), (2, 2), 50.0, norm="none", in_channels=1)
    train = TrainConfig.from_dict({"epochs": 3, "batch_size": 64, "lr": 1e8, "clip_weights": None,
                                   "optimizer": "sgd", "momentum": 0.0})
    record = run_candidate(0, arch, train, StudyConfig(name="t", latency_repeats=2), data,
                           torch.device("cpu"), tmp_path)
    assert record.status == "diverged"
    assert "non-finite" in record.failure_reason
    assert json.loads((tmp_path / "trials" / "0" / "record.json").read_text())["status"] == "diverged"


def test_infeasible_candidate_is_not_trained(tmp_path: Path) -> None:
    data = _tiny_data()
    arch = Architecture("parabolic", (16, 16, 16), (2, 2), 0.5, in_channels=1)
    config = StudyConfig.from_dict({"name": "t", "constraints": {"max_params": 1000}}).replace(
        latency_repeats=2)
    record = run_candidate(0, arch, TrainConfig.from_dict({"epochs": 2}), config, data,
                           torch.device("cpu"), tmp_path)
    assert record.status == "infeasible"
    assert record.epochs_trained == 0
    assert record.constraints[0] == record.cost["params"] - 1000 > 0
    assert "params" in record.failure_reason


def test_out_of_memory_while_measuring_is_an_oom_record(tmp_path: Path, monkeypatch) -> None:
    import pdenas.cost

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pdenas.cost, "measure_cost", exhausted)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    record = run_candidate(0, arch, TrainConfig.from_dict({"epochs": 1}), StudyConfig(name="t"),
                           _tiny_data(), torch.device("cpu"), tmp_path)
    assert record.status == "oom"
    assert "out of memory before training" in record.failure_reason
    assert json.loads((tmp_path / "trials" / "0" / "record.json").read_text())["status"] == "oom"


def test_out_of_memory_in_training_keeps_the_completed_epochs(tmp_path: Path, monkeypatch) -> None:
    import pdenas.train
    from pdenas.train import OutOfMemory

    def runs_out(*args, **kwargs):
        raise OutOfMemory("out of memory at epoch 3: CUDA out of memory",
                          history=[{"epoch": 1, "val_accuracy": 0.3}, {"epoch": 2, "val_accuracy": 0.5}])

    monkeypatch.setattr(pdenas.train, "fit", runs_out)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    record = run_candidate(0, arch, TrainConfig.from_dict({"epochs": 5}),
                           StudyConfig(name="t", latency_repeats=2), _tiny_data(),
                           torch.device("cpu"), tmp_path)
    assert record.status == "oom" and "epoch 3" in record.failure_reason
    assert record.epochs_trained == 2 and [h["epoch"] for h in record.history] == [1, 2]


@pytest.mark.parametrize(("mode", "h", "status", "trained_h"), [
    ("record", 2.0, "completed", 2.0),
    ("refuse", 2.0, "infeasible", None),
    ("shorten", 2.0, "completed", 0.125),  # halved three times until the estimate is stable
    ("shorten", 8.0, "infeasible", None),  # still unstable after four halvings
])
def test_the_stability_check_records_refuses_or_shortens(mode: str, h: float, status: str,
                                                         trained_h: float | None,
                                                         tmp_path: Path) -> None:
    """A TV parabolic unit at h = 2 has linearised steps of spectral radius about 8 at digits
    images (the ||K|| bound does not see it); the check acts on that before training."""
    config = StudyConfig.from_dict({"name": "t", "stability": {"mode": mode}}).replace(
        latency_repeats=1)
    arch = Architecture("parabolic", (8, 8, 8), (2, 2), h, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 1, "batch_size": 64})
    record = run_candidate(0, arch, train, config, _tiny_data(), torch.device("cpu"), tmp_path)
    assert record.status == status
    first = record.stability["init"]
    assert len(first["units"]) == 2 and first["spectral_radius"] == max(
        u["spectral_radius"] for u in first["units"])
    stored = json.loads((tmp_path / "trials" / "0" / "architecture.json").read_text())
    if status == "infeasible":
        assert "estimated unstable before training: spectral radius" in record.failure_reason
        assert record.epochs_trained == 0 and "final" not in record.stability
        assert first["spectral_radius"] > 1.05
        return
    assert record.architecture["step_size"] == stored["step_size"] == trained_h
    assert "final" in record.stability  # and after training, at the best weights
    if mode == "shorten":
        assert record.stability["shortened_from"] == h and first["stable"]
    else:
        assert not first["stable"]


def test_a_trial_at_its_time_limit_stops_within_a_step_and_keeps_its_best_epoch(tmp_path: Path) -> None:
    """500 epochs would take minutes: with the prediction ignored (skip_infeasible false) the
    trial trains until its 4 s limit, stops at the next step as "timeout", and keeps the weights
    of its best completed epoch."""
    import time

    config = StudyConfig(name="t", latency_repeats=1, trial_timeout=8,
                         constraints=Constraints(skip_infeasible=False))
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 500, "batch_size": 32})
    start = time.monotonic()
    record = run_candidate(0, arch, train, config, _tiny_data(), torch.device("cpu"), tmp_path)
    assert time.monotonic() - start < 20
    assert record.status == "timeout" and record.status.state == "PRUNED"
    assert "stopped at the trial time limit (8 s) after" in record.failure_reason
    assert 1 <= record.epochs_trained < 500 and len(record.history) == record.epochs_trained
    assert record.val_accuracy == max(h["val_accuracy"] for h in record.history)
    assert (tmp_path / "trials" / "0" / "model.pt").is_file()
    assert record.cost["predicted_seconds"] > 8  # the prediction saw it coming


def test_a_candidate_predicted_over_the_limit_is_infeasible_untrained(tmp_path: Path) -> None:
    config = StudyConfig(name="t", latency_repeats=1, trial_timeout=4)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 500, "batch_size": 32})
    record = run_candidate(0, arch, train, config, _tiny_data(), torch.device("cpu"), tmp_path)
    assert record.status == "infeasible" and record.epochs_trained == 0
    assert "predicted to need" in record.failure_reason and "trial time limit (4 s)" in record.failure_reason
    assert record.constraints[-1] == pytest.approx(record.cost["predicted_seconds"] - 4)
    assert record.constraints[-1] > 0  # told to the sampler as a broken constraint


def test_the_time_prediction_holds_for_a_short_run(tmp_path: Path) -> None:
    config = StudyConfig(name="t", latency_repeats=1)
    arch = Architecture("resnet", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 6, "batch_size": 32, "augment": False})
    record = run_candidate(0, arch, train, config, _tiny_data(), torch.device("cpu"), tmp_path)
    assert record.status == "completed"
    ratio = record.seconds / record.cost["predicted_seconds"]
    assert 0.3 < ratio < 3, ratio  # the same order of magnitude on a busy 2-core machine


def test_fit_stops_at_its_deadline_before_the_next_step() -> None:
    import time

    from pdenas.network import build_model
    from pdenas.train import TimedOut, fit

    model = build_model(Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1))
    with pytest.raises(TimedOut, match="timeout: reached the time limit at epoch 1 step 1") as info:
        fit(model, _tiny_data(), TrainConfig.from_dict({"epochs": 2}), "cpu",
            deadline=time.monotonic() - 1)
    assert info.value.history == [] and info.value.status == "timeout"


def test_a_hung_trial_is_recorded_as_timeout_by_its_watchdog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second epoch's hook blocks (no step finishes) past the 6 s limit plus a 1 s grace:
    the watchdog records the trial as timeout with its best epoch's weights and tells the
    backend; when the call returns after all, the runner keeps the watchdog's record."""
    import time

    monkeypatch.setenv("PDENAS_HUNG_GRACE", "1")
    config = StudyConfig(name="t", latency_repeats=1, trial_timeout=6,
                         constraints=Constraints(skip_infeasible=False))
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 500, "batch_size": 32})
    told = []

    def report(record, metrics):
        if record.epochs_trained == 2:
            time.sleep(10)  # hangs: the step-level time check never runs meanwhile
        return False

    runner = TrialRunner(config, None, RunFolder(tmp_path), DataShape.of(_tiny_data()))
    start = time.monotonic()
    record = runner.run(0, arch, train, data=_tiny_data(), device=torch.device("cpu"),
                        hooks=hooks(report, told.append))
    assert time.monotonic() - start >= 10
    assert [r.status for r in told] == ["timeout"]
    stored = RunFolder(tmp_path).trial(0).read_record()
    assert record.status == stored.status == "timeout" and record.status.state == "PRUNED"
    assert stored.failure_reason.startswith("hung: still running 1 s past the trial time limit (6 s)")
    assert stored.epochs_trained == 2 and stored.finished_at is not None
    assert stored.val_accuracy == max(h["val_accuracy"] for h in stored.history[:2])
    assert (tmp_path / "trials" / "0" / "model.pt").is_file()


def test_the_watchdog_does_nothing_for_a_trial_that_ends_in_time() -> None:
    import time

    from pdenas.backends._watchdog import Watchdog

    fired = []
    dog = Watchdog(time.monotonic() + 0.3, lambda: fired.append(1), exit_process=False).start()
    assert dog.stop() is True
    time.sleep(0.5)
    assert fired == []
    late = Watchdog(time.monotonic() + 0.1, lambda: fired.append(2), exit_process=False).start()
    time.sleep(0.4)
    assert fired == [2] and late.stop() is False


def test_a_candidate_too_long_for_the_time_left_is_skipped_and_predicted_before_building(
        tmp_path: Path) -> None:
    """The first candidate too long for the time left is measured and skipped (not counted);
    from then on the time model predicts such a draw before it is built, and says the space has
    nothing that fits only when even its cheapest candidate would not."""
    from pdenas.backends._base import TooLong
    from pdenas.space import SearchSpace

    data = _tiny_data()
    config = StudyConfig(name="t", latency_repeats=1)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    quick = TrainConfig.from_dict({"epochs": 1, "batch_size": 64})
    slow = TrainConfig.from_dict({"epochs": 5000, "batch_size": 64})
    space = SearchSpace.from_dict({"families": ["parabolic"], "num_units": 2, "depth": 1,
                                   "width": {"base": 8, "growth": 1, "last": "same"},
                                   "step_size": 0.5, "norm": "tv", "train": {"epochs": [1, 5000]}})
    runner = TrialRunner(config, space, RunFolder(tmp_path), DataShape.of(data))
    cpu = torch.device("cpu")
    assert runner.skip_reason(arch, slow, 60, cpu) is None  # nothing measured: build it

    first = runner.run(0, arch, slow, data=data, device=cpu, time_left=60)
    assert first.status == "skipped" and not first.status.uses_budget
    assert "more than the search has left" in first.failure_reason and not first.history
    skip = runner.skip_reason(arch, slow, 60, cpu)  # now predicted before building
    assert isinstance(skip, TooLong) and "before building it, from 1 measured" in skip
    assert runner.skip_reason(arch, quick, 60, cpu) is None
    assert not runner.nothing_fits(60, cpu) and not runner.out_of_time  # 1 epoch fits
    params = runner.fitting_params(60, cpu, seed=0)
    assert params == {"family": "parabolic", "epochs": 1}  # the cost driver moved to what fits
    done = runner.run(1, *runner.replay(params), data=data, device=cpu, time_left=60)
    assert done.status == "completed"
    assert runner.nothing_fits(0.01, cpu) and runner.out_of_time  # not even 1 epoch fits


def test_a_stalled_calibration_alone_does_not_end_the_search(tmp_path: Path,
                                                            monkeypatch) -> None:
    """One calibration that stalled (here: 10,000 s for 50 epochs of a tiny network; two
    workers' OpenMP threads on 2 cores once gave 15 s an epoch) predicts that nothing fits.
    With no trained trial that is not enough to give up: the space's cheapest candidate is
    not skipped before building but drawn and calibrated itself, twice, and the search ends
    only once both its calibrations say so; when one says it fits, it trains."""
    from pdenas import train as train_module
    from pdenas.space import SearchSpace

    data = _tiny_data()
    config = StudyConfig(name="t", latency_repeats=1)
    space = SearchSpace.from_dict({"families": ["parabolic"], "num_units": 2, "depth": 1,
                                   "width": {"base": [8, 16], "growth": 1, "last": "same"},
                                   "step_size": 0.5, "norm": "tv", "train": {"epochs": [1, 50]}})
    cpu = torch.device("cpu")
    wide = Architecture("parabolic", (16, 16, 16), (1, 1), 0.5, in_channels=1)
    long = TrainConfig.from_dict({"epochs": 50})
    real = train_module.estimate_seconds
    monkeypatch.setattr(train_module, "estimate_seconds", lambda *a, **k: 1e4)  # the stall
    runner = TrialRunner(config, space, RunFolder(tmp_path / "a"), DataShape.of(data))
    stalled = runner.run(0, wide, long, data=data, device=cpu, time_left=60)
    assert stalled.status == "skipped" and stalled.cost["predicted_seconds"] >= 1e4
    low = runner.fitting_params(60, cpu, seed=0)
    assert low == {"family": "parabolic", "width_base": 8, "epochs": 1}  # the cheapest, whole
    arch, quick = runner.replay(low)
    assert runner.time_model(cpu).upper(arch, quick) > 60  # predicted not to fit ...
    assert runner.skip_reason(wide, quick, 60, cpu) is not None  # (a dearer one is skipped)
    for number in (1, 2):
        assert not runner.nothing_fits(60, cpu) and not runner.out_of_time  # ... not given up on
        assert runner.skip_reason(arch, quick, 60, cpu) is None  # built: calibrated itself
        assert runner.fitting_params(60, cpu, seed=0) == low
        again = runner.run(number, arch, quick, data=data, device=cpu, time_left=60)
        assert again.status == "skipped"  # its own calibration says it does not fit
    assert runner.nothing_fits(60, cpu) and runner.out_of_time  # twice: the search ends
    assert runner.skip_reason(arch, quick, 60, cpu) is not None
    assert runner.fitting_params(60, cpu, seed=0) is None

    fresh = TrialRunner(config, space, RunFolder(tmp_path / "b"), DataShape.of(data))
    fresh.run(0, wide, long, data=data, device=cpu, time_left=60)
    monkeypatch.setattr(train_module, "estimate_seconds", real)  # the stall is over
    done = fresh.run(1, *fresh.replay(fresh.fitting_params(60, cpu, seed=0)), data=data,
                     device=cpu, time_left=60)
    assert done.status == "completed"  # the cheapest's own calibration: it fits, and trains


def test_a_bug_in_pdenas_propagates_and_the_trial_is_given_back(tmp_path: Path, monkeypatch) -> None:
    """Only the candidate's own outcomes become statuses: an error of pdenas's own (here a
    TypeError planted in ``fit``) propagates with its traceback, as Optuna's ``catch=()``, and
    the record says interrupted (not failed), so a rerun trains the trial again."""
    from pdenas import train as train_module

    def broken(*args, **kwargs):
        raise TypeError("a bug in pdenas")

    monkeypatch.setattr(train_module, "fit", broken)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 1, "batch_size": 64})
    with pytest.raises(TypeError, match="a bug in pdenas"):
        run_candidate(0, arch, train, StudyConfig(name="t", latency_repeats=1), _tiny_data(),
                      torch.device("cpu"), tmp_path)
    stored = RunFolder(tmp_path).trial(0).read_record()
    assert stored.status == "interrupted" and not stored.status.uses_budget
    assert "error in pdenas" in stored.failure_reason and "TypeError" in stored.failure_reason


def test_a_failure_of_the_candidate_is_its_status(tmp_path: Path, monkeypatch) -> None:
    """What training the candidate reports (``TrainingFailed``) is recorded, and the call
    returns: the search goes on."""
    from pdenas import train as train_module

    def fails(*args, **kwargs):
        raise train_module.TrainingFailed("failed: the candidate's step raised", [])

    monkeypatch.setattr(train_module, "fit", fails)
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 1, "batch_size": 64})
    record = run_candidate(0, arch, train, StudyConfig(name="t", latency_repeats=1), _tiny_data(),
                           torch.device("cpu"), tmp_path)
    assert record.status == "failed" and record.status.uses_budget
    assert record.failure_reason == "failed: the candidate's step raised"


def test_a_trial_abandoned_by_its_backend_writes_nothing_more(tmp_path: Path) -> None:
    """A hook that raises ``Abandoned`` (Ray Tune ended the trial's thread: its scheduler or
    Ctrl-C) ends the trial where it is: the record stays as the epoch wrote it ("running"), no
    weights are saved, and the exception reaches the backend, which decides what it became."""
    from pdenas.backends._lifecycle import Abandoned

    class EndedAfterOneEpoch(TrialHooks):
        def on_epoch(self, record, metrics) -> bool:
            raise Abandoned

    data = _tiny_data()
    runner = TrialRunner(StudyConfig(name="t", latency_repeats=1), None, RunFolder(tmp_path),
                         DataShape.of(data))
    arch = Architecture("parabolic", (8, 8, 8), (1, 1), 0.5, in_channels=1)
    train = TrainConfig.from_dict({"epochs": 3, "batch_size": 64})
    with pytest.raises(Abandoned):
        runner.run(0, arch, train, data=data, device=torch.device("cpu"),
                   hooks=EndedAfterOneEpoch())
    folder = RunFolder(tmp_path).trial(0)
    record = folder.read_record()
    assert record.status == "running" and record.epochs_trained == 1 and len(record.history) == 1
    assert record.finished_at is None and not (folder.path / "model.pt").exists()
