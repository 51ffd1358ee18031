"""The Ray Tune backend end to end on a real local Ray runtime: ASHA, records, leaderboard, restore.

Needs ray[tune]: skipped without it on a developer machine, failed under CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROWS = ("number", "state", "status", "failure_reason", "family", "step_size", "depths", "widths",
        "activation", "norm", "reversible", "val_accuracy", "params", "flops", "latency_ms",
        "latency_batch_ms", "memory_bytes", "epochs_trained", "epochs_planned", "seconds",
        "history")
RAY = {"cpus_per_trial": 1}  # two trials at once on the 2-CPU test runtime
ASHA = {"rule": "asha", "min_epochs": 1, "reduction": 2}


def _records(run_dir: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text())
            for p in (run_dir / "trials").glob("*/record.json")}


def test_ray_search_with_asha_lands_in_the_leaderboard(ray_address, tiny_study, tmp_path,
                                                      monkeypatch):
    from pdenas.backends import run_search
    from pdenas.results import leaderboard, load_run, load_trials
    from pdenas.study import StudyConfig

    # Seed 6 suggests good, good, useless, good learning rates: with two trials enough at a rung
    # (MIN_TRIALS, 4 in a study), ASHA stops the worse of the first two, or the useless one, at
    # the epoch-1 rung (only the best half of those that reached it go on). One trial at a time
    # (2 CPUs each): a trial after a stopped one takes over its actor (reuse_actors), which
    # failed the trial while the stopped one's thread never ended. The stopped trial's record
    # is finished by the driver alone (the same thread end is Ctrl-C's: see the next tests).
    monkeypatch.setattr("pdenas.backends.ray.MIN_TRIALS", 2)
    config = StudyConfig.load(tiny_study(objectives=["val_accuracy", "flops"],
                                         ray={"cpus_per_trial": 2}, early_stop=ASHA))
    run_dir = tmp_path / "run"

    def search(n_trials: int) -> int:
        run_search(config.replace(n_trials=n_trials), backend="ray", out=run_dir, quiet=True)
        return sum(r["status"] != "running" for r in _records(run_dir).values())

    assert search(4) == 4

    assert load_run(run_dir)["backend"] == "ray"
    trials = load_trials(run_dir)
    assert list(trials["number"]) == [0, 1, 2, 3]
    assert set(ROWS) <= set(trials.columns)
    assert set(trials["family"]) == {"parabolic", "resnet"}  # cover_families: one of each first
    assert set(trials["status"]) <= {"completed", "stopped"}
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 1, trials[["number", "status", "val_accuracy"]]
    assert (stopped["epochs_trained"] < stopped["epochs_planned"]).all()
    assert stopped["failure_reason"].str.contains("asha").all()
    for _, row in trials.iterrows():
        assert len(row["history"]) == row["epochs_trained"] >= 1
        folder = run_dir / "trials" / str(row["number"])
        assert json.loads((folder / "architecture.json").read_text())["family"] == row["family"]
        assert (folder / "model.pt").is_file() == (row["status"] == "completed")

    board = leaderboard(trials, config.objectives)
    assert len(board) == len(trials) - len(stopped) >= 1
    assert set(board["number"]).isdisjoint(stopped["number"])
    assert (board["epochs_trained"] == board["epochs_planned"]).all()
    assert board["val_accuracy"].iloc[0] > 0.3  # the good learning rate learns

    # The searcher's Optuna study is in the run folder's study.db, as with the Optuna backend:
    # optuna-dashboard and trials_dataframe() see the same trials, states and attributes.
    import optuna

    assert load_run(run_dir)["storage"] is None and (run_dir / "study.db").is_file()

    def stored():  # noqa: ANN202 - a DataFrame
        study = optuna.load_study(study_name=config.name, storage=f"sqlite:///{run_dir / 'study.db'}")
        return study.trials_dataframe().set_index("number")

    frame = stored()
    assert sorted(frame.index) == [0, 1, 2, 3]
    for _, row in trials.iterrows():
        entry = frame.loc[row["number"]]
        assert entry["user_attrs_family"] == row["family"]
        assert entry["user_attrs_status"] == row["status"]
        assert entry["state"] == ("COMPLETE" if row["status"] == "completed" else "PRUNED")

    # Rerunning restores the finished experiment: nothing is lost, nothing trains again.
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "trials").glob("*/model.pt")}
    assert search(4) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(_records(run_dir)) == [0, 1, 2, 3]

    # A larger budget tops the study up with new trial numbers in a new experiment.
    assert search(5) == 5
    assert sorted(_records(run_dir)) == [0, 1, 2, 3, 4]
    assert sorted(stored().index) == [0, 1, 2, 3, 4]  # the same numbers in the Optuna study
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in (run_dir / "ray").iterdir()) == ["exp-0", "exp-1"]


def _stamp(run_dir: Path, number: int) -> int:
    return (run_dir / "trials" / str(number) / "model.pt").stat().st_mtime_ns


def _search_command(study: Path, run_dir: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "pdenas.cli", "search", str(study), "--backend", "ray",
            "--address", address, "--out", str(run_dir), "--quiet"]


def test_interrupted_ray_search_resumes_without_losing_trials(ray_address, tiny_study, tmp_path):
    study = tiny_study(ray={"cpus_per_trial": 2},  # one trial at a time
                       train={"epochs": 3, "batch_size": 32, "augment": False})
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = _search_command(study, run_dir, ray_address)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if any(r["status"] == "completed" for r in _records(run_dir).values()):
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[0][-3000:]
        first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops
        output = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0, output[-3000:]
    done = {n: r for n, r in _records(run_dir).items() if r["status"] == "completed"}
    assert 1 <= len(done) < 4, output[-3000:]
    stamps = {n: _stamp(run_dir, n) for n in done}

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    records = _records(run_dir)
    assert sorted(records) == [0, 1, 2, 3]
    assert {r["status"] for r in records.values()} == {"completed"}
    assert all(r["epochs_trained"] == 3 for r in records.values())
    # Trials finished before the interruption were kept, not trained again.
    assert {n: _stamp(run_dir, n) for n in done} == stamps
    assert "4 trials, 4 ranked" in second.stdout


def _restore_trial(monkeypatch, run, checkpoint) -> tuple[bool, list[dict]]:
    """Run the trainable for trial 0 as Tune does on a restore, with training replaced by an
    exception: returns whether it went on to train, and what it reported."""
    from types import SimpleNamespace

    from pdenas.backends import ray as backend

    reports: list[dict] = []
    monkeypatch.setattr(backend, "_report", lambda path, metrics: reports.append(dict(metrics)))
    monkeypatch.setattr(backend.tune, "get_checkpoint", lambda: checkpoint)

    class Trained(Exception):
        pass

    def replay(params):
        raise Trained

    runner = SimpleNamespace(config=SimpleNamespace(objectives=("val_accuracy",)),
                             run_folder=run, replay=replay)
    try:
        backend._run_trial({backend.NUMBER_KEY: 0, "family": "resnet"}, runner=runner, gpus=0)
    except Trained:
        return True, reports
    return False, reports


@pytest.mark.parametrize("status, weights, trains", [
    ("completed", True, False),   # finished before Tune heard of it: reported, not retrained
    ("diverged", False, False),   # a failed candidate is not retried either
    ("completed", False, True),   # weights missing: the record cannot be trusted
    ("running", True, True),      # a partial record: trained again
    ("interrupted", True, True),  # given back by Ctrl-C: trained again
])
def test_a_restored_trial_the_run_folder_records_as_finished_is_not_trained_again(
        monkeypatch, tmp_path, status, weights, trains):
    """Ctrl-C between the runner's final record and the trainable's last report leaves Tune one
    epoch behind; the restored trial must take the run folder's word for it."""
    from pdenas.runs import RunFolder, TrialRecord

    run = RunFolder(tmp_path / "run")
    folder = run.trial(0)
    folder.write_record(TrialRecord(number=0, status=status, val_accuracy=0.75,
                                    epochs_trained=3, epochs_planned=3))
    if weights:
        folder.weights_path.write_bytes(b"weights")
    trained, reports = _restore_trial(monkeypatch, run, checkpoint=None)
    assert trained == trains
    if trains:
        assert reports == []
    else:
        assert [(r["trial_number"], r["status"], r["val_accuracy"]) for r in reports] == [
            (0, status, 0.75)]
        assert folder.read_record().status == status  # the record is left as it was


