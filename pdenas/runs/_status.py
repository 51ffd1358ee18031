"""The one vocabulary of trial statuses, with what each means for the budget and for ranking."""

from __future__ import annotations

import enum

from pdenas._bounded import short_repr
from pdenas.errors import InputError

__all__ = ["TrialStatus"]


class TrialStatus(str, enum.Enum):
    """Where a trial stands, as written in its ``record.json`` (and in Optuna's ``status`` attr).

    Every module reads and writes statuses through this enum, so the words cannot drift. A status
    is a ``str``: ``TrialStatus.COMPLETED == "completed"``, and JSON holds the plain word.

    Properties say what a status means:

    - ``final``: the trial is over and will not change again.
    - ``uses_budget``: the trial counts toward the study's ``n_trials`` (a trial that is still
      running does too; one given back by Ctrl-C, or lost with its worker, does not: it is queued
      again; nor does one skipped as too long for the time left).
    - ``trained``: the candidate trained for all its planned epochs, so it may be ranked.
    - ``failure``: the candidate itself failed (it is not retried).
    - ``state``: the backend-neutral state shown beside it (Optuna's words: RUNNING, COMPLETE,
      PRUNED, FAIL), what pdenas tells the sampler.
    """

    QUEUED = "queued"
    """Waiting for a worker (a retried or interrupted trial's copy)."""
    RUNNING = "running"
    """A worker is building, measuring or training it."""
    COMPLETED = "completed"
    """Trained for its whole budget of epochs."""
    STOPPED = "stopped"
    """Stopped early by the study's ``early_stop`` rule, on either backend. Records written
    before the one status say "pruned" (the Optuna backend's word then): read as this."""
    TIMEOUT = "timeout"
    """Stopped at the study's per-trial time limit."""
    INFEASIBLE = "infeasible"
    """Broke a cost limit; measured but not trained."""
    SKIPPED = "skipped"
    """Predicted to need more time than the search had left: not trained, and not counted toward
    ``n_trials`` (the sampler is told, as a violated constraint, and asked again)."""
    DIVERGED = "diverged"
    """The loss became non-finite."""
    OOM = "oom"
    """Ran out of device or host memory."""
    FAILED = "failed"
    """Any other error of the candidate (the reason says which)."""
    INTERRUPTED = "interrupted"
    """Given back by Ctrl-C or kill: queued again as it was, so a rerun trains it again."""
    LOST = "lost"
    """Its worker stopped sending heartbeats; a copy was queued again."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> TrialStatus | None:
        """Reads the words of earlier versions: "pruned" is ``STOPPED``."""
        return cls.STOPPED if value == "pruned" else None

    @classmethod
    def parse(cls, value: object) -> TrialStatus:
        """The status named by ``value`` (a status or its word).

        Raises:
            ValueError: For a word that is not a status.
        """
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(s.value for s in cls)
            raise InputError(f"status: unknown {short_repr(value)}; allowed: {allowed}") from None

    @property
    def final(self) -> bool:
        """The trial is over and will not change again."""
        return self not in (TrialStatus.QUEUED, TrialStatus.RUNNING)

    @property
    def uses_budget(self) -> bool:
        """The trial counts toward ``n_trials`` (see the class docstring)."""
        return self not in (TrialStatus.INTERRUPTED, TrialStatus.LOST, TrialStatus.SKIPPED)

    @property
    def failure(self) -> bool:
        """The candidate itself failed: diverged, out of memory or another error."""
        return self in (TrialStatus.DIVERGED, TrialStatus.OOM, TrialStatus.FAILED)

    @property
    def trained(self) -> bool:
        """The candidate trained its whole budget and may be ranked against others."""
        return self is TrialStatus.COMPLETED

    @property
    def stopped_early(self) -> bool:
        """Trained some epochs and then stopped by a rule (stopped, timeout)."""
        return self in (TrialStatus.STOPPED, TrialStatus.TIMEOUT)

    @property
    def state(self) -> str:
        """The backend-neutral state: RUNNING, WAITING, COMPLETE, PRUNED or FAIL."""
        if self is TrialStatus.QUEUED:
            return "WAITING"
        if self is TrialStatus.RUNNING:
            return "RUNNING"
        if self is TrialStatus.COMPLETED:
            return "COMPLETE"
        if self.stopped_early or self in (TrialStatus.INFEASIBLE, TrialStatus.SKIPPED):
            return "PRUNED"
        return "FAIL"
