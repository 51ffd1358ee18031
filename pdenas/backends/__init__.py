"""Backends: thin adapters from the shared objective (``pdenas.study.run_candidate``) to Optuna
(``pdenas.backends.optuna``) and Ray Tune (``pdenas.backends.ray``). The rest of pdenas never
imports optuna or ray; only these modules and the commands that pick a backend do."""

from __future__ import annotations

__all__: list[str] = []
