"""``TrialRecord``: everything one trial produced, as stored in its ``record.json``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdenas._bounded import short_repr
from pdenas.errors import InputError
from pdenas.runs._status import TrialStatus

__all__ = ["TrialRecord", "plain"]


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: mappings to dicts with string keys, sequences to lists,
    statuses to their words."""
    if isinstance(value, TrialStatus):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class TrialRecord:
    """What one trial produced; the one source of truth for it, for every backend.

    A backend may copy parts into its own storage (Optuna user attributes, for samplers and
    optuna-dashboard), but every reader (leaderboard, comparison, export) reads records.

    Attributes:
        number: The trial number (unique in the run).
        status: Where the trial stands (``TrialStatus``).
        failure_reason: Why a trial did not complete, in one line.
        architecture: The candidate's ``Architecture.to_dict()``.
        train: The candidate's training settings (``TrainConfig.to_dict()``).
        params: The parameters the sampler suggested (what ``SearchSpace.replay`` rebuilds from).
        val_accuracy: Best validation accuracy over the epochs trained.
        epochs_trained: Epochs actually trained (a trial stopped early trains fewer).
        epochs_planned: The full budget.
        history: Per-epoch metrics (``epoch`` from 1, ``val_accuracy``, ``train_loss``, ...).
        cost: Parameters, FLOPs, latency and memory (``Cost.to_dict()``).
        constraints: Constraint values (feasible when all ``<= 0``).
        max_stable_step: The linearised ||K|| bound on h of the initial weights, for norm
            "none" only (under TV or batch normalisation it bounds nothing: None).
        stability: The spectral-radius estimate (study option ``stability``): ``init`` and
            ``final`` (each ``spectral_radius``, the largest over the units, and ``units``, one
            per unit), and ``shortened_from`` when h was shortened before training.
        warm_start: When the trial started from a shallower trial's weights (study option
            ``warm_start``): ``from_trial``, ``from_depths``, ``from_val_accuracy``; else empty.
        seconds: Wall time of the trial so far.
        worker: ``host:pid`` of the process that ran it.
        device: The device it trained on ("cpu", "cuda:0").
        started_at: When it started (ISO 8601, UTC).
        finished_at: When it reached a final status (ISO 8601, UTC), else None.
    """

    number: int
    status: TrialStatus = TrialStatus.RUNNING
    failure_reason: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    val_accuracy: float | None = None
    epochs_trained: int = 0
    epochs_planned: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    constraints: list[float] = field(default_factory=list)
    max_stable_step: float | None = None
    stability: dict[str, Any] = field(default_factory=dict)
    warm_start: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str | None = None
    device: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def __post_init__(self) -> None:
        self.status = TrialStatus.parse(self.status)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """A record from its JSON form, every field checked against its type (``FIELD_CHECKS``);
        keys this version does not know are ignored.

        Raises:
            InputError: Not a mapping, no ``number``, an unknown status, or a field of the
                wrong type (``record.cost: got 'x'; allowed: a mapping of numbers``).
        """
        if not isinstance(data, Mapping) or "number" not in data:
            raise InputError("record: not a trial record (no number)")
        values = {}
        for name, (check, allowed) in FIELD_CHECKS.items():
            if name not in data:
                continue
            value = data[name]
            if not check(value):
                raise InputError(f"record.{name}: got {short_repr(value)}; allowed: {allowed}",
                                 key=f"record.{name}")
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_dict`` reads back."""
        return plain(dataclasses.asdict(self))

    def objective_values(self, objectives: Sequence[str]) -> list[float]:
        """The values to tell the backend, in the order of ``objectives`` (NaN when unknown)."""
        values = []
        for name in objectives:
            value = self.val_accuracy if name == "val_accuracy" else self.cost.get(name)
            values.append(float("nan") if value is None else float(value))
        return values


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _optional(check: Any) -> Any:
    return lambda value: value is None or check(value)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _mapping(value: Any) -> bool:
    return isinstance(value, Mapping)


def _numbers_mapping(value: Any) -> bool:  # (NaN allowed: a diverged loss, an unknown cost)
    return isinstance(value, Mapping) and all(v is None or _number(v) for v in value.values())


def _numbers_list(value: Any) -> bool:
    return isinstance(value, list) and all(v is None or _number(v) for v in value)


def _history(value: Any) -> bool:
    return isinstance(value, list) and all(_numbers_mapping(h) for h in value)


def _status(value: Any) -> bool:
    return isinstance(value, (str, TrialStatus))


FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "number": (_count, "a trial number (an integer >= 0)"),
    "status": (_status, "a status word"),
    "failure_reason": (_optional(_text), "text or null"),
    "architecture": (_mapping, "a mapping (the candidate's architecture)"),
    "train": (_mapping, "a mapping (the training settings)"),
    "params": (_mapping, "a mapping of parameter names to values"),
    "val_accuracy": (_optional(_finite), "a finite number or null"),
    "epochs_trained": (_count, "an integer >= 0"),
    "epochs_planned": (_count, "an integer >= 0"),
    "history": (_history, "a list of mappings of metric names to numbers"),
    "cost": (_numbers_mapping, "a mapping of cost names to numbers"),
    "constraints": (_numbers_list, "a list of numbers"),
    "max_stable_step": (_optional(_number), "a number or null"),
    "stability": (_mapping, "a mapping"),
    "warm_start": (_mapping, "a mapping"),
    "seconds": (_finite, "a finite number of seconds"),
    "worker": (_optional(_text), "text or null"),
    "device": (_optional(_text), "text or null"),
    "started_at": (_optional(_text), "text or null"),
    "finished_at": (_optional(_text), "text or null"),
}
"""What each field of a stored record may hold: a check and the words for what it allows."""
