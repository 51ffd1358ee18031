"""The Optuna backend: trials of an Optuna study, run in this process.

One worker process runs a search. Several workers may share one study through a storage URL
(PostgreSQL, MySQL, a journal file, or SQLite on one machine). The budget is exact without
placeholder trials: under a lock (``budget_lock``) a worker counts the trials that use the
budget and asks for a new trial only while there are fewer than ``n_trials``, so the storage (and
optuna-dashboard, and ``trials_dataframe()``) holds only real trials, plus at most the copies
queued for retries. A worker that dies mid-trial stops its heartbeat; another worker fails the
stale trial (its record becomes ``lost``) and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues
a copy with the same parameters, once (``MAX_RETRY``): a candidate whose copy kills its worker too
(the kernel's OOM killer, a crash in a kernel) is recorded as ``failed`` with that reason and the
study goes on. A worker that was only slow (paused past the grace period) and finds its trial
failed by another drops its result, leaves the record ``lost`` and takes the next trial. Each
claim reseeds the sampler from the study's seed and the number of trials stored, so workers that
see the same history still suggest different candidates, and a one-worker search is
reproducible. Rerunning the same command resumes the study.

Records are written by the shared ``TrialRunner``; Optuna's user attributes get a copy of them
(the architecture, the status, the metrics) for samplers and optuna-dashboard, written and read
back only through ``_codec`` (the budget count, the early-stop rules, the progress bar's start).
Early stopping: the study's own rule (``_early_stop``) in the trial hook over the other trials'
curves, or Optuna's HyperbandPruner (``early_stop.rule: hyperband``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pdenas._interrupt import catch_interrupts, raise_if_interrupted
from pdenas.backends._balanced import (FamilyBalancedSampler, check_balanced, family_of,
                                       family_view, next_family)
from pdenas.backends._base import SKIPS_BEFORE_FITTING_DRAW, Backend, Progress, TrialHooks
from pdenas.backends._base import now as _now
from pdenas.backends._codec import decode, encode
from pdenas.backends._early_stop import Curve, checks, max_epochs, stop_reason, stops
from pdenas.backends._registry import register_backend
from pdenas.backends._sampling import (check_names, check_options, directions, make_pruner,
                                      make_sampler)
from pdenas.backends._storage import (MAX_RETRY, budget_lock, check_storage_url,
                                      heartbeat_settings, make_storage, redact_url)
from pdenas.backends._watchdog import grace_seconds
from pdenas.errors import InputError
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

__all__ = ["OptunaBackend", "claim_trial", "counts_toward_budget", "fail_stale", "give_back",
           "open_study"]

POLL_SECONDS = 2.0
_LOG = logging.getLogger("pdenas")


def open_study(config: StudyConfig, storage_url: str, sampler=None, pruner=None) -> optuna.Study:
    """Creates the study or loads it; refuses a stored study with other objectives."""
    storage = make_storage(storage_url)
    try:
        study = optuna.create_study(study_name=config.name, storage=storage,
                                    directions=directions(config), sampler=sampler, pruner=pruner,
                                    load_if_exists=True)
    except ValueError as error:
        raise InputError(f"storage: {redact_url(str(error))}") from None
    except optuna.exceptions.StorageInternalError as error:
        raise storage_fault(storage_url, error) from None
    stored = [d.name.lower() for d in study.directions]
    if stored != directions(config):
        raise InputError(
            f"objectives: the stored study {config.name!r} optimises {stored}, this study file "
            f"asks for {directions(config)}; use another name or storage")
    study.set_metric_names(list(config.objectives))
    return study


def storage_fault(url: str, error: Exception) -> InputError:
    """A storage that cannot be read or written (a damaged SQLite file, a full disk, a database
    gone) as one line naming the storage and the cause (the driver's first line, not the
    hundred-line chain of SQLAlchemy's): the user's to fix, not a bug in pdenas."""
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return InputError(f"storage {redact_url(url)}: {redact_url(text)}", key="storage")


def retries_exhausted(trial: FrozenTrial) -> bool:
    """Whether a trial is a copy that was already retried ``MAX_RETRY`` times (so when its worker
    dies too, no copy is queued: the candidate itself is taken to kill its worker)."""
    return len(trial.system_attrs.get("retry_history") or []) >= MAX_RETRY


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether a stored trial uses one unit of the budget: finished, running or queued, or
    failed because its candidate failed (a lost or interrupted one was queued again), or a
    dead worker's trial whose retries are used up."""
    status = decode(trial).status
    if status is TrialStatus.SKIPPED:  # too long for the time left: not built, not counted
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                       TrialState.WAITING):
        return True
    if status is TrialStatus.RUNNING and retries_exhausted(trial):
        return True
    return status.failure


