"""Supervised worker processes: N ``pdenas worker RUN`` processes on one prepared run, each
replaced when its watchdog ended it for a hung trial (``_watchdog.EXIT_HUNG``).

The orchestrator (``backends._orchestrate``) uses them for a study with ``workers`` above 1
(``worker_count``) and for an Optuna study with a ``trial_timeout`` (one supervised worker, so
that a hung trial does not end the search), whether the study came from the command line or
``pdenas.search``; ``RecordFollower`` gives several workers one progress bar. The orchestrator
first prepares the run (the study, its storage and ``run.json`` are created once, since workers
that create a study at the same moment race on the storage's schema); every worker then reads
the resolved study from that folder's ``run.json`` and runs it, and they share the study's budget
through its storage. Nothing steers a worker but its command line (``worker_command``): no
environment variable that a process started by the user could inherit. The supervisor owns the
workers' signals (``run_workers``): they run in a process group of their own and get Ctrl-C,
``kill``, a closed terminal and Ctrl-Z from it, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pdenas._interrupt import catch_interrupts, raise_if_interrupted
from pdenas.backends._base import Progress
from pdenas.backends._cpus import cpu_cores as _cpu_cores
from pdenas.backends._watchdog import EXIT_HUNG
from pdenas.runs import RunFolder, TrialRecord

__all__ = ["EXIT_INTERRUPTED", "RecordFollower", "follow_supervisor", "needs_supervision",
           "run_workers", "worker_command", "worker_count"]

POLL_SECONDS = 0.2
EXIT_INTERRUPTED = 130
"""A worker's exit status after Ctrl-C (``pdenas worker`` gives its trial back and exits so)."""


def needs_supervision(trial_timeout: float | None, backend: str) -> bool:
    """Whether a search should run in a supervised worker: it has a per-trial time limit and
    runs trials in this process's backend (Optuna), where a hung trial could not be ended."""
    return trial_timeout is not None and backend == "optuna"


