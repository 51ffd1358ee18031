"""The progress bar of a search: ``tqdm.auto`` (a widget in notebooks, text in a terminal), told
by the backend (or, for several workers, by ``backends._supervise.RecordFollower``) when the
search starts and after each trial."""

from __future__ import annotations

import sys
import time

from pdenas.runs import TrialRecord
from pdenas.study import StudyConfig

__all__ = ["TqdmProgress"]


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
            self.bar.update(1)
            self._postfix(last=f"#{record.number} {record.architecture.get('family')} {record.status}")

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
