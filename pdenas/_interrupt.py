"""Ctrl-C that a search does not lose, and the other signals that ask a search to stop.

Python delivers SIGINT as a ``KeyboardInterrupt`` raised wherever the main thread happens to be.
When that is inside a finaliser (a ``__del__``, a weakref callback: SQLAlchemy and torch run such
code during garbage collection), Python prints "Exception ignored in ..." and carries on, so the
user's Ctrl-C is silently dropped and the search runs to its end. Within ``catch_interrupts`` the
signal also sets a flag; ``raise_if_interrupted`` (called at every training step, between
trials, and by the process that supervises worker processes at every poll) raises the interrupt
again where it was swallowed.

SIGTERM (``kill``, ``timeout``, a batch scheduler's end of job, ``docker stop``, a worker's
supervisor dying) and SIGHUP (the terminal closed) are taken the same way inside
``catch_interrupts``: the running trial is given back to the study, as after Ctrl-C, instead of
the process dying with the trial left running until its heartbeat goes stale. Only the first of
them raises: they can come several times (Linux tells a worker of its supervisor's death once per
thread of the supervisor), and a second one must not cut short the giving back, as a second
Ctrl-C, typed on purpose, does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["STOP_SIGNALS", "Stopped", "catch_interrupts", "exit_status", "raise_if_interrupted"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
"""The signals taken as Ctrl-C inside ``catch_interrupts`` (SIGHUP where the platform has it)."""

# A plain flag (the signal's number, 0 for none), not a threading.Event: a handler may run inside
# another handler (a second signal between two bytecodes of the first), and Event.set() takes a
# lock that the interrupted handler may be holding, which would hang the process.
_requested = 0


class Stopped(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` a stop signal raises inside ``catch_interrupts``.

    Args:
        signum: The signal (SIGINT, SIGTERM, SIGHUP).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's exit status for a process stopped by ``stop``: 128 plus the signal's number
    (130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP)."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


@contextmanager
def catch_interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set the flag and raise ``KeyboardInterrupt``, while inside
    (SIGTERM and SIGHUP only the first time).

    Does nothing off the main thread. A signal that already has a handler of someone else's (a
    notebook's or Ray Tune's SIGINT handler: Python's default one is ours to replace, as is the
    default action of the others) keeps it.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        global _requested
        if signum != signal.SIGINT and _requested:
            return  # already stopping; a second Ctrl-C, not a repeated SIGTERM, cuts it short
        _requested = signum
        raise Stopped(signum)

    ours = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS
            if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)}
    if not ours:  # inside another catch_interrupts, or every signal is someone else's
        yield
        return
    _requested = 0
    for sig in ours:
        signal.signal(sig, interrupted)
    try:
        yield
    finally:
        for sig, previous in ours.items():
            signal.signal(sig, previous)
        _requested = 0


def raise_if_interrupted() -> None:
    """Raises ``KeyboardInterrupt`` if a stop signal came (inside ``catch_interrupts``), even
    when the ``KeyboardInterrupt`` it raised then was swallowed."""
    if _requested:
        raise Stopped(_requested)
