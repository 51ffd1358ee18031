"""Ending a hung trial: one whose training stopped making progress past its time limit.

``trial_timeout`` is enforced by ``fit`` before every training step, so a trial that trains
stops within one step of its limit. A trial that never gets back to that check (a step, a
validation pass or a data read that does not return) cannot be stopped from inside its process:
Python cannot interrupt a call blocked in C++ or CUDA. The watchdog handles that case:

1. ``TrialRunner.run`` starts a ``Watchdog`` with the trial's end (start + ``trial_timeout``)
   plus a grace period (``grace_seconds``).
2. If the trial is still running then, the watchdog thread writes the trial's record as
   ``timeout`` with the reason (and the best completed epoch's weights, which ``fit`` keeps as a
   separate CPU copy), calls the backend's ``on_hung`` hook (the Optuna backend tells the study),
   and ends the worker process with ``EXIT_HUNG``.
3. Whoever started the worker goes on: the CLI and ``pdenas.search`` run trials with a time limit
   in supervised worker processes (``pdenas.backends._supervise``) and start a new worker, which
   claims the next trial; Ray Tune records the trial actor's death and starts the next trial.

A hung process is only ended where something restarts it (a ``pdenas worker`` started with
``--supervisor``, which calls ``restarted_by_supervisor``, or a Ray actor). Elsewhere the watchdog records the trial, logs an error and leaves
the process alone, so a user's interpreter is never killed under them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from pdenas.errors import InputError

__all__ = ["EXIT_HUNG", "Watchdog", "grace_seconds", "may_exit", "restarted_by_supervisor"]

_LOG = logging.getLogger("pdenas")

EXIT_HUNG = 75
"""Exit status of a worker the watchdog ended (EX_TEMPFAIL: start another and go on)."""

_supervised = False
"""Whether this process is a ``pdenas worker`` that its supervisor restarts when it exits with
``EXIT_HUNG`` (set by ``restarted_by_supervisor``; never inherited by other processes)."""


def restarted_by_supervisor() -> None:
    """Marks this process as a supervised worker: the watchdog may end it (``may_exit``)."""
    global _supervised
    _supervised = True


def grace_seconds(trial_timeout: float) -> float:
    """How long past its limit a trial may run before it counts as hung: the last step, the
    last validation pass and writing the weights must fit (a quarter of the limit, 10 s to
    120 s; ``PDENAS_HUNG_GRACE`` overrides it)."""
    override = os.environ.get("PDENAS_HUNG_GRACE")
    if override:
        try:
            seconds = float(override)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:
            raise InputError(f"PDENAS_HUNG_GRACE: got {override!r}; allowed: seconds >= 0")
        return seconds
    return min(max(trial_timeout / 4, 10.0), 120.0)


def may_exit() -> bool:
    """Whether something restarts this process when the watchdog ends it."""
    if _supervised:
        return True
    ray = sys.modules.get("ray")  # a Ray actor has imported it; never import it here
    if ray is None:
        return False
    try:  # a Ray Tune trial actor: Tune records the actor's death and goes on
        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - not inside a worker
        return False


class Watchdog:
    """Calls ``on_hung`` from a daemon thread if ``stop`` is not called before ``at``.

    Args:
        at: A ``time.monotonic()`` value: the trial's limit plus the grace period.
        on_hung: Records the hung trial; called once, from the watchdog thread.
        exit_process: End the process with ``EXIT_HUNG`` after ``on_hung`` (see ``may_exit``).
    """

    def __init__(self, at: float, on_hung: Callable[[], None], *, exit_process: bool) -> None:
        self._at = at
        self._on_hung = on_hung
        self._exit = exit_process
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._fired = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="pdenas-watchdog")

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Watchdog:
        """Starts watching; returns self."""
        self._thread.start()
        return self

    def stop(self) -> bool:
        """The trial ended (any way): the watchdog does nothing more.

        Returns:
            False if the watchdog had already fired (the trial is recorded as hung).
        """
        with self._lock:
            if self._fired:
                return False
            self._stopped.set()
            return True

    def _watch(self) -> None:
        if self._stopped.wait(max(self._at - time.monotonic(), 0.0)):
            return
        with self._lock:
            if self._stopped.is_set():
                return
            self._fired = True
        try:
            self._on_hung()
        except Exception:  # noqa: BLE001 - the process is ended below all the same
            _LOG.exception("recording the hung trial failed")
        if self._exit:
            logging.shutdown()
            os._exit(EXIT_HUNG)
        _LOG.error("the trial is hung and was recorded as timeout; this process cannot end a "
                   "call that does not return: interrupt it, or run the search from the CLI, "
                   "which restarts a hung worker")
