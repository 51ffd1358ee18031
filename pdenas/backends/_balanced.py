"""Balanced family comparison for the Optuna backend: every family gets its own sampler state.

``FamilyBalancedSampler`` keeps one sampler per family; each sees the study through
``_FamilyView``, which shows only that family's trials, so the TPE (or GP, or random) model of
one family is never shaped by another family's results. Together with ``claim_trial``'s
balancing (each new trial goes to the family with the fewest trials so far), every family gets
an equal share of the trials. Written here because Optuna has no partitioned sampler; samplers
that keep per-study state in system attributes (NSGA-II's generations, CMA-ES, grid) would mix
the families' state, so balanced studies refuse them (``check_balanced``).

Which family a new trial goes to is ``next_family``'s choice: the family that has used the least
of the budget so far, counted in trials, in FLOP-epochs (FLOPs per image times epochs trained:
equal compute, as a Hamiltonian step costs about half a parabolic one at equal width) or in
trial seconds (the study's ``balance_families`` value).

Early stopping is partitioned the same way: ``family_view`` gives the study's own rules
(percentile, ASHA, MO-ASHA: ``backends/_early_stop.py``) only the trial's own family, so a family
that learns slower in its first epochs is measured against its own trials, not stopped because
another family is ahead at that epoch. Optuna's Hyperband pruner rebuilds its bracket studies
from the storage, which a view cannot filter; it stays shared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from pdenas.errors import InputError
from pdenas.study import BALANCE_BY

__all__ = ["BALANCED_SAMPLERS", "BALANCE_BY", "FamilyBalancedSampler", "check_balanced",
           "family_of", "family_spent", "family_view", "next_family"]


BALANCED_SAMPLERS = ("tpe", "random", "gp")
"""Samplers whose whole state is the trials they are shown (so a filtered view partitions it)."""


def check_balanced(sampler: str) -> None:
    """Refuses a sampler a balanced study cannot partition (one line)."""
    if sampler not in BALANCED_SAMPLERS:
        raise InputError(f"balance_families: not with the {sampler} sampler (it keeps state of "
                         f"its own across trials); allowed: {', '.join(BALANCED_SAMPLERS)}")


def family_of(trial: FrozenTrial, param: str = "family") -> Any:
    """The trial's family: its fixed param (set when it was queued) or its suggested one."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    return fixed.get(param, trial.params.get(param))


def _known_spend(trial: FrozenTrial, by: str, now: float) -> float | None:
    """What one trial has used in ``by`` units (``trials``: 1), or None when its record does
    not say yet (queued, or claimed and not yet measured)."""
    from pdenas.backends._codec import decode

    if by == "trials":
        return 1.0
    if trial.state == TrialState.WAITING:
        return None
    record = decode(trial)
    running = trial.state == TrialState.RUNNING
    if by == "flop_epochs":
        flops = record.cost.get("flops")
        if flops is None or not math.isfinite(float(flops)):
            return None
        # A running trial counts at the epochs it is set to train (it is spending them now).
        epochs = max(record.epochs_trained, len(record.history),
                     record.epochs_planned if running else 0)
        return float(flops) * epochs if epochs else None
    if running:
        if trial.datetime_start is None:
            return None
        return max(0.0, now - trial.datetime_start.timestamp())
    return record.seconds if record.seconds > 0 else None


def family_spent(trials: Sequence[FrozenTrial], param: str, families: Sequence[Any],
                 by: str = "trials") -> dict[Any, float]:
    """The budget each family has used so far, in ``by`` units.

    ``trials`` counts each trial once; ``flop_epochs`` adds each trial's FLOPs per image (its
    record's cost) times the epochs it trained (a running trial: the epochs it is set to train);
    ``seconds`` adds each trial's wall seconds (a running trial: since it started). A trial
    whose use is not known yet (queued, or claimed before its cost was measured) counts as the
    mean of its family's known trials, or of all known trials when its family has none (0 when
    no trial is known), so that workers claiming side by side do not all pick one family.

    Args:
        trials: The study's trials that use the budget (``optuna.counts_toward_budget``).
        param: The family's param name.
        families: The space's families; trials of other families are left out.
        by: One of ``BALANCE_BY``.
    """
    if by not in BALANCE_BY:
        raise InputError(f"balance_families: got {by!r}; allowed: {', '.join(BALANCE_BY)}")
    now = time.time()
    known: dict[Any, list[float]] = {f: [] for f in families}
    unknown: dict[Any, int] = {f: 0 for f in families}
    for trial in trials:
        family = family_of(trial, param)
        if family not in known:
            continue
        spend = _known_spend(trial, by, now)
        if spend is None:
            unknown[family] += 1
        else:
            known[family].append(spend)
    every = [v for values in known.values() for v in values]
    overall = sum(every) / len(every) if every else 0.0
    return {f: sum(known[f]) + unknown[f] * (sum(known[f]) / len(known[f]) if known[f] else overall)
            for f in families}


def next_family(trials: Sequence[FrozenTrial], param: str, families: Sequence[Any],
                by: str = "trials") -> Any:
    """The family a balanced study's next trial goes to: the one that has used the least of the
    budget so far (``family_spent``), ties to the first in the space's order.

    Args:
        trials: The study's trials that use the budget (``optuna.counts_toward_budget``).
        param: The family's param name.
        families: The space's families, in its order (at least one).
        by: ``trials``, ``flop_epochs`` or ``seconds``.
    """
    spent = family_spent(trials, param, families, by)
    order = list(families)
    return min(order, key=lambda f: (spent[f], order.index(f)))


class _FamilyView:
    """The study as one family's sampler sees it: every attribute of the study, but only the
    trials of ``family``."""

    def __init__(self, study: optuna.Study, family: Any, param: str) -> None:
        self._study, self._family, self._param = study, family, param

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if family_of(t, self._param) == self._family]

    def _get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states,
                                                  use_cache=use_cache))

    def get_trials(self, deepcopy: bool = True,
                   states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def family_view(study: optuna.Study, family: Any, param: str = "family") -> optuna.Study:
    """The study with only the trials of ``family`` (every other attribute the study's own)."""
    return _FamilyView(study, family, param)  # type: ignore[return-value]


class FamilyBalancedSampler(BaseSampler):
    """One sampler per family (made by ``make``), each shown only its family's trials.

    Args:
        make: Builds a fresh sampler (the study's, seeded).
        param: The family's param name.
    """

    def __init__(self, make: Callable[[], BaseSampler], param: str = "family") -> None:
        self._make, self._param = make, param
        self._samplers: dict[Any, BaseSampler] = {}

    def _for(self, study: optuna.Study, trial: FrozenTrial) -> tuple[BaseSampler, _FamilyView]:
        family = family_of(trial, self._param)
        if family not in self._samplers:
            self._samplers[family] = self._make()
        return self._samplers[family], _FamilyView(study, family, self._param)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        sampler, view = self._for(study, trial)
        return sampler.infer_relative_search_space(view, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        sampler, view = self._for(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        sampler, view = self._for(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        sampler, view = self._for(study, trial)
        sampler.before_trial(view, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        sampler, view = self._for(study, trial)
        sampler.after_trial(view, trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in self._samplers.values():
            sampler.reseed_rng()
