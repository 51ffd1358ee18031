"""``TrialRecord``: everything one trial produced, as stored in its ``record.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        max_stable_step: The linearised ||K|| bound on h of the initial weights.
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
        """A record from its JSON form; keys this version does not know are ignored.

        Raises:
            ValueError: No ``number``, or an unknown status.
        """
        if not isinstance(data, Mapping) or "number" not in data:
            raise InputError("record: not a trial record (no number)")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

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
