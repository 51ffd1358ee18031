"""What a search shows while it runs, told by the backend (or, for several workers, by
``backends._supervise.RecordFollower``) when the search starts and after each trial:

- on a terminal or in a notebook, a ``tqdm.auto`` bar (a widget in notebooks);
- in a pipe or a file (``pdenas search ... 2> log``), one line per finished trial (time, number,
  family, status, accuracy, seconds) and, every ``HEARTBEAT_SECONDS`` while trials run, one line
  per running trial (its epoch and accuracy so far, read from its record), so that a log says
  what happens long before the search ends.

``make_progress`` chooses. ``BarSafeHandler`` writes other libraries' log lines (MLflow's) above
the bar, never on its line.
"""

from __future__ import annotations

import datetime
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import StudyConfig

__all__ = ["HEARTBEAT_SECONDS", "BarSafeHandler", "LineProgress", "TqdmProgress", "make_progress"]

HEARTBEAT_SECONDS = 60.0
"""Seconds between the lines a log gets about the trials still running."""


def make_progress(config: StudyConfig, run: str | Path | None, quiet: bool = False,
                  stream: TextIO | None = None) -> TqdmProgress | LineProgress:
    """A bar where someone watches (a terminal, a notebook), lines where the output is kept (a
    pipe, a file), nothing when ``quiet``.

    Args:
        config: The study.
        run: The run folder (read for the heartbeat lines).
        quiet: Show nothing.
        stream: Where to write (default stderr).
    """
    stream = stream or sys.stderr
    if quiet or _interactive(stream) or run is None:
        return TqdmProgress(config, quiet=quiet)
    return LineProgress(config, Path(run), stream)


def _interactive(stream: TextIO) -> bool:
    """A terminal, or a notebook that can show a widget (its stderr is no terminal). A notebook
    without ipywidgets gets lines: tqdm would warn and fill the cell with one output per frame."""
    if "ipykernel" in sys.modules:
        return _widgets()
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _widgets() -> bool:
    """Whether tqdm can draw its notebook widget (ipywidgets importable, as ``tqdm.auto`` asks)."""
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return False
    return IProgress is not None


class BarSafeHandler(logging.Handler):
    """A logging handler that writes each line with ``tqdm.write``: a bar on the same stream is
    cleared, the line written, and the bar drawn again below it, so log lines never land on the
    bar's line (in a pipe or a file, where there is no bar, a plain line).

    Args:
        stream: Where to write (default: stderr at the time of each line).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # as logging.StreamHandler: a failed line never stops the program
            self.handleError(record)


class TqdmProgress:
    """A ``tqdm.auto`` progress bar of a search (a widget in notebooks, text in a terminal):
    trials done, the best accuracy so far, the time left and the last trial.

    Args:
        config: The study.
        quiet: Show nothing.
    """

    def __init__(self, config: StudyConfig, quiet: bool = False) -> None:
        self.config, self.quiet, self.bar, self.best = config, quiet, None, None
        self.start_time = time.monotonic()

    def start(self, done: int, total: int, best: float | None) -> None:
        """The search starts with ``done`` of ``total`` trials finished."""
        if self.quiet:
            return
        if "ipykernel" in sys.modules and not _widgets():  # text frames, not tqdm.auto's warning
            from tqdm.std import tqdm
        else:
            from tqdm.auto import tqdm

        self.best = best
        self.bar = tqdm(total=total, initial=done, desc=f"search {self.config.name}",
                        unit="trial", file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def update(self, record: TrialRecord) -> None:
        """A trial finished."""
        if record.status == "completed" and record.val_accuracy is not None:
            self.best = max(self.best or 0.0, record.val_accuracy)
        if self.bar is not None:
            self.bar.update(int(record.status.uses_budget))  # a skipped draw is not a trial used
            family = record.architecture.get("family")
            self._postfix(last=f"#{record.number} {family} {record.status}")

    def _postfix(self, last: str | None = None) -> None:
        parts = {"best": "-" if self.best is None else f"{100 * self.best:.1f}%"}
        if self.config.timeout:
            left = self.config.timeout - (time.monotonic() - self.start_time)
            parts["left"] = f"{max(0, left):.0f}s"
        if last:
            parts["last"] = last
        self.bar.set_postfix(parts)

    def close(self) -> None:
        """Closes the bar."""
        if self.bar is not None:
            self.bar.close()


class LineProgress:
    """One line per finished trial, and a heartbeat line per running trial every
    ``interval`` seconds (see the module docstring).

    Args:
        config: The study.
        run: The run folder (the running trials' records are read from it).
        stream: Where to write.
        interval: Seconds between heartbeats.
    """

    def __init__(self, config: StudyConfig, run: Path, stream: TextIO,
                 interval: float = HEARTBEAT_SECONDS) -> None:
        self.config, self.run, self.stream, self.interval = config, run, stream, interval
        self.best: float | None = None
        self.done = self.total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, done: int, total: int, best: float | None) -> None:
        """The search starts with ``done`` of ``total`` trials finished."""
        self.done, self.total, self.best = done, total, best
        self._line(f"search {self.config.name}: {done} of {total} trials done"
                   + (f", best {100 * best:.2f} %" if best is not None else ""))
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name="pdenas-progress-heartbeat")
        self._thread.start()

    def update(self, record: TrialRecord) -> None:
        """A trial finished: one line."""
        if record.status == "completed" and record.val_accuracy is not None:
            self.best = max(self.best or 0.0, record.val_accuracy)
        self.done += int(record.status.uses_budget)  # a skipped draw is not a trial used
        accuracy = ("-" if record.val_accuracy is None else f"{100 * record.val_accuracy:.2f} %")
        reason = f" ({record.failure_reason})" if record.failure_reason else ""
        self._line(f"trial {record.number} {record.architecture.get('family', '?')} "
                   f"{record.status.value}: val {accuracy}, {record.epochs_trained} of "
                   f"{record.epochs_planned} epochs, {record.seconds or 0:.1f} s{reason} "
                   f"[{self.done}/{self.total}]")

    def close(self) -> None:
        """Stops the heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                records = RunFolder(self.run).records()
            except (OSError, ValueError):  # a folder being written: the next beat reads it
                continue
            for record in records:
                if record.status is TrialStatus.RUNNING:
                    accuracy = ("-" if record.val_accuracy is None
                                else f"{100 * record.val_accuracy:.2f} %")
                    self._line(f"trial {record.number} {record.architecture.get('family', '?')} "
                               f"running: epoch {record.epochs_trained} of "
                               f"{record.epochs_planned}, val {accuracy} so far, "
                               f"{record.seconds or 0:.0f} s")

    def _line(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"{stamp} {text}", file=self.stream, flush=True)


def _import_tqdm_auto_quietly() -> None:
    """In a notebook without ipywidgets, imports ``tqdm.auto`` with its ``TqdmWarning`` ("IProgress
    not found") silenced: Optuna imports it for a progress bar pdenas does not use, and pdenas
    writes lines there instead of a widget, so the warning would be about nothing shown."""
    if "ipykernel" not in sys.modules or "tqdm.auto" in sys.modules or _widgets():
        return
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TqdmWarning)
        import tqdm.auto  # noqa: F401


_import_tqdm_auto_quietly()
