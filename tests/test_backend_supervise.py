"""``backends._supervise``: how many worker processes a study's ``workers`` starts, and the one
progress bar that follows them."""

from __future__ import annotations

import pytest
import torch

from pdenas.backends import _supervise
from pdenas.backends._supervise import RecordFollower, worker_count
from pdenas.backends._watchdog import SUPERVISED_ENV
from pdenas.runs import RunFolder, TrialRecord


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_supervise, "_cpu_cores", lambda: 4)
    monkeypatch.delenv(SUPERVISED_ENV, raising=False)


@pytest.mark.parametrize(("threads", "expected"), [(1, 4), (2, 2), (3, 1), (8, 1), (None, 1)])
def test_auto_is_one_worker_per_threads_cores_on_a_cpu(four_cores: None, threads: int | None,
                                                       expected: int) -> None:
    assert worker_count("auto", "cpu", threads, "optuna") == expected


def test_auto_on_a_gpu_is_one_worker(four_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_count("auto", "cuda", 1, "optuna") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_count("auto", "auto", 1, "optuna") == 1  # "auto" finds the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_count("auto", "auto", 1, "optuna") == 4  # and the CPU where there is none


def test_a_count_is_taken_as_it_is(four_cores: None) -> None:
    assert worker_count(3, "cuda", None, "optuna") == 3
    assert worker_count(1, "cpu", 1, "optuna") == 1


def test_ray_and_a_supervised_worker_get_one(four_cores: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_count("auto", "cpu", 1, "ray") == 1
    assert worker_count(3, "cpu", 1, "ray") == 1
    monkeypatch.setenv(SUPERVISED_ENV, "1")  # a worker never starts workers of its own
    assert worker_count("auto", "cpu", 1, "optuna") == 1
    assert worker_count(3, "cpu", 1, "optuna") == 1


class _Bar:
    def __init__(self) -> None:
        self.started: tuple | None = None
        self.updates: list[tuple[int, str]] = []

    def start(self, done: int, total: int, best: float | None) -> None:
        self.started = (done, total, best)

    def update(self, record: TrialRecord) -> None:
        self.updates.append((record.number, str(record.status)))


def test_the_follower_reports_each_finished_trial_once(tmp_path) -> None:
    """One bar for several workers: trials finished before it started count as done, then each
    trial that reaches a final status that uses the budget is reported once; running and lost
    trials are not."""
    run = RunFolder(tmp_path)

    def write(number: int, status: str, accuracy: float | None = None) -> None:
        run.trial(number).write_record(TrialRecord(number=number, status=status,
                                                   val_accuracy=accuracy))

    write(0, "completed", 0.8)
    write(1, "pruned", 0.5)
    write(2, "running")
    bar = _Bar()
    follower = RecordFollower(run, bar, total=6, interval=3600)
    assert bar.started == (2, 6, 0.8)
    write(2, "completed", 0.9)
    write(3, "lost")
    write(4, "infeasible")
    follower()  # within the interval: nothing read
    assert bar.updates == []
    run.trial(5).path.mkdir(parents=True)
    run.trial(5).record_path.write_text("{not json")  # unreadable: skipped, read again later
    follower(force=True)
    assert bar.updates == [(2, "completed"), (4, "infeasible")]
    assert 3 in follower.seen  # over without using the budget: not read again
    write(5, "timeout", 0.7)
    follower(force=True)
    assert bar.updates == [(2, "completed"), (4, "infeasible"), (5, "timeout")]
    follower(force=True)
    assert len(bar.updates) == 3
