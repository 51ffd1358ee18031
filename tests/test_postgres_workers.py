"""Several ``pdenas search`` workers on one PostgreSQL study: the budget is shared, each trial runs
once, and a worker killed mid-trial has its trial retried by the others.

Needs a PostgreSQL server (the ``postgres_url`` fixture starts one on 127.0.0.1): skipped without
it on a developer machine, failed under CI.
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
import yaml

pytestmark = [pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

FINAL = {"completed", "stopped", "infeasible", "diverged", "oom", "failed"}


def _worker(study: Path, run_dir: Path, url: str, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pdenas.cli", "search", str(study), "--storage", url,
               "--out", str(run_dir), "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(worker: subprocess.Popen, timeout: float = 180) -> str:
    try:
        output = worker.communicate(timeout=timeout)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output[-3000:]
    return output


def _trials(url: str, name: str) -> list:
    import optuna

    from pdenas.backends.optuna import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=make_storage(url)).get_trials()
    except KeyError:  # the worker has not created the study yet
        return []


def test_two_workers_share_one_budget(postgres_url, tiny_study, tmp_path):
    # Trials long enough (about a second here) that both workers are up before the queue is empty.
    study = tiny_study(n_trials=6, train={"epochs": 8, "batch_size": 32, "augment": False})
    name = yaml.safe_load(study.read_text())["name"]
    run_dir = tmp_path / "run"
    workers = [_worker(study, run_dir, postgres_url) for _ in range(2)]
    for worker in workers:
        _finish(worker)

    trials = _trials(postgres_url, name)
    finished = [t for t in trials if t.user_attrs.get("status") in FINAL]
    assert len(finished) == 6, [(t.number, t.state, t.user_attrs.get("status")) for t in trials]
    assert all(t.state.name != "WAITING" for t in trials)
    numbers = [t.number for t in finished]
    assert len(set(numbers)) == len(numbers)
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers ran trials
    records = sorted(int(p.parent.name) for p in (run_dir / "trials").glob("*/record.json"))
    assert records == sorted(numbers)
    for number in numbers:
        record = json.loads((run_dir / "trials" / str(number) / "record.json").read_text())
        assert record["number"] == number and record["status"] in FINAL


def test_killed_workers_trial_is_retried(postgres_url, tiny_study, tmp_path):
    study = tiny_study(n_trials=3, train={"epochs": 10, "batch_size": 32, "augment": False})
    name = yaml.safe_load(study.read_text())["name"]
    run_dir = tmp_path / "run"
    beats = {"PDENAS_HEARTBEAT_INTERVAL": "1", "PDENAS_GRACE_PERIOD": "3"}

    doomed = _worker(study, run_dir, postgres_url, **beats)
    try:
        deadline = time.monotonic() + 120
        started = False
        while not started and time.monotonic() < deadline and doomed.poll() is None:
            running = [t for t in _trials(postgres_url, name) if t.state.name == "RUNNING"]
            started = any(1 <= len(t.user_attrs.get("history") or []) <= 5 for t in running)
            time.sleep(0.05)
        assert started, "no trial of the first worker got to its first epoch"
        os.kill(doomed.pid, signal.SIGKILL)  # mid-trial: its heartbeat stops
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    running = [t for t in _trials(postgres_url, name) if t.state.name == "RUNNING"]
    assert len(running) == 1  # the dead worker's trial, left running
    victim = running[0]

    _finish(_worker(study, run_dir, postgres_url, **beats))

    trials = {t.number: t for t in _trials(postgres_url, name)}
    killed = trials[victim.number]
    assert killed.state.name == "FAIL" and killed.user_attrs.get("status") == "running"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == victim.params
    assert retries[0].user_attrs["status"] in FINAL
    finished = [t for t in trials.values() if t.user_attrs.get("status") in FINAL]
    assert len(finished) == 3  # the budget: the killed trial's retry replaces it
