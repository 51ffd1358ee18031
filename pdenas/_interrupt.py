"""Ctrl-C that a search does not lose.

Python delivers SIGINT as a ``KeyboardInterrupt`` raised wherever the main thread happens to be.
When that is inside a finaliser (a ``__del__``, a weakref callback: SQLAlchemy and torch run such
code during garbage collection), Python prints "Exception ignored in ..." and carries on, so the
user's Ctrl-C is silently dropped and the search runs to its end. Within ``catch_interrupts`` the
signal also sets a flag; ``raise_if_interrupted`` (called at every training step, between
trials, and by the process that supervises worker processes at every poll) raises the interrupt
again where it was swallowed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["catch_interrupts", "raise_if_interrupted"]

_requested = threading.Event()


@contextmanager
def catch_interrupts() -> Iterator[None]:
    """SIGINT sets the flag and raises ``KeyboardInterrupt`` as usual, while inside.

    Does nothing off the main thread, or where SIGINT already has a handler other than
    Python's default one (a notebook's, Ray Tune's), which stays in charge.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        _requested.set()
        raise KeyboardInterrupt

    _requested.clear()
    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _requested.clear()


def raise_if_interrupted() -> None:
    """Raises ``KeyboardInterrupt`` if Ctrl-C came (inside ``catch_interrupts``), even when the
    ``KeyboardInterrupt`` it raised then was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt
