"""Supervised worker processes: N ``pdenas search`` processes on one prepared run, each replaced
when its watchdog ended it for a hung trial (``_watchdog.EXIT_HUNG``).

Used by ``pdenas search --workers N`` or of a study with ``workers`` above 1
(``worker_count``), by ``pdenas search`` of a study with a ``trial_timeout`` (one supervised
worker, so that a hung trial does not end the search) and by ``pdenas.search`` for such studies;
``RecordFollower`` gives several workers one progress bar. The caller first prepares the run
(``run_search(..., prepare_only=True)``: the study and the run folder are created once, since
workers that create a study at the same moment race on the storage's schema); every worker then
runs the same search command against that folder, and they share the study's budget through its
storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pdenas._interrupt import catch_interrupts, raise_if_interrupted
from pdenas.backends._base import Progress
from pdenas.backends._watchdog import EXIT_HUNG, SUPERVISED_ENV
from pdenas.runs import RunFolder, TrialRecord

__all__ = ["EXIT_INTERRUPTED", "RecordFollower", "assignments", "needs_supervision", "run_workers",
           "search_command", "worker_count"]

POLL_SECONDS = 0.2
EXIT_INTERRUPTED = 130
"""A worker's exit status after Ctrl-C (``pdenas search`` gives its trial back and exits so)."""


def needs_supervision(trial_timeout: float | None, backend: str) -> bool:
    """Whether a search should run in a supervised worker: it has a per-trial time limit, runs
    trials in this process's backend (Optuna), and is not already a supervised worker."""
    return (trial_timeout is not None and backend == "optuna"
            and os.environ.get(SUPERVISED_ENV) != "1")