@pytest.mark.parametrize("status, weights, trains", [
    ("completed", True, False),   # the checkpoint holds the final record: restored, reported
    ("stopped", False, False),    # stopped early, no weights needed
    ("completed", False, True),   # weights missing from the checkpoint: trained again
    ("interrupted", True, True),  # given back by Ctrl-C: trained again, not taken as final
    ("running", True, True),      # a partial checkpoint
    ("damaged", True, True),      # a record cut short: trained again, not an error
])
def test_a_restored_trial_is_taken_from_its_checkpoint_only_when_that_ended_it(
        monkeypatch, tmp_path, status, weights, trains):
    import contextlib
    from types import SimpleNamespace

    from pdenas.runs import RunFolder, TrialFolder, TrialRecord

    saved = tmp_path / "checkpoint"
    saved.mkdir()
    if status == "damaged":
        (saved / TrialFolder.RECORD).write_text('{"number": 0, "status": "compl')
    else:
        record = TrialRecord(number=0, status=status, val_accuracy=0.75, epochs_trained=3,
                             epochs_planned=3)
        (saved / TrialFolder.RECORD).write_text(json.dumps(record.to_dict()))
    if weights:
        (saved / TrialFolder.WEIGHTS).write_bytes(b"weights")
    checkpoint = SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(saved)))
    run = RunFolder(tmp_path / "run")
    trained, reports = _restore_trial(monkeypatch, run, checkpoint)
    assert trained == trains
    if trains:
        assert reports == []
        assert not run.trial(0).has_record()
    else:
        assert [(r["trial_number"], r["status"]) for r in reports] == [(0, status)]
        assert run.trial(0).read_record().status == status  # the files were restored
        assert run.trial(0).has_weights() == weights


