"""The one codec between a trial record and an Optuna trial's user attributes.

``record.json`` is the one source of truth for a trial. Optuna's user attributes hold a copy of
it, for optuna-dashboard and ``trials_dataframe()`` (the architecture, the family, each cost
metric as a column of its own, the status, the metrics and the live learning curve) and for what
pdenas reads back from the study while it searches: the budget count, the early-stop rules'
curves of other trials (which may run in other workers) and the progress bar's start. Both
backends write through ``encode`` (the Optuna backend as the trial goes, the Ray backend's
searcher once a trial is over) and every reader goes through ``decode``, so the attribute names
live here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from pdenas.cost import Cost
from pdenas.runs import TrialRecord, TrialStatus

__all__ = ["COST_KEYS", "FIELDS", "decode", "encode"]

FIELDS = ("status", "failure_reason", "train", "val_accuracy", "epochs_trained",
          "epochs_planned", "history", "constraints", "max_stable_step", "seconds", "worker")
"""Record fields copied under their own names."""

COST_KEYS = tuple(f.name for f in dataclasses.fields(Cost))
"""The cost's metrics, each an attribute of its own (a column in optuna-dashboard)."""

_NUMBER, _FAMILY = "pdenas_number", "family"

_STATE_STATUS = {TrialState.RUNNING: TrialStatus.RUNNING, TrialState.WAITING: TrialStatus.QUEUED,
                 TrialState.COMPLETE: TrialStatus.COMPLETED, TrialState.PRUNED: TrialStatus.STOPPED,
                 TrialState.FAIL: TrialStatus.LOST}
"""A trial's status when its attributes name none: from its Optuna state (a failed trial with no
record is taken as lost, not as a failed candidate)."""


def _attributes(record: TrialRecord, keys: Iterable[str] | None) -> dict[str, Any]:
    data = record.to_dict()
    wanted = set(("number", "architecture", "cost", *FIELDS) if keys is None else keys)
    attrs: dict[str, Any] = {}
    if "number" in wanted:
        attrs[_NUMBER] = record.number
    if "architecture" in wanted and record.architecture:
        attrs["architecture"] = data["architecture"]
        attrs[_FAMILY] = record.architecture.get("family")
    if "cost" in wanted:
        attrs.update(data["cost"])
    attrs.update({key: data[key] for key in FIELDS if key in wanted})
    return attrs


def encode(trial: Any, record: TrialRecord, keys: Iterable[str] | None = None) -> None:
    """Writes ``record`` into an Optuna trial's user attributes.

    Args:
        trial: An ``optuna.Trial`` (anything with ``set_user_attr``).
        record: The trial's record.
        keys: The record fields to write (``number``, ``architecture`` with the family,
            ``cost``, or any of ``FIELDS``); None: all of them. Each attribute is one storage
            write, so a trial hook writes only what changed (``("history",)`` after an epoch).
    """
    for key, value in _attributes(record, keys).items():
        trial.set_user_attr(key, value)


def decode(trial: FrozenTrial) -> TrialRecord:
    """The record an Optuna trial's user attributes hold (what ``encode`` wrote; the status from
    the trial's state where none was written). Records written by earlier versions read the same
    ("pruned" is ``stopped``)."""
    attrs = trial.user_attrs
    try:
        status = TrialStatus(attrs["status"])
    except (KeyError, ValueError):
        status = _STATE_STATUS[trial.state]
    return TrialRecord(
        number=int(attrs.get(_NUMBER, trial.number)), status=status,
        failure_reason=attrs.get("failure_reason"),
        architecture=dict(attrs.get("architecture") or {}), train=dict(attrs.get("train") or {}),
        params=dict(trial.params), val_accuracy=attrs.get("val_accuracy"),
        epochs_trained=int(attrs.get("epochs_trained") or 0),
        epochs_planned=int(attrs.get("epochs_planned") or 0),
        history=list(attrs.get("history") or []),
        cost={key: attrs[key] for key in COST_KEYS if attrs.get(key) is not None},
        constraints=list(attrs.get("constraints") or []),
        max_stable_step=attrs.get("max_stable_step"), seconds=float(attrs.get("seconds") or 0.0),
        worker=attrs.get("worker"))