def claim_trial(study: optuna.Study, n_trials: int,
                first_params: Sequence[Mapping[str, Any]] = (),
                sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None, *,
                balance: tuple[str, Sequence[str]] | None = None,
                balance_by: str = "trials") -> optuna.Trial | None:
    """Takes the next trial of the budget, or None when the budget is used (call under the lock).

    A queued copy (a retry, an interrupted trial) is taken first; otherwise a new trial is
    asked for, fixed to the first of ``first_params`` that no trial of the study has yet (a
    queued copy does not shift them: every entry is tried once); with ``balance`` (the family
    param and its choices), an entry that fixes no family, or none, is given the family that has
    used the least of the budget so far, in ``balance_by`` units (trials, FLOP-epochs or
    seconds: ``_balanced.next_family``; ties: the first in the space's order). With
    ``sampler_for``, the study's
    sampler is replaced first by ``sampler_for(trials stored)`` (a sampler seeded for this
    claim). The trial's first heartbeat is recorded here, so a worker killed before it beats
    still leaves a trial that goes stale.
    """
    trials = study.get_trials(deepcopy=False)
    used = sum(counts_toward_budget(t) for t in trials if t.state != TrialState.WAITING)
    if used >= n_trials:
        return None
    if not any(t.state == TrialState.WAITING for t in trials):
        fixed = _first_uncovered(trials, first_params)
        if balance is not None and (fixed is None or balance[0] not in fixed):
            param, families = balance
            spent = [t for t in trials if counts_toward_budget(t)]
            fixed = {**(fixed or {}), param: next_family(spent, param, families, balance_by)}
        if fixed is not None:
            study.enqueue_trial(fixed, user_attrs={"status": "queued"})
    if sampler_for is not None:
        study.sampler = sampler_for(len(trials))
    trial = study.ask()
    if _beats(study):
        study._storage.record_heartbeat(trial._trial_id)
    return trial


def _first_uncovered(trials: Sequence[FrozenTrial], first_params: Sequence[Mapping[str, Any]]
                     ) -> dict[str, Any] | None:
    """The first entry of ``first_params`` that no trial has (fixed at its queueing or
    suggested), or None."""
    for params in first_params:
        if not any(all(family_of(t, key) == value for key, value in params.items())
                   for t in trials):
            return dict(params)
    return None


def fail_stale(study: optuna.Study, run: RunFolder) -> list[int]:
    """Fails the trials whose heartbeat went silent and marks their records: ``lost`` when
    Optuna queued a copy, ``failed`` when the copy's worker died too (``MAX_RETRY``); returns
    their numbers (call under the lock)."""
    running = {t._trial_id: t for t in study.get_trials(deepcopy=False,
                                                           states=(TrialState.RUNNING,))}
    if not running:
        return []
    optuna.storages.fail_stale_trials(study)
    failed = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    lost = sorted((t for trial_id, t in running.items() if trial_id in failed),
                  key=lambda t: t.number)
    for trial in lost:
        folder = run.trial(trial.number)
        try:
            record = folder.read_record()
        except ValueError:  # killed before its first record: only a final failure is written
            record = TrialRecord(number=trial.number, params=dict(trial.params))
        if record.status in (TrialStatus.LOST, TrialStatus.INTERRUPTED) or (
                record.status.final and retries_exhausted(trial)):
            continue  # (a result recorded before the worker died, with no copy queued, stays)
        if retries_exhausted(trial):
            deaths = len(trial.system_attrs.get("retry_history") or []) + 1
            record.status = TrialStatus.FAILED
            record.failure_reason = (
                f"its worker process died {deaths} times running this candidate (killed by the "
                "system, e.g. the out-of-memory killer, or a crash); not retried again")
            record.finished_at = _now()
        else:  # also a result recorded just before the worker died: the copy replaces it
            record.status = TrialStatus.LOST
            record.failure_reason = ("the worker stopped sending heartbeats; "
                                     "the trial was queued again")
            record.finished_at = None
        folder.write_record(record)
    return [t.number for t in lost]