def worker_count(workers: int | str, device: str, threads: int | None, backend: str) -> int:
    """How many worker processes a search starts on this machine for the study's ``workers``.

    "auto" is one worker per ``threads`` cores of this process's CPUs when the study trains on
    the CPU with ``threads`` set (a 2-core machine and ``threads: 1``: 2 workers; at most
    ``MAX_WORKERS``); with ``threads`` unset torch already uses every core in one process, and
    on a GPU several workers are a choice about its memory, so both give 1. A supervised worker
    (a process a search started) and the Ray backend (which runs trials side by side itself)
    always get 1.

    Args:
        workers: The study's ``workers``: an integer or "auto".
        device: The study's device ("auto", "cpu" or "cuda").
        threads: The study's torch threads per worker.
        backend: "optuna" or "ray".
    """
    if backend != "optuna" or os.environ.get(SUPERVISED_ENV) == "1":
        return 1
    if workers != "auto":
        return int(workers)
    import torch

    from pdenas.study import MAX_WORKERS

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if threads is None or not on_cpu:
        return 1
    # The CPUs of this process's affinity; a container's CPU quota (cgroup cpu.max) is not read.
    return max(1, min(MAX_WORKERS, _cpu_cores() // threads))


def _cpu_cores() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def assignments(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested study overrides as ``--set`` items (``train.epochs=3``; values as JSON, which is
    YAML)."""
    items = []
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            items += assignments(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def search_command(study: str, run_path: str, *, quiet: bool, flags: Mapping[str, Any],
                   sets: Sequence[str] = (), tracks: Sequence[str] = ()) -> list[str]:
    """The worker's ``pdenas search`` command line (without ``--timeout``: ``run_workers`` adds
    the time left)."""
    command = [sys.executable, "-m", "pdenas.cli", "search", study, "--out", run_path]
    if quiet:
        command.append("--quiet")
    for flag, value in flags.items():
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    for item in sets:
        command += ["--set", item]
    for tracker in tracks:
        command += ["--track", tracker]
    return command


def run_workers(command: Sequence[str], workers: int, timeout: float | None,
                poll: Callable[[], None] | None = None) -> list[int]:
    """Runs ``workers`` copies of ``command`` until each has exited other than hung.

    Args:
        command: A worker's command line (``search_command``).
        workers: How many run at once.
        timeout: Seconds after which no worker starts a new trial (each gets the time left).
        poll: Called while they run, every fraction of a second (a ``RecordFollower``).

    Returns:
        The workers' exit statuses.

    Raises:
        KeyboardInterrupt: After every worker (which got the same Ctrl-C and gave its trial
            back) has exited; also when this process missed the Ctrl-C (Python swallowed it in
            a finaliser) or only a worker got it, so that a worker's interruption is never
            reported as a failure.
    """
    env = {**os.environ, SUPERVISED_ENV: "1"}
    deadline = None if timeout is None else time.monotonic() + timeout

    def start() -> subprocess.Popen | None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < 1:  # too little for a worker to start a trial
            return None
        extra = [] if left is None else ["--timeout", f"{left:.1f}"]
        return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, env=env)

    with catch_interrupts():
        codes = _supervise(start, workers, poll or (lambda: None))
    if EXIT_INTERRUPTED in codes:
        raise KeyboardInterrupt("a worker was interrupted; run the same command to resume")
    return codes


def _supervise(start: Callable[[], subprocess.Popen | None], workers: int,
               poll: Callable[[], None]) -> list[int]:
    """Polls the workers ``start`` makes, restarting hung ones, until all have exited; on
    Ctrl-C waits for the running ones (which give their trials back) and raises again."""
    running = [start() for _ in range(workers)]
    codes: list[int] = []
    try:
        while any(running):
            for i, worker in enumerate(running):
                if worker is None or worker.poll() is None:
                    continue
                if worker.returncode == EXIT_HUNG:  # its trial is recorded; a new worker goes on
                    print(f"pdenas: a trial hung past its time limit and was recorded as "
                          f"timeout; worker {i + 1} was restarted", file=sys.stderr)
                    running[i] = start()
                    continue
                codes.append(worker.returncode)
                running[i] = None
            poll()
            time.sleep(POLL_SECONDS)
            raise_if_interrupted()
    except KeyboardInterrupt:
        for worker in running:
            if worker is not None:
                worker.wait()
        raise
    return codes


class RecordFollower:
    """A progress bar for a search that runs in other processes (several workers): called
    often, it reads the run folder's records, at most every ``interval`` seconds, and tells
    ``progress`` of each trial that finished since: one bar for all workers, where theirs would
    garble each other's.

    Args:
        run: The run folder the workers write.
        progress: The bar; started here with the trials already finished.
        total: The study's ``n_trials``.
        interval: Seconds between reads of the folder.
    """

    def __init__(self, run: RunFolder, progress: Progress, total: int,
                 interval: float = 2.0) -> None:
        self.run, self.progress, self.interval = run, progress, interval
        self.seen: set[int] = set()
        finished = self._finished()
        self.seen.update(finished)
        best = max((r.val_accuracy for r in finished.values()
                    if r.status == "completed" and r.val_accuracy is not None), default=None)
        progress.start(len(finished), total, best)
        self.last = time.monotonic()

    def _finished(self) -> dict[int, TrialRecord]:
        """The records of trials not yet seen that are over and use the budget, by number
        (those over without using it, lost or interrupted, are only marked seen)."""
        finished = {}
        try:
            numbers = self.run.trial_numbers()
        except OSError:  # a shared folder that failed this once: read it at the next call
            return finished
        for number in numbers:
            if number in self.seen:
                continue
            folder = self.run.trial(number)
            try:
                record = folder.read_record() if folder.has_record() else None
            except (ValueError, OSError):  # unreadable now: read it again at the next call
                continue
            if record is None or not record.status.final:
                continue
            if record.status.uses_budget:
                finished[number] = record
            else:
                self.seen.add(number)
        return finished

    def __call__(self, force: bool = False) -> None:
        """Reports the trials finished since the last call (``force``: whatever the interval)."""
        if not force and time.monotonic() - self.last < self.interval:
            return
        self.last = time.monotonic()
        for number, record in sorted(self._finished().items()):
            self.seen.add(number)
            self.progress.update(record)
