"""pdenas's log lines: the time and the trial they belong to (``PDENAS_LOG=INFO`` shows every
epoch; with several trials at once, or in a file read later, a line needs both).

The trial lifecycle sets ``TRIAL`` while a trial runs; ``configure`` installs a format that
prints it (``-`` outside a trial).
"""

from __future__ import annotations

import contextvars
import logging

__all__ = ["FORMAT", "TRIAL", "configure"]

TRIAL: contextvars.ContextVar[int | None] = contextvars.ContextVar("pdenas_trial", default=None)
"""The number of the trial this thread is running, if any."""

FORMAT = "%(asctime)s %(levelname)s trial %(trial)s %(name)s: %(message)s"


class _TrialField(logging.Filter):
    """Adds ``trial`` (the running trial's number, or ``-``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        number = TRIAL.get()
        record.trial = "-" if number is None else number
        return True


def configure(level: str) -> None:
    """Logs at ``level`` to stderr with the time and the trial number (the command line's
    setting; a program that configured logging itself keeps its own). Lines go through
    ``tqdm.write``, so they never land on a progress bar's line."""
    from pdenas._progress import BarSafeHandler

    handler = BarSafeHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_TrialField())
    logging.basicConfig(level=level, handlers=[handler])