class _Superseded(Exception):
    """This worker's trial was failed by another worker (its heartbeat looked stale: the worker
    was paused or cut off past the grace period) and a copy was queued: drop this result."""


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

    interval = heartbeat_settings()[0]

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"pdenas-heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell(study: optuna.Study, trial: optuna.Trial, record: TrialRecord,
         objectives: Sequence[str]) -> None:
    """Copies the record into the trial's user attributes and tells Optuna its state."""
    encode(trial, record)
    if record.status is TrialStatus.SKIPPED:  # the samplers that read constraints learn it
        trial.set_constraint("time_left", 1.0)
    values = record.objective_values(objectives)
    state = record.status.state
    if state == "COMPLETE" and all(math.isfinite(v) for v in values):
        study.tell(trial, values)
    else:
        study.tell(trial, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)


def give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """Returns an interrupted trial to the queue as it is, so the next claim takes it again.

    The trial keeps its number and its params (Optuna reuses params already suggested) and goes
    from RUNNING back to WAITING: the study shows one waiting trial, not a failed one beside a
    queued copy, in optuna-dashboard and ``trials_dataframe()``, and it still uses its unit of
    the budget. Optuna has no public call for this; its storages allow the RUNNING -> WAITING
    transition (only a finished trial is frozen).
    """
    trial.set_user_attr("status", TrialStatus.QUEUED.value)
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)


@contextlib.contextmanager
def _owned(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Turns a write to a trial that another worker already failed into ``_Superseded``."""
    try:
        yield
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        if study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            raise _Superseded(trial.number) from None
        raise


class _Hooks(TrialHooks):
    """What an Optuna trial hears of its run: the cost and constraints as user attributes (the
    samplers read the constraints), each epoch for early stopping, a hung trial told at once.

    Early stopping: ``early_stop.rule: hyperband`` reports to Optuna's HyperbandPruner (single
    objective); pdenas's own rules (``_early_stop.stops``) compare this trial's curve with the
    curves of the trials of ``peers`` (the study, or its family's view in a balanced study) that
    reached the epoch: finished, stopped and running ones, in whichever worker.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial, config: StudyConfig,
                 peers: optuna.Study | None = None) -> None:
        self.study, self.trial, self.config = study, trial, config
        self.peers = study if peers is None else peers
        self.cost = config.objectives[1] if config.multi_objective else None
        self.hung: list[TrialRecord] = []

    def on_cost(self, record: TrialRecord) -> None:
        with _owned(self.study, self.trial):
            encode(self.trial, record, ("cost", "constraints"))
            for index, value in enumerate(record.constraints):  # read by the samplers
                self.trial.set_constraint(str(index), value)

    def on_epoch(self, record: TrialRecord, metrics: Mapping[str, float]) -> bool:
        trial, early = self.trial, self.config.early_stop
        with _owned(self.study, trial):
            encode(trial, record, ("history",))  # live curves: the dashboard and other trials
            if early.rule == "hyperband":
                trial.report(float(metrics["val_accuracy"]), record.epochs_trained)
                stop = trial.should_prune()
            elif checks(early, record.epochs_trained, record.epochs_planned):
                states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                others = [Curve.of(decode(t), self.cost)
                          for t in self.peers.get_trials(deepcopy=False, states=states)
                          if t.number != trial.number]
                stop = stops(early, Curve.of(record, self.cost), others, record.epochs_planned)
            else:
                stop = False
        if stop:  # the lifecycle records the status; the reason is the same words as on Ray
            record.failure_reason = stop_reason(early.rule, record.epochs_trained,
                                                record.epochs_planned)
        return stop

    def on_hung(self, record: TrialRecord) -> None:  # from the watchdog thread
        self.hung.append(record)
        with _owned(self.study, self.trial):
            tell(self.study, self.trial, record, self.config.objectives)