def test_bad_sampler_options_raise_before_anything_is_written(tiny_study, tmp_path):
    from pdenas.backends import run_search
    from pdenas.study import StudyConfig

    config = StudyConfig.load(tiny_study(ray=RAY, sampler={"name": "random", "colour": "red"}))
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="sampler.colour: unknown option"):
        run_search(config, backend="ray", out=run_dir, quiet=True, address="127.0.0.1:1")
    assert not run_dir.exists()


def test_a_hung_ray_trial_is_ended_recorded_and_the_search_goes_on(tiny_study, tmp_path):
    """The Ray side of the hung-trial rule, on a runtime of its own (``RAY_ADDRESS=local``) so
    that its workers start with the hang hook (``tests/hooks/sitecustomize.py``) on their path:
    the first trial blocks after one epoch, its watchdog inside the trial's actor records it as
    ``timeout`` and ends the actor, the driver keeps that record, and the second trial trains
    in a new actor."""
    hooks = Path(__file__).resolve().parent / "hooks"
    repo = Path(__file__).resolve().parents[1]
    study = tiny_study(ray={"cpus_per_trial": 2},  # one at a time on 2 cores
                       train={"epochs": 3, "batch_size": 32, "augment": False},
                       trial_timeout=30, n_trials=2)
    # 30 s: the first trial must finish its first epoch inside the limit for the hang to begin.
    # It takes about 3 s on an idle 2-core machine (a new actor, the flop counter's first run,
    # the cost measurement, one epoch) while the Ray runtime is still starting beside it. CI ran
    # the suite 1.8 times as slowly as that machine and failed at a 4 s limit; 30 s leaves a
    # factor of 10.
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local",
           "OMP_NUM_THREADS": "1", "PDENAS_HUNG_GRACE": "1",
           "PDENAS_TEST_HANG_ONCE": str(tmp_path / "hung"),
           "PYTHONPATH": os.pathsep.join(map(str, (repo, hooks)))}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pdenas.cli", "search", str(study), "--backend",
                           "ray", "--out", str(run_dir), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    output = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, output
    assert time.monotonic() - start < 250, output  # not the 600 s the hung call would take
    assert (tmp_path / "hung").exists(), output  # the hook ran in a Ray worker
    records = _records(run_dir)
    assert sorted(records) == [0, 1], output
    hung, other = records[0], records[1]
    assert hung["status"] == "timeout", hung
    assert hung["failure_reason"].startswith(
        "hung: still running 1 s past the trial time limit (30 s) after 1 of 3 epochs"), hung
    assert hung["epochs_trained"] == 1 and (run_dir / "trials" / "0" / "model.pt").is_file()
    # The second trial ran in a new actor; on a loaded machine it may meet its own limit.
    assert other["status"] in ("completed", "timeout") and other["epochs_trained"] >= 1, other
    assert not (other["failure_reason"] or "").startswith("hung"), other
    assert "2 trials" in done.stdout, output


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2", "cmaes", "gp", "grid"])
def test_every_sampler_survives_rays_pickling_and_still_samples(sampler: str) -> None:
    """``tune.Tuner`` pickles its searcher with the sampler when an experiment starts: Optuna
    5.1's NSGA-II holds a lock that plain pickling refuses (the shipped quickstart study's
    sampler crashed ``pdenas search --backend ray``). Every sampler a study can name must
    round-trip through Ray's cloudpickle and then propose trials."""
    import optuna
    from ray import cloudpickle

    from pdenas.backends._sampling import make_sampler
    from pdenas.backends.ray import picklable
    from pdenas.study import StudyConfig

    config = StudyConfig.from_dict({"name": "pickle", "data": {"name": "digits"},
                                    "space": "quickstart", "sampler": {"name": sampler},
                                    "objectives": ["val_accuracy"]})
    made = picklable(make_sampler(config, lambda: {"x": [0.0, 0.5, 1.0]}))
    again = cloudpickle.loads(cloudpickle.dumps(made))
    assert type(again) is type(made)
    study = optuna.create_study(sampler=again, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=3)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    cloudpickle.dumps(again)  # and again, after sampling (Tune pickles at every checkpoint)
