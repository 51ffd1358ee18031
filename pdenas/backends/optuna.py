"""The Optuna backend: trials of an Optuna study, run in this process.

One worker process runs a search. Several workers may share one study through a storage URL
(PostgreSQL, MySQL, a journal file, or SQLite on one machine). The budget is exact without
placeholder trials: under a lock (``budget_lock``) a worker counts the trials that use the
budget and asks for a new trial only while there are fewer than ``n_trials``, so the storage (and
optuna-dashboard, and ``trials_dataframe()``) holds only real trials, plus at most the copies
queued for retries. A worker that dies mid-trial stops its heartbeat; another worker fails the
stale trial (its record becomes ``lost``) and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues
a copy with the same parameters. Rerunning the same command resumes the study.

Records are written by the shared ``TrialRunner``; Optuna's user attributes get a copy of them
(the architecture, the status, the metrics) for samplers and optuna-dashboard.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from pdenas.backends._balanced import FamilyBalancedSampler, check_balanced, family_of
from pdenas.backends._base import Backend, Progress
from pdenas.backends._early_stop import is_rung, mo_asha_keeps
from pdenas.backends._registry import register_backend
from pdenas.backends._sampling import check_names, directions, make_pruner, make_sampler
from pdenas.backends._storage import HEARTBEAT_INTERVAL, budget_lock, make_storage
from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import StudyConfig

if TYPE_CHECKING:
    from pdenas.data import DataSplits

# The heartbeat, its retry callback and metric names are marked experimental; they are what
# multi-worker studies need, so do not warn at every start.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# pdenas beats the heartbeat itself (``_heartbeat``) around ``study.ask``/``tell``, the
# documented way to run trials outside ``Study.optimize``; Optuna warns at every ask.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")

__all__ = ["OptunaBackend", "claim_trial", "counts_toward_budget", "fail_stale", "open_study"]

POLL_SECONDS = 2.0
_COPIED = ("status", "failure_reason", "train", "val_accuracy", "epochs_trained",
           "epochs_planned", "history", "constraints", "max_stable_step", "seconds")
"""Record fields copied into the Optuna trial's user attributes (plus the cost's keys)."""


def open_study(config: StudyConfig, storage_url: str, sampler=None, pruner=None) -> optuna.Study:
    """Creates the study or loads it; refuses a stored study with other objectives."""
    storage = make_storage(storage_url)
    try:
        study = optuna.create_study(study_name=config.name, storage=storage,
                                    directions=directions(config), sampler=sampler, pruner=pruner,
                                    load_if_exists=True)
    except ValueError as error:
        raise ValueError(f"storage: {error}") from None
    stored = [d.name.lower() for d in study.directions]
    if stored != directions(config):
        raise ValueError(
            f"objectives: the stored study {config.name!r} optimises {stored}, this study file "
            f"asks for {directions(config)}; use another name or storage")
    study.set_metric_names(list(config.objectives))
    return study


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether a stored trial uses one unit of the budget: finished, running or queued, or
    failed because its candidate failed (a lost or interrupted one was queued again)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                       TrialState.WAITING):
        return True
    status = trial.user_attrs.get("status")
    return status in TrialStatus._value2member_map_ and TrialStatus(status).failure


def claim_trial(study: optuna.Study, n_trials: int,
                first_params: Sequence[Mapping[str, Any]] = (), *,
                balance: tuple[str, Sequence[str]] | None = None) -> optuna.Trial | None:
    """Takes the next trial of the budget, or None when the budget is used (call under the lock).

    A queued copy (a retry, an interrupted trial) is taken first; otherwise a new trial is
    asked for, fixed to ``first_params[k]`` when it is the study's k-th trial, or, with
    ``balance`` (the family param and its choices), to the family with the fewest trials that
    use the budget (ties: the first in the space's order).
    """
    trials = study.get_trials(deepcopy=False)
    used = sum(counts_toward_budget(t) for t in trials if t.state != TrialState.WAITING)
    if used >= n_trials:
        return None
    if not any(t.state == TrialState.WAITING for t in trials):
        fixed: dict[str, Any] | None = None
        if balance is not None:
            param, families = balance
            counts = Counter(family_of(t, param) for t in trials if counts_toward_budget(t))
            fixed = {param: min(families, key=lambda f: (counts[f], families.index(f)))}
        elif len(trials) < len(first_params):
            fixed = dict(first_params[len(trials)])
        if fixed is not None:
            study.enqueue_trial(fixed, user_attrs={"status": "queued"})
    return study.ask()


def fail_stale(study: optuna.Study, run: RunFolder) -> list[int]:
    """Fails the trials whose heartbeat went silent (Optuna queues a copy of each) and marks
    their records ``lost``; returns their numbers (call under the lock)."""
    running = {t._trial_id: t.number for t in study.get_trials(deepcopy=False,
                                                                  states=(TrialState.RUNNING,))}
    if not running:
        return []
    optuna.storages.fail_stale_trials(study)
    failed = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    lost = sorted(number for trial_id, number in running.items() if trial_id in failed)
    for number in lost:
        folder = run.trial(number)
        with contextlib.suppress(ValueError):
            record = folder.read_record()
            if record.status is TrialStatus.RUNNING:
                record.status = TrialStatus.LOST
                record.failure_reason = ("the worker stopped sending heartbeats; "
                                         "the trial was queued again")
                folder.write_record(record)
    return lost


def _beats(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (duck-typed: a study wraps its RDBStorage
    in a cache that is not an RDBStorage itself)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return bool(interval) and hasattr(storage, "record_heartbeat")


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    storage = study._storage
    if not _beats(study):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_INTERVAL):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"pdenas-heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class MOASHARule:
    """Multi-objective studies: MO-ASHA (``backends/_early_stop.py``) over the study's trials
    that reached each rung (running ones included, from their live ``history``), by best
    validation accuracy so far against the cost objective."""

    def __init__(self, study: optuna.Study, config: StudyConfig, min_trials: int = 4) -> None:
        self.study, self.min_trials = study, min_trials
        self.grace, self.eta = config.early_stop_warmup + 1, config.early_stop_reduction
        self.cost = config.objectives[1]

    def __call__(self, epoch: int, record: TrialRecord) -> bool:
        if epoch >= record.epochs_planned or not is_rung(epoch, self.grace, self.eta):
            return False
        others = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                              TrialState.PRUNED,
                                                              TrialState.RUNNING)):
            history = t.user_attrs.get("history") or []
            if t.number != record.number and len(history) >= epoch:
                best = max(h["val_accuracy"] for h in history[:epoch])
                others.append((best, float(t.user_attrs.get(self.cost, math.inf))))
        me = (float(record.val_accuracy or 0.0), float(record.cost.get(self.cost, math.inf)))
        return not mo_asha_keeps(me, others, self.eta, self.min_trials)


class EarlyStopRule:
    """Multi-objective studies: stop a candidate whose best validation accuracy so far is below
    a percentile (the median by default), at the same epoch, of the trials that reached it
    (finished and stopped ones, as Optuna's MedianPruner does; Optuna's pruners refuse
    multi-objective studies)."""

    def __init__(self, study: optuna.Study, warmup: int, percentile: float = 50.0,
                 min_trials: int = 4) -> None:
        self.study, self.warmup, self.min_trials = study, warmup, min_trials
        self.percentile = percentile
        self._histories: list[list[dict[str, float]]] | None = None

    def __call__(self, epoch: int, accuracy: float) -> bool:
        if epoch <= self.warmup:
            return False
        if self._histories is None:  # read once per trial: finished trials do not change
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            self._histories = [t.user_attrs.get("history") or []
                               for t in self.study.get_trials(deepcopy=False, states=states)]
        at_epoch = [h[epoch - 1]["val_accuracy"] for h in self._histories if len(h) >= epoch]
        if len(at_epoch) < self.min_trials:
            return False
        return accuracy < float(np.percentile(at_epoch, self.percentile))


def tell(study: optuna.Study, trial: optuna.Trial, record: TrialRecord,
         objectives: Sequence[str]) -> None:
    """Copies the record into the trial's user attributes and tells Optuna its state."""
    attrs = record.to_dict()
    for key in _COPIED:
        trial.set_user_attr(key, attrs[key])
    values = record.objective_values(objectives)
    state = record.status.state
    if state == "COMPLETE" and all(math.isfinite(v) for v in values):
        study.tell(trial, values)
    else:
        study.tell(trial, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)


@register_backend("optuna")
class OptunaBackend(Backend):
    """Trials of an Optuna study (any storage), trained in this process."""

    trains_in_process = True

    @classmethod
    def check(cls, config: StudyConfig, *, storage: str | None = None,
              address: str | None = None) -> None:
        if address:
            raise ValueError("--address is for the ray backend (--backend ray)")
        check_names(config)
        if config.balance_families:
            check_balanced(config.sampler)

    def prepare(self, data: DataSplits) -> None:
        def grid() -> dict[str, list[Any]]:
            return self.space.grid(image_size=min(data.image_size))

        self.data = data
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler, pruner = make_sampler(self.config, grid), make_pruner(self.config)
        self.balance: tuple[str, list[str]] | None = None
        if self.config.balance_families:
            param, families = self.runner.family_choices()
            if len(families) < 2:
                raise ValueError("balance_families: the search space must choose between "
                                 "families; allowed: a space with a families list")
            self.balance = (param, families)
            sampler = FamilyBalancedSampler(lambda: make_sampler(self.config, grid), param)
        self.storage = self.config.storage
        if self.storage is None:
            self.run_folder.path.mkdir(parents=True, exist_ok=True)
        self.storage_url = self.storage or self.run_folder.default_storage_url()
        self.study = open_study(self.config, self.storage_url, sampler, pruner)

    def search(self, n_trials: int, timeout: float | None = None,
               progress: Progress | None = None) -> None:
        study, run, lock = self.study, self.run_folder, self._lock
        if progress is not None:
            finished = [t for t in study.get_trials(deepcopy=False)
                        if t.state.is_finished() and counts_toward_budget(t)]
            best = max((t.user_attrs.get("val_accuracy") for t in finished
                        if t.state == TrialState.COMPLETE
                        and t.user_attrs.get("val_accuracy") is not None), default=None)
            progress.start(len(finished), n_trials, best)
        first = self.runner.first_params()
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            with lock():
                fail_stale(study, run)
                trial = claim_trial(study, n_trials, first, balance=self.balance)
            if trial is None:
                # Wait while other workers run trials: a dead worker's trial comes back to the
                # queue once its heartbeat is stale. Without heartbeats (journal files) it never
                # would.
                if _beats(study) and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    time.sleep(POLL_SECONDS)
                    continue
                break
            try:
                time_left = None if deadline is None else deadline - time.monotonic()
                with _heartbeat(study, trial._trial_id):
                    record = self._run_one(trial, time_left)
            except KeyboardInterrupt:
                # Give the slot back so a rerun does the trial again, then stop. Queue the copy
                # before failing the trial: the budget never looks short.
                with contextlib.suppress(Exception):
                    trial.set_user_attr("status", TrialStatus.INTERRUPTED.value)
                    study.enqueue_trial(trial.params, user_attrs={"status": "queued"})
                    study.tell(trial, state=TrialState.FAIL)
                raise
            if progress is not None:
                progress.update(record)

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return budget_lock(self.storage_url, self.config.name)

    def _early_stop_rule(self) -> Callable[[int, TrialRecord], bool] | None:
        """The multi-objective study's rule (None: never stop early)."""
        config = self.config
        if not config.multi_objective:
            return None  # single objective: Optuna's pruners
        if config.early_stop_rule == "mo_asha":
            return MOASHARule(self.study, config)
        if config.early_stop_rule == "percentile":
            percentile = EarlyStopRule(self.study, config.early_stop_warmup,
                                       config.early_stop_percentile)
            return lambda epoch, record: percentile(epoch, float(record.val_accuracy or 0.0))
        return None

    def _run_one(self, trial: optuna.Trial, time_left: float | None = None) -> TrialRecord:
        study, config, runner = self.study, self.config, self.runner
        trial.set_user_attr("status", TrialStatus.RUNNING.value)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            arch, train = runner.suggest(trial)
        except ValueError as error:
            record = runner.record_failure(trial.number, f"cannot build the candidate: {error}",
                                           trial.params)
            tell(study, trial, record, config.objectives)
            return record
        trial.set_user_attr("architecture", arch.to_dict())
        trial.set_user_attr("family", arch.family)
        rule = self._early_stop_rule()

        def report(record: TrialRecord, metrics: Mapping[str, float]) -> bool:
            trial.set_user_attr("history", record.history)  # live curves in optuna-dashboard
            if config.multi_objective:
                return rule(record.epochs_trained, record) if rule is not None else False
            trial.report(float(metrics["val_accuracy"]), record.epochs_trained)
            return trial.should_prune()

        def on_cost(record: TrialRecord) -> None:
            for key, value in record.cost.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("constraints", record.constraints)

        record = runner.run(trial.number, arch, train, data=self.data, device=self.device,
                            params=trial.params, report=report, on_cost=on_cost,
                            time_left=time_left)
        tell(study, trial, record, config.objectives)
        return record