@register_backend("optuna")
class OptunaBackend(Backend):
    """Trials of an Optuna study (any storage), trained in this process."""

    trains_in_process = True

    @classmethod
    def check(cls, config: StudyConfig, *, storage: str | None = None,
              address: str | None = None) -> None:
        if address:
            raise InputError("--address is for the ray backend (--backend ray)")
        check_names(config)
        check_options(config)
        if config.storage is not None:
            check_storage_url(config.storage)
        heartbeat_settings()
        if config.trial_timeout is not None:
            grace_seconds(config.trial_timeout)  # a bad PDENAS_HUNG_GRACE is bad input
        if config.balance_families:
            check_balanced(config.sampler)

    def prepare(self, data: DataSplits) -> None:
        def grid() -> dict[str, list[Any]]:
            return self.space.grid(image_size=min(data.image_size))

        self.data = data
        self._grid = grid
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = make_sampler(self.config, grid)
        pruner = make_pruner(self.config, max_epochs(self.config, self.space))
        self.balance: tuple[str, list[str]] | None = None
        if self.config.balance_families:
            param, families = self.runner.family_choices()
            if len(families) < 2:
                raise InputError("balance_families: the search space must choose between "
                                 "families; allowed: a space with a families list")
            self.balance = (param, families)
            sampler = FamilyBalancedSampler(lambda: make_sampler(self.config, grid), param)
        self.storage = self.config.storage
        if self.storage is None:
            run = self.run_folder
            if run.trial_numbers() and not run.default_storage_path.is_file():
                raise InputError(
                    f"{run.default_storage_path}: the run's storage is missing but the folder "
                    f"holds {len(run.trial_numbers())} trial folders; restore it, or search into "
                    "another --out (resuming would number trials from 0 over the old ones)")
            run.path.mkdir(parents=True, exist_ok=True)
        self.storage_url = self.storage or self.run_folder.default_storage_url()
        self.study = open_study(self.config, self.storage_url, sampler, pruner)

    def search(self, n_trials: int, timeout: float | None = None,
               progress: Progress | None = None) -> None:
        try:
            self._start(n_trials, progress)
            with catch_interrupts():  # a Ctrl-C that Python swallowed still stops the search
                self._search(n_trials, timeout, progress)
        except optuna.exceptions.StorageInternalError as error:
            raise storage_fault(self.storage_url, error) from None

    def _start(self, n_trials: int, progress: Progress | None) -> None:
        """Tells the progress bar what the study holds already."""
        if progress is not None:
            finished = [decode(t) for t in self.study.get_trials(deepcopy=False)
                        if t.state.is_finished() and counts_toward_budget(t)]
            best = max((r.val_accuracy for r in finished
                        if r.status.trained and r.val_accuracy is not None), default=None)
            progress.start(len(finished), n_trials, best)

    def _search(self, n_trials: int, timeout: float | None, progress: Progress | None) -> None:
        """Claims and runs trials until the budget or the time is used."""
        study, run, lock = self.study, self.run_folder, self._lock
        # Balanced families cover every family by themselves: only start_with is fixed first.
        first = ([dict(p) for p in self.config.start_with] if self.balance is not None
                 else self.runner.first_params())
        deadline = None if timeout is None else time.monotonic() + timeout
        skipped = 0  # draws in a row skipped as too long for the time left
        while deadline is None or time.monotonic() < deadline:
            raise_if_interrupted()
            if deadline is not None and skipped >= SKIPS_BEFORE_FITTING_DRAW:
                # The sampler keeps proposing what cannot fit: draw from the part that fits.
                skipped = 0
                params = self.runner.fitting_params(deadline - time.monotonic(), self.device,
                                                    seed=self.config.seed + len(study.trials))
                if params is None:
                    break  # even the space's cheapest candidate would not fit the time left
                with lock():
                    study.enqueue_trial(params, user_attrs={"status": "queued"})
            with lock():
                fail_stale(study, run)
                trial = claim_trial(study, n_trials, first, self._sampler_for,
                                    balance=self.balance,
                                    balance_by=self.config.balance_by or "trials")
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
            except _Superseded:
                self._dropped(trial.number)
                continue
            except BaseException:  # Ctrl-C, or a bug in pdenas (not the candidate's doing)
                with contextlib.suppress(Exception):
                    give_back(study, trial)
                raise
            if progress is not None:
                progress.update(record)
            raise_if_interrupted()  # came while the trial measured or saved: it is finished
            skipped = skipped + 1 if record.status is TrialStatus.SKIPPED else 0
            if skipped and self.runner.nothing_fits(deadline - time.monotonic(), self.device):
                break  # even the space's cheapest candidate would not fit the time left

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return budget_lock(self.storage_url, self.config.name)

    def _peers(self, family: str) -> optuna.Study:
        """The trials a trial of ``family`` is measured against for early stopping: the study's,
        or in a balanced study its family's only."""
        if self.balance is None:
            return self.study
        return family_view(self.study, family, self.balance[0])

    def _sampler_for(self, stored: int) -> optuna.samplers.BaseSampler:
        """The sampler of one claim, seeded for it (balanced studies: one per family)."""
        if self.balance is not None:
            return FamilyBalancedSampler(
                lambda: make_sampler(self.config, self._grid, stored=stored), self.balance[0])
        return make_sampler(self.config, self._grid, stored=stored)

    def _dropped(self, number: int) -> None:
        """Leaves a superseded trial's record ``lost`` (this worker wrote it after the other
        worker failed the trial) and says so in one line."""
        folder = self.run_folder.trial(number)
        with contextlib.suppress(ValueError):
            record = folder.read_record()
            if record.status is not TrialStatus.LOST:
                record.status = TrialStatus.LOST
                record.failure_reason = ("its worker was paused past the grace period; another "
                                         "worker failed it and queued a copy")
                record.finished_at = None
                folder.write_record(record)
        _LOG.warning("trial %d was failed by another worker while this one was paused "
                     "(past PDENAS_GRACE_PERIOD); its result is dropped, a copy was queued",
                     number)

    def _run_one(self, trial: optuna.Trial, time_left: float | None = None) -> TrialRecord:
        study, config, runner = self.study, self.config, self.runner
        with _owned(study, trial):
            encode(trial, TrialRecord(number=trial.number, status=TrialStatus.RUNNING,
                                      worker=f"{socket.gethostname()}:{os.getpid()}"),
                   ("number", "status", "worker"))
        try:
            arch, train = runner.suggest(trial)
        except InputError as error:
            record = runner.record_failure(trial.number, f"cannot build the candidate: {error}",
                                           trial.params)
            with _owned(study, trial):
                tell(study, trial, record, config.objectives)
            return record
        skip = runner.skip_reason(arch, train, time_left, self.device)
        if skip is not None:  # not built; the sampler learns it through a violated constraint
            record = runner.record_skipped(trial.number, arch, train, skip, trial.params,
                                           self.device)
            with _owned(study, trial):
                tell(study, trial, record, config.objectives)
            return record
        with _owned(study, trial):
            encode(trial, TrialRecord(number=trial.number, architecture=arch.to_dict()),
                   ("architecture",))
        family = trial.params.get(self.balance[0], arch.family) if self.balance else arch.family
        hooks = _Hooks(study, trial, config, self._peers(family))
        record = runner.run(trial.number, arch, train, data=self.data, device=self.device,
                            params=trial.params, hooks=hooks, time_left=time_left)
        if hooks.hung:  # told already (the call hung past the limit, then returned after all)
            return record
        with _owned(study, trial):
            tell(study, trial, record, config.objectives)
        return record

