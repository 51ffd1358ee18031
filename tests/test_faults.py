"""Faults and hostile input (issue 12): workers that differ in sampling, trials that go stale even
before their first heartbeat, a candidate that kills its worker twice, a slow worker whose trial
was retried by another, heartbeat settings, storage URLs and locks, passwords kept out of files,
CIFAR pickles read without running code, export files checked before a model is built, and the
same search twice giving the same trials."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from pdenas.backends._sampling import check_options, claim_seed, make_sampler
from pdenas.backends._storage import (budget_lock, check_storage_url, heartbeat_settings,
                                      make_storage, redact_url)
from pdenas.backends.optuna import (_owned, _Superseded, claim_trial, counts_toward_budget,
                                    fail_stale, open_study)
from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import StudyConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPACE = """
families: [parabolic, resnet]
num_units: 1
depth: {low: 1, high: 2}
width: {base: {low: 4, high: 8, step: 4}, growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
activation: relu
norm: tv
reversible: false
"""


def tiny_study(folder: Path, **extra: object) -> StudyConfig:
    (folder / "space.yaml").write_text(TINY_SPACE)
    data = {"name": "tiny", "data": {"name": "digits", "train_limit": 200}, "space": "space.yaml",
            "train": {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.05},
            "sampler": "tpe", "n_trials": 3, "device": "cpu", "seed": 3, **extra}
    path = folder / "tiny.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return StudyConfig.load(path).replace(cover_families=False)


@pytest.fixture
def beats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDENAS_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("PDENAS_GRACE_PERIOD", "2")


# --- sampling: workers differ, one worker is reproducible ---------------------------------------
def test_two_workers_with_the_same_history_suggest_different_candidates(tmp_path: Path) -> None:
    config = StudyConfig(name="two", sampler="random", seed=5)
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(config, url)
    workers = [open_study(config, url) for _ in range(2)]
    suggested = []
    for study in workers:  # each claims with the history the other left
        trial = claim_trial(study, 4, (), lambda k: make_sampler(config, stored=k))
        suggested.append(trial.suggest_float("x", 0, 1))
    assert suggested[0] != suggested[1]
    # what each claim suggests depends on the seed and the count only: reproducible
    assert claim_seed(5, 1) == claim_seed(5, 1) != claim_seed(5, 2) != claim_seed(6, 2)


def test_one_seed_two_searches_give_the_same_trials(tmp_path: Path) -> None:
    from pdenas.backends import run_search

    boards = []
    for k in range(2):
        folder = tmp_path / str(k)
        folder.mkdir()
        run = run_search(tiny_study(folder), out=folder / "run", quiet=True)
        boards.append([(r.number, r.params, r.val_accuracy, r.status.value)
                       for r in run.records()])
    assert len(boards[0]) == 3 and all(b[3] == "completed" for b in boards[0])
    assert boards[0] == boards[1]


# --- heartbeats, stale trials, retries ------------------------------------------------------------
def test_bad_heartbeat_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDENAS_HEARTBEAT_INTERVAL", "ten")
    with pytest.raises(ValueError, match="^PDENAS_HEARTBEAT_INTERVAL: got 'ten'"):
        heartbeat_settings()
    monkeypatch.setenv("PDENAS_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("PDENAS_GRACE_PERIOD", "5")
    with pytest.raises(ValueError, match="^PDENAS_GRACE_PERIOD: got 5; allowed: more seconds"):
        heartbeat_settings()
    monkeypatch.setenv("PDENAS_GRACE_PERIOD", "30")
    assert heartbeat_settings() == (10, 30)


def test_a_bad_hung_grace_is_refused_before_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas.backends.optuna import OptunaBackend

    config = StudyConfig(name="t", trial_timeout=20)
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("PDENAS_HUNG_GRACE", bad)
        with pytest.raises(ValueError, match=f"^PDENAS_HUNG_GRACE: got '{bad}'; allowed: seconds >= 0"):
            OptunaBackend.check(config)
    monkeypatch.setenv("PDENAS_HUNG_GRACE", "3")
    OptunaBackend.check(config)


def test_a_trial_killed_before_its_first_heartbeat_goes_stale(tmp_path: Path, beats) -> None:
    run = RunFolder(tmp_path / "run")
    study = open_study(StudyConfig(name="early"), f"sqlite:///{tmp_path / 's.db'}")
    trial = claim_trial(study, 2)  # the worker dies right here: no heartbeat thread ever ran
    time.sleep(3)
    assert fail_stale(study, run) == [trial.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_candidate_that_kills_its_worker_twice_becomes_failed(tmp_path: Path, beats) -> None:
    run = RunFolder(tmp_path / "run")
    study = open_study(StudyConfig(name="oomkill"), f"sqlite:///{tmp_path / 's.db'}")
    for attempt in range(2):
        trial = claim_trial(study, 1)
        assert trial is not None
        trial.set_user_attr("status", "running")
        run.trial(trial.number).write_record(TrialRecord(number=trial.number))
        time.sleep(3)  # killed by the OOM killer: the heartbeat stops
        assert fail_stale(study, run) == [trial.number]
    assert run.trial(0).read_record().status is TrialStatus.LOST
    failed = run.trial(1).read_record()
    assert failed.status is TrialStatus.FAILED and "died 2 times" in failed.failure_reason
    assert not study.get_trials(states=(TrialState.WAITING,))  # no third try
    assert counts_toward_budget(study.get_trials()[1])
    assert claim_trial(study, 1) is None  # the study goes on: its budget is used


def test_a_result_recorded_before_the_worker_died_is_lost_when_a_copy_runs(
        tmp_path: Path, beats) -> None:
    run = RunFolder(tmp_path / "run")
    study = open_study(StudyConfig(name="late"), f"sqlite:///{tmp_path / 's.db'}")
    trial = claim_trial(study, 1)
    trial.set_user_attr("status", "running")
    # killed between writing its final record and telling the storage
    run.trial(0).write_record(TrialRecord(number=0, status=TrialStatus.COMPLETED))
    time.sleep(3)
    assert fail_stale(study, run) == [0]
    assert run.trial(0).read_record().status is TrialStatus.LOST  # else ranked twice
    assert study.get_trials()[-1].state == TrialState.WAITING


def test_a_slow_workers_write_to_a_retried_trial_is_superseded(tmp_path: Path) -> None:
    study = open_study(StudyConfig(name="slow"), f"sqlite:///{tmp_path / 's.db'}")
    trial = claim_trial(study, 2)
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # another worker
    with pytest.raises(_Superseded), _owned(study, trial):
        trial.set_user_attr("history", [])
    with pytest.raises(_Superseded), _owned(study, trial):
        study.tell(trial, [0.5])


def test_search_goes_on_when_another_worker_failed_the_running_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from pdenas.backends import TrialRunner, run_search

    original, calls = TrialRunner.run, []

    def run_and_be_overtaken(self, number, *args, **kwargs):
        if not calls:  # while this worker is paused, another one fails its trial and queues a copy
            study = optuna.load_study(study_name="tiny",
                                      storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
            frozen = study.get_trials()[number]
            study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
            study.enqueue_trial(frozen.params)
        calls.append(number)
        return original(self, number, *args, **kwargs)

    monkeypatch.setattr(TrialRunner, "run", run_and_be_overtaken)
    run = run_search(tiny_study(tmp_path, n_trials=2), out=tmp_path / "run", quiet=True)
    records = {r.number: r for r in run.records()}
    assert records[0].status is TrialStatus.LOST  # not overwritten as completed or failed
    assert [r.status for n, r in records.items() if n > 0] == [TrialStatus.COMPLETED] * 2
    assert records[1].params == records[0].params  # the copy
    assert "failed by another worker" in caplog.text


def test_memory_error_is_an_oom_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas.backends import run_search

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("pdenas.train.fit", no_memory)
    run = run_search(tiny_study(tmp_path, n_trials=1), out=tmp_path / "run", quiet=True)
    (record,) = run.records()
    assert record.status is TrialStatus.OOM and "out of host memory" in record.failure_reason


# --- storages, locks, secrets -----------------------------------------------------------------------
def test_in_memory_sqlite_is_refused() -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="in-memory database"):
            check_storage_url(url)
    check_storage_url("sqlite:///x.db")


def test_sqlite_waits_for_a_busy_database(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert storage.engine.dialect.name == "sqlite"
    import sqlite3

    holder = sqlite3.connect(tmp_path / "s.db", check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    start = time.monotonic()

    def release() -> None:
        time.sleep(1.0)
        holder.rollback()

    import threading

    threading.Thread(target=release, daemon=True).start()
    optuna.create_study(study_name="busy", storage=storage)  # waits instead of "database is locked"
    assert time.monotonic() - start >= 0.9


def test_passwords_are_redacted() -> None:
    assert redact_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert "s3cret" not in redact_url("cannot open postgresql+psycopg2://bob:s3cret@h/x: refused")
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"


def test_run_json_holds_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas.backends import run_search
    from pdenas.backends.optuna import OptunaBackend

    url = f"sqlite:///{tmp_path / 's.db'}"
    secret = "postgresql://bob:s3cret@db/x"

    def prepare(self, data):  # a study on SQLite that believes it is on PostgreSQL
        self.data, self._grid = data, None
        self.study = open_study(self.config, url)
        self.storage, self.storage_url = secret, url

    monkeypatch.setattr(OptunaBackend, "prepare", prepare)
    monkeypatch.setattr(OptunaBackend, "search", lambda self, *a: None)
    config = tiny_study(tmp_path).replace(storage=secret)
    run = run_search(config, out=tmp_path / "run", quiet=True)
    text = run.info_path.read_text()
    assert "s3cret" not in text and "bob:***@db" in text


def test_postgres_lock_has_a_deadline(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDENAS_LOCK_TIMEOUT", "1")
    import threading

    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with budget_lock(postgres_url, "locked"):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    start = time.monotonic()
    with pytest.raises(ValueError, match="budget lock of 'locked' was not free within 1 s"):
        with budget_lock(postgres_url, "locked"):
            pass
    assert time.monotonic() - start < 5
    done.set()
    thread.join()
    with budget_lock(postgres_url, "locked"):  # released: free again
        pass


def test_sampler_options_are_checked_before_anything_runs() -> None:
    cases = [({"sampler": {"name": "tpe", "n_startup_trials": "5"}},
              "sampler.n_startup_trials: got '5'; allowed: an integer"),
             ({"sampler": {"name": "random", "colour": 1}},
              "sampler.colour: unknown option of RandomSampler"),
             ({"sampler": {"name": "tpe", "multivariate": "yes"}},
              "sampler.multivariate: got 'yes'; allowed: true or false")]
    for extra, message in cases:
        with pytest.raises(ValueError) as caught:
            check_options(StudyConfig.from_dict({"name": "x", **extra}))
        assert str(caught.value).startswith(message), caught.value


# --- files that may be hostile --------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_cifar_pickles_run_no_code(tmp_path: Path) -> None:
    from pdenas.data import DataConfig, DataUnavailableError, load_data

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        x = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": x, "labels": [0, 1]}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    _Payload.target = str(tmp_path / "pwned")
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": _Payload(), "labels": [0]}))
    with pytest.raises(DataUnavailableError, match="refusing to load pathlib"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_load_export_checks_sizes_before_building(tmp_path: Path) -> None:
    import torch

    from pdenas import Architecture, build_model
    from pdenas.export import load_export, save_export

    arch = Architecture(family="resnet", widths=(4, 4), depths=(1,), step_size=0.5,
                        in_channels=1, num_classes=3)
    path = save_export(tmp_path / "model.pt", build_model(arch), mean=[0.5], std=[0.2],
                       classes=["a", "b", "c"])
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["widths"] = [10**6, 10**6]  # would allocate terabytes
    torch.save(payload, tmp_path / "huge.pt")
    with pytest.raises(ValueError, match=r"architecture.widths: got 1000000; allowed: at most"):
        load_export(tmp_path / "huge.pt")
    payload["architecture"]["widths"] = [8, 8]  # within the caps, but not the file's tensors
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="weights do not fit the architecture"):
        load_export(tmp_path / "other.pt")
    assert load_export(path).architecture == arch


def test_card_does_not_advise_loading_torchscript_blindly() -> None:
    import inspect

    from pdenas.export import _card

    source = inspect.getsource(_card)
    # TorchScript (which is code) is no longer written; the card names only loaders that run no
    # pickled code: weights_only, torch.export, safetensors, onnxruntime.
    assert "torch.jit" not in source and "weights_only" in source and "torch.export.load" in source


def test_ray_token_authentication_is_left_alone() -> None:
    text = (Path(__file__).resolve().parents[1] / "pdenas/backends/ray.py").read_text()
    assert 'setdefault("RAY_AUTH_MODE"' not in text


def test_stored_run_json_round_trip(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.write_info(study_name="s", backend="optuna", config={"name": "s"})
    info = json.loads(run.info_path.read_text())
    del info["storage"]
    run.info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="no storage entry"):
        run.read_info()
