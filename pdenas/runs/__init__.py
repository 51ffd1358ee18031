"""Run folders: the one owner of ``run.json``, trial records, weights and architectures, and the
one vocabulary of trial statuses."""

from __future__ import annotations

from pdenas.runs._folder import (DEFAULT_STORAGE, RUN_FORMAT, RUN_VERSION, RunFolder, RunInfo,
                                 TrialFolder, atomic_write, read_json, read_record,
                                 write_json)
from pdenas.runs._record import TrialRecord, plain
from pdenas.runs._status import TrialStatus

__all__ = [
    "DEFAULT_STORAGE",
    "RUN_FORMAT",
    "RUN_VERSION",
    "RunFolder",
    "RunInfo",
    "TrialFolder",
    "TrialRecord",
    "TrialStatus",
    "atomic_write",
    "plain",
    "read_json",
    "read_record",
    "write_json",
]