def worker_count(workers: int | str, device: str, threads: int | None, backend: str) -> int:
    """How many worker processes a search starts on this machine for the study's ``workers``.

    "auto" is one worker per ``threads`` cores of this process's CPUs when the study trains on
    the CPU with ``threads`` set (a 2-core machine and ``threads: 1``: 2 workers; at most
    ``MAX_WORKERS``); with ``threads`` unset torch already uses every core in one process, and
    on a GPU several workers are a choice about its memory, so both give 1. The Ray backend
    (which runs trials side by side itself) always gets 1.

    Args:
        workers: The study's ``workers``: an integer or "auto".
        device: The study's device ("auto", "cpu" or "cuda").
        threads: The study's torch threads per worker.
        backend: "optuna" or "ray".
    """
    if backend != "optuna":
        return 1
    if workers != "auto":
        return int(workers)
    from pdenas.study import MAX_WORKERS

    if threads is None or not _on_cpu(device):
        return 1
    return max(1, min(MAX_WORKERS, _cpu_cores() // threads))


def worker_threads(workers: int, device: str, threads: int | None) -> int | None:
    """Torch threads per worker: the study's ``threads``, or, when it is unset and several
    workers train on the CPU, this process's cores shared among them (torch's default of one
    thread per core in each would put two threads on each core, where OpenMP's waiting threads
    stall one another; under CI, a tiny network's calibration then predicted 15 s an epoch)."""
    if threads is not None or workers <= 1 or not _on_cpu(device):
        return threads
    return max(1, _cpu_cores() // workers)


def _on_cpu(device: str) -> bool:
    """Whether a study's device ("auto", "cpu" or "cuda") trains on the CPU here."""
    import torch

    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def worker_command(run_path: str | Path, *, quiet: bool, storage: str | None = None) -> list[str]:
    """A worker's command line, ``pdenas worker RUN`` (``run_workers`` adds ``--supervisor``
    and the time left as ``--timeout``). The worker reads the study from ``RUN/run.json``;
    ``storage`` is the study's storage URL, which ``run.json`` keeps without its password."""
    command = [sys.executable, "-m", "pdenas", "worker", str(run_path)]
    if quiet:
        command.append("--quiet")
    if storage:
        command += ["--storage", storage]
    return command


def run_workers(command: Sequence[str], workers: int, timeout: float | None,
                poll: Callable[[], None] | None = None) -> list[int]:
    """Runs ``workers`` copies of ``command`` until each has exited other than hung.

    The workers run in a process group of their own, so that signals reach them from this
    process only, once each: Ctrl-C, SIGTERM and SIGHUP here become one SIGINT to each worker
    (which gives its trial back and exits), Ctrl-Z (SIGTSTP) stops them with this process and
    SIGCONT resumes them. A worker also stops when this process dies without passing
    anything on (``kill -9``; Linux, see ``follow_supervisor``: SIGTERM then), rather than
    searching on unseen.

    Args:
        command: A worker's command line (``worker_command``).
        workers: How many run at once.
        timeout: Seconds after which no worker starts a new trial (each gets the time left).
        poll: Called while they run, every fraction of a second (a ``RecordFollower``).

    Returns:
        The workers' exit statuses.

    Raises:
        KeyboardInterrupt: After a stop signal here, once every worker has given its trial back
            and exited; also when this process missed the Ctrl-C (Python swallowed it in a
            finaliser) or only a worker was interrupted, so that a worker's interruption is
            never reported as a failure.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def start() -> subprocess.Popen | None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < 1:  # too little for a worker to start a trial
            return None
        extra = ["--supervisor", str(os.getpid())]
        if left is not None:
            extra += ["--timeout", f"{left:.1f}"]
        return subprocess.Popen([*command, *extra], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, **_OWN_GROUP)

    pool = _Workers(start)
    with catch_interrupts(), pool.pausing_with_this_process():
        codes = pool.supervise(workers, poll or (lambda: None))
    if EXIT_INTERRUPTED in codes:
        raise KeyboardInterrupt("a worker was interrupted; run the same command to resume")
    return codes


# A process group of the worker's own (POSIX): the terminal's Ctrl-C and Ctrl-Z go to the
# foreground group, this process's, and it passes them on once. Windows keeps the default.
_OWN_GROUP: dict[str, Any] = {"process_group": 0} if os.name == "posix" else {}


class _Workers:
    """The running worker processes of one ``run_workers`` call.

    Args:
        start: Starts a worker, or returns None when none should start (no time left).
    """

    def __init__(self, start: Callable[[], subprocess.Popen | None]) -> None:
        self.start = start
        self.running: list[subprocess.Popen | None] = []

    def live(self) -> list[subprocess.Popen]:
        return [w for w in self.running if w is not None and w.poll() is None]

    def supervise(self, workers: int, poll: Callable[[], None]) -> list[int]:
        """Polls the workers, restarting hung ones, until all have exited; after a stop
        signal, stops them (``stop``) and raises again."""
        codes: list[int] = []
        try:
            for _ in range(workers):  # one by one: a stop signal meanwhile stops those started
                self.running.append(self.start())
            while any(self.running):
                for i, worker in enumerate(self.running):
                    if worker is None or worker.poll() is None:
                        continue
                    if worker.returncode == EXIT_HUNG:  # its trial is recorded; a new one goes on
                        print(f"pdenas: a trial hung past its time limit and was recorded as "
                              f"timeout; worker {i + 1} was restarted", file=sys.stderr)
                        self.running[i] = self.start()
                        continue
                    codes.append(worker.returncode)
                    self.running[i] = None
                poll()
                time.sleep(POLL_SECONDS)
                raise_if_interrupted()
        except KeyboardInterrupt:
            self.stop()
            raise
        return codes

    def stop(self) -> None:
        """Sends each running worker one SIGINT (it gives its trial back and exits) and waits
        for them all; a stop signal that comes meanwhile is passed on too (a worker's second
        Ctrl-C ends it at once, as in a terminal)."""
        self._signal(signal.SIGINT)
        while True:
            try:
                for worker in self.running:
                    if worker is not None:
                        worker.wait()
                return
            except KeyboardInterrupt:
                self._signal(signal.SIGINT)

    def _signal(self, sig: int) -> None:
        for worker in self.live():
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(sig)

    @contextlib.contextmanager
    def pausing_with_this_process(self) -> Iterator[None]:
        """While inside, Ctrl-Z (SIGTSTP) stops the workers and then this process, and they
        go on together when this one is continued (``fg``, ``bg``, SIGCONT). Does nothing where
        SIGTSTP has a handler already, or off the main thread."""
        tstp = getattr(signal, "SIGTSTP", None)
        if (tstp is None or threading.current_thread() is not threading.main_thread()
                or signal.getsignal(tstp) != signal.SIG_DFL):
            yield
            return

        def pause(signum: int, frame: FrameType | None) -> None:
            self._signal(signal.SIGSTOP)
            signal.signal(tstp, signal.SIG_DFL)
            os.kill(os.getpid(), tstp)  # stops here; returns once continued
            signal.signal(tstp, pause)
            self._signal(signal.SIGCONT)

        signal.signal(tstp, pause)
        try:
            yield
        finally:
            signal.signal(tstp, signal.SIG_DFL)


def follow_supervisor(supervisor: int) -> None:
    """In a worker that ``run_workers`` started (``supervisor``: its process id): asks Linux to send this process SIGTERM when
    the process that started it dies, however it dies (``kill -9`` included, which passes
    nothing on), so that an orphaned worker gives its trial back and exits instead of searching
    on unseen. Where the supervisor is already gone, exits at once with ``EXIT_INTERRUPTED``.
    Elsewhere than Linux (no ``prctl``) it does nothing.

    SIGTERM, not SIGINT: Linux may send it once per thread of the dying supervisor, and only
    the first SIGTERM stops a search (``pdenas._interrupt``), where a second SIGINT would cut
    the giving back short.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # prctl is variadic: its arguments must go as unsigned longs, whole (an int leaves the upper
    # half of the register undefined, and the kernel then refuses the signal now and then).
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    pr_set_pdeathsig = 1
    if prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:  # not allowed here (a sandbox)
        logging.getLogger(__name__).debug("prctl(PR_SET_PDEATHSIG) failed: errno %d",
                                          ctypes.get_errno())
        return
    if os.getppid() != supervisor:  # it died before the request above took effect
        sys.exit(EXIT_INTERRUPTED)


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
