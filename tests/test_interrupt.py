"""Ctrl-C that Python swallows in a finaliser still stops training, and SIGTERM and SIGHUP stop a
search as Ctrl-C does (``pdenas._interrupt``)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time

import pytest
import torch

from pdenas._interrupt import catch_interrupts, exit_status, raise_if_interrupted

# The finaliser's ignored KeyboardInterrupt is the point of these tests, not a fault in them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _InterruptedWhileCollected:
    """Gets SIGINT inside ``__del__``, where Python ignores the ``KeyboardInterrupt``."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside the finaliser


def _swallowed_interrupt() -> None:
    thing = _InterruptedWhileCollected()
    del thing
    gc.collect()


def test_a_ctrl_c_swallowed_in_a_finaliser_is_raised_at_the_next_check() -> None:
    with catch_interrupts():
        _swallowed_interrupt()  # prints "Exception ignored in ..." and goes on
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    raise_if_interrupted()  # outside, the flag is cleared: nothing to raise


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_are_taken_as_ctrl_c_inside(name: str) -> None:
    """``kill``, a scheduler's end of job, a closed terminal: the search gives its trial back as
    after Ctrl-C, instead of dying with it running; outside, the default action is back."""
    sig = getattr(signal, name)
    # As in a fresh `pdenas search` (in this test process, ray.init may have set its own).
    previous = signal.signal(sig, signal.SIG_DFL)
    try:
        with catch_interrupts():
            with pytest.raises(KeyboardInterrupt) as stop:
                os.kill(os.getpid(), sig)
                time.sleep(1)
            assert exit_status(stop.value) == 128 + sig  # the CLI exits 143 after SIGTERM
            with pytest.raises(KeyboardInterrupt) as again:
                raise_if_interrupted()  # and a swallowed one is raised again, as for Ctrl-C
            assert exit_status(again.value) == 128 + sig
        assert signal.getsignal(sig) == signal.SIG_DFL
    finally:
        signal.signal(sig, previous)


def test_a_repeated_sigterm_does_not_cut_the_giving_back_short() -> None:
    """SIGTERM may come again while the search gives its trial back (Linux sends a worker one
    per thread of its dying supervisor): only the first raises. A second Ctrl-C still does."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gave_back = False
    try:
        with catch_interrupts():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the second SIGTERM is handled here, and raises nothing
                gave_back = True
            assert gave_back
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_handler_of_someone_elses_stays_in_charge() -> None:
    """A SIGTERM handler that another library set (Ray's driver sets one) is not replaced."""
    def theirs(signum, frame) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        with catch_interrupts():
            assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_the_user_ignores_stays_ignored() -> None:
    """``nohup pdenas search ...`` ignores SIGHUP: the search goes on when the terminal closes."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with catch_interrupts():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            raise_if_interrupted()  # nothing to raise
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_without_the_guard_the_swallowed_ctrl_c_is_lost() -> None:
    """What the guard is for: Python's own handler leaves no trace of the interrupt."""
    _swallowed_interrupt()
    raise_if_interrupted()  # nothing raised: the interrupt is gone


def test_training_stops_at_the_step_after_a_swallowed_ctrl_c() -> None:
    """``fit`` checks at every step: the interrupt that a finaliser swallowed ends training with
    ``KeyboardInterrupt`` (which the runner records as ``interrupted``, giving the trial back)."""
    from types import SimpleNamespace

    from torch import nn

    from pdenas.data import TensorSplit
    from pdenas.train import TrainConfig, fit

    def split(n: int) -> TensorSplit:
        return TensorSplit(torch.randn(n, 1, 4, 4), torch.randint(0, 2, (n,)))

    torch.manual_seed(0)
    data = SimpleNamespace(train=split(128), val=split(64), flip=False)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    epochs = []

    def swallow_after_the_first_epoch(epoch: int, metrics: dict) -> bool:
        epochs.append(epoch)
        if epoch == 1:
            _swallowed_interrupt()
        return False

    config = TrainConfig(epochs=3, batch_size=32, augment=False, clip_weights=None,
                         time_smoothness=0.0)
    with catch_interrupts(), pytest.raises(KeyboardInterrupt):
        fit(model, data, config, "cpu", callback=swallow_after_the_first_epoch)
    assert epochs == [1]  # stopped at the second epoch's first step, not after the epoch


def test_an_optuna_search_stops_after_a_swallowed_ctrl_c_and_resumes(tiny_study, tmp_path) -> None:
    """The Optuna backend's search runs inside the guard: a Ctrl-C swallowed after the first
    trial ends the search there (nothing lost), and a rerun finishes the budget."""
    from pdenas.backends import run_search
    from pdenas.results import load_trials
    from pdenas.study import StudyConfig

    class SwallowAfterFirstTrial:
        def start(self, done: int, total: int, best: float | None) -> None:
            self.updates = 0

        def update(self, record) -> None:
            self.updates += 1
            if self.updates == 1:
                _swallowed_interrupt()

    config = StudyConfig.load(tiny_study(n_trials=3))
    progress = SwallowAfterFirstTrial()
    with pytest.raises(KeyboardInterrupt):
        run_search(config, out=tmp_path / "run", quiet=True, progress=progress)
    assert progress.updates == 1
    assert len(load_trials(tmp_path / "run")) == 1
    run_search(config, out=tmp_path / "run", quiet=True)
    trials = load_trials(tmp_path / "run")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}


def _worker(code: int, seconds: float = 0.0) -> list[str]:
    return [sys.executable, "-c", f"import sys, time; time.sleep({seconds}); sys.exit({code})"]


def test_the_supervisor_reports_a_workers_interruption_as_one(monkeypatch) -> None:
    """A worker that gave its trial back after Ctrl-C (exit 130) makes the supervised search
    raise ``KeyboardInterrupt`` (the CLI's 130, the API's interrupt), never a worker failure;
    other exit statuses come back as they were."""
    from pdenas.backends import _supervise

    monkeypatch.setattr(_supervise, "POLL_SECONDS", 0.01)
    with pytest.raises(KeyboardInterrupt):
        _supervise.run_workers(_worker(_supervise.EXIT_INTERRUPTED), 2, None)
    assert _supervise.run_workers(_worker(3), 2, None) == [3, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_supervisor_stops_after_a_ctrl_c_it_swallowed(monkeypatch) -> None:
    """The supervising process may lose its own Ctrl-C in a finaliser too: it still waits for
    its workers and raises, instead of running on (here the workers never saw the Ctrl-C and
    exit 0 after a second)."""
    from types import SimpleNamespace

    from pdenas.backends import _supervise

    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            _swallowed_interrupt()

    # Only the supervisor's clock is replaced: the finaliser's own sleep must stay real.
    monkeypatch.setattr(_supervise, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    with pytest.raises(KeyboardInterrupt):
        _supervise.run_workers(_worker(0, seconds=1.0), 1, None)
    assert len(polls) == 1  # raised at the first check after the interrupt
