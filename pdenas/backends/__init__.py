"""Backends: adapters from pdenas's trials to a tuning library, over one contract
(``pdenas.backends._base``). ``run_study`` is the one way a search starts, for the command line
and the Python API alike (``_orchestrate``: in this process through ``run_search``, or in
supervised workers); the rest of pdenas never imports optuna or ray (only the backend modules do,
loaded on demand by name)."""

from __future__ import annotations

from pdenas.backends._base import Backend, DataShape, Progress, TrialHooks, TrialRunner
from pdenas.backends._registry import get_backend, list_backends, register_backend
from pdenas.backends._run import run_search
from pdenas.backends._orchestrate import WorkersFailed, run_study, run_worker

__all__ = ["Backend", "DataShape", "Progress", "TrialHooks", "TrialRunner", "WorkersFailed",
           "get_backend", "list_backends", "register_backend", "run_search", "run_study",
           "run_worker"]
