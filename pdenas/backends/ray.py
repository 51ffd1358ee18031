"""The Ray Tune backend: the shared objective run as Ray Tune trials, on one machine or a cluster.

``search`` runs a ``ray.tune.Tuner`` whose searcher is Ray's ``OptunaSearch`` driven by the study's
define-by-run search space (``space.suggest`` on the Optuna trial it is handed) and sampler, whose
scheduler applies the study's ``early_stop`` rule to the validation accuracy per epoch
(``EarlyStopScheduler`` for pdenas's own rules, Ray's asynchronous HyperBand for ``hyperband``,
FIFO for ``none``), and whose trials each reserve the study's CPUs and (fractional) GPUs, as many
at a time as the cluster holds. Each Ray trial gets a unique pdenas trial number, rebuilds its candidate with
``TrialRunner.replay`` and trains it with ``TrialRunner.run``, so the run folder looks like the Optuna
backend's (``trials/<n>/{model.pt, architecture.json, record.json}``) and the leaderboard,
comparison and export read it the same way. Trials reuse their Ray actors (``reuse_actors``): a
trial that ends leaves its process, with torch and pdenas imported, to the next one instead of a new
process that imports them again (about 10 s a trial on a 2-core machine; a 4-trial test search
went from 45 s to 28 s). A trial whose process died or was killed gets a fresh one.

Layout of a Ray run folder::

    run.json                 backend "ray", storage null (the folder's own study.db)
    study.db                 the searcher's Optuna study (SQLite), as the Optuna backend keeps it:
                             optuna-dashboard and trials_dataframe() see Ray runs the same way
    ray/exp-<k>/             Tune experiments (the first run, then one per top-up); restorable
    trials/<n>/record.json   written by the shared ``TrialRunner``: at the start, after every
                             epoch (status "running") and at the end

Every epoch is reported with ``ray.tune.report`` together with a checkpoint of the trial folder.
When the scheduler stops a trial, its thread ends at its report without writing more (so that the
actor can take the next trial), and a driver-side callback then turns the record's "running" into
"stopped"; a trial ended by Ctrl-C stays "running", and a rerun trains it again. A stopped trial
keeps the epochs it trained and is never ranked as a fully trained trial (Ray's OptunaSearch
would tell Optuna such a trial COMPLETED with its low, early values; this backend tells Optuna
it was PRUNED instead, and failed candidates FAILED).

Rerunning the same command restores the latest experiment (``Tuner.restore(...,
resume_errored=True)``): finished trials stay, interrupted ones start again from their last
checkpoint (a finished trial is not retrained; a partly trained one trains again from scratch).
The run folder has the last word: a trial whose record there is already final (Ctrl-C came
between its final record and its last report to Tune) is reported again, not retrained.
If the study then holds fewer finished trials than ``n_trials`` (a larger ``--n-trials``, or an
earlier ``--timeout``), a new experiment runs the missing trials with the next free numbers.
``--timeout`` starts no new trial after that many seconds; running trials finish.

A multi-node cluster needs the run folder on a file system that every node mounts at the same
path (Ray requires a shared ``storage_path`` for checkpoints), and pdenas plus the data on every
node.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import io
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from pdenas.backends._base import (SKIPS_BEFORE_FITTING_DRAW, Backend, Progress, TrialHooks,
                                   TrialRunner, finished_summary)
from pdenas.backends._codec import encode
from pdenas.backends._early_stop import MIN_TRIALS, Curve, max_epochs, stop_reason, stops
from pdenas.backends._lifecycle import Abandoned
from pdenas.backends._ray_options import RayOptions
from pdenas.backends._registry import register_backend
from pdenas.backends._sampling import check_options, make_sampler
from pdenas.backends._storage import make_storage
from pdenas.errors import InputError
from pdenas.runs import RunFolder, TrialFolder, TrialRecord, TrialStatus, read_record
from pdenas.study import EarlyStop, StudyConfig, resolve_device

if TYPE_CHECKING:
    import torch

    from pdenas.data import DataSplits
    from pdenas.space import SearchSpace

__all__ = ["EXPERIMENTS_DIR", "NUMBER_KEY", "EarlyStopScheduler", "RayBackend", "RayOptions",
           "experiment_paths", "max_epochs", "picklable"]

NUMBER_KEY = "pdenas_trial_number"
"""The config key (next to the search-space params) that carries a Ray trial's pdenas number."""

EXPERIMENTS_DIR = "ray"
"""The folder of a run folder that holds the Tune experiments (``storage_path``)."""

_EXPERIMENT = re.compile(r"^exp-(\d+)$")

# Driver side: the wall-clock time (time.time()) after which no new trial starts. A module
# variable, not searcher state, so a restored searcher obeys the timeout of the command that
# restored it rather than the one that created it.
_deadline: float | None = None


# --- driver side: the search ----------------------------------------------------------------------
class _DefineByRun:
    """The define-by-run space OptunaSearch calls with an Optuna trial (picklable: it is saved with
    the searcher's state). Returns the trial's pdenas number as a constant of the Ray config."""

    def __init__(self, runner: TrialRunner, offset: int) -> None:
        self.runner, self.offset = runner, offset
        self.last: tuple[Any, Any] | None = None
        """The candidate of the latest call (architecture, training settings)."""

    def __call__(self, trial: Any) -> dict[str, int]:
        self.last = self.runner.suggest(trial)
        return {NUMBER_KEY: self.offset + int(trial.number)}


class _StudySearch(OptunaSearch):
    """OptunaSearch that obeys the command's timeout and tells Optuna what pdenas recorded.

    The state told follows the record's status (``TrialStatus.state``): a trial that the
    scheduler stopped, or that was skipped as infeasible, is told PRUNED; a diverged or failed
    candidate FAIL; only a completed one COMPLETE with its final values.
    """

    device: str = "cpu"
    """Set by the backend: the device the trials train on (whose measured trials predict)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        skipped = 0  # draws in a row skipped as too long for the time left
        while True:
            if (_deadline is not None and time.time() >= _deadline
                    or self._space.runner.out_of_time):  # nothing of the space fits the time
                return self._finished()
            config = super().suggest(trial_id)
            if _deadline is None or not isinstance(config, dict):
                return config
            runner, (arch, train) = self._space.runner, self._space.last
            time_left = _deadline - time.time()
            reason = runner.skip_reason(arch, train, time_left, self.device)
            if reason is None:
                return config
            # Not built and not a Ray trial: recorded skipped, told PRUNED with a violated
            # constraint (so the sampler learns it), and the sampler asked again.
            trial = self._ot_trials.pop(trial_id)
            record = runner.record_skipped(int(config[NUMBER_KEY]), arch, train, reason,
                                           trial.params, self.device)
            with contextlib.suppress(Exception):
                encode(trial, record)
                trial.set_constraint("time_left", 1.0)
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            skipped += 1
            if runner.nothing_fits(time_left, self.device):
                return self._finished()  # even the space's cheapest candidate would not fit
            if skipped >= SKIPS_BEFORE_FITTING_DRAW:  # draw from the part that fits
                skipped = 0
                params = runner.fitting_params(time_left, self.device,
                                               seed=runner.config.seed + record.number)
                if params is None:
                    return self._finished()
                self._ot_study.enqueue_trial(params)

    def _finished(self) -> str | None:
        """No new trial: None while trials run (Tune asks again), else finished."""
        running = set(self._ot_trials) - set(self._completed_trials)
        return None if running else Searcher.FINISHED

    run_folder: RunFolder | None = None
    """Set by the backend: the records are copied into the Optuna trials' user attributes."""

    def _copy_record(self, trial_id: str, result: dict[str, Any] | None,
                     status: TrialStatus) -> None:
        number = (result or {}).get("trial_number")
        trial = self._ot_trials.get(trial_id)
        if self.run_folder is None or number is None or trial is None:
            return
        folder = self.run_folder.trial(int(number))
        if not folder.has_record():
            return
        with contextlib.suppress(Exception):  # attributes are for the dashboard only
            record = folder.read_record()
            if not (record.status is TrialStatus.TIMEOUT and status is TrialStatus.FAILED):
                record.status = status  # what the driver's _Finalize writes for a stopped trial
            # else: the trial's watchdog recorded it as hung and ended its actor (an error here)
            encode(trial, record)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        status = (result or {}).get("status")
        # A trial Tune ended while it still said "running" was stopped by the scheduler.
        try:
            state = TrialStatus(status)
        except ValueError:
            state = TrialStatus.FAILED
        if state is TrialStatus.RUNNING:
            state = TrialStatus.STOPPED
        if error:
            state = TrialStatus.FAILED
        if trial_id not in self._completed_trials:
            self._copy_record(trial_id, result, state)
        if status == TrialStatus.COMPLETED and not error:
            super().on_trial_complete(trial_id, result, error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        told = (optuna.trial.TrialState.PRUNED if state.state == "PRUNED"
                else optuna.trial.TrialState.FAIL)
        with contextlib.suppress(Exception):
            self._ot_study.tell(self._ot_trials[trial_id], state=told)
        self._completed_trials.add(trial_id)


class _Finalize(tune.Callback):
    """Driver side: once Tune is done with a trial, a record still "running" becomes "stopped"
    (the scheduler stopped it early by the study's ``rule``) or "failed" (its trainable
    raised)."""

    def __init__(self, run: RunFolder, rule: str) -> None:
        self.run, self.rule = run, rule

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=True)

    def _finish(self, trial: Any, failed: bool) -> None:
        number = (trial.config or {}).get(NUMBER_KEY)
        if number is None:
            return
        folder = self.run.trial(int(number))
        if not folder.has_record():
            if not failed:
                return  # never started (a pending trial the experiment ended)
            record = TrialRecord(number=int(number))
        else:
            record = folder.read_record()
            if record.status is not TrialStatus.RUNNING:
                return
        if failed:
            record.status = TrialStatus.FAILED
            record.failure_reason = f"the Ray trial raised: see {trial.path} (error.txt)"
        else:
            record.status = TrialStatus.STOPPED
            record.failure_reason = stop_reason(self.rule, record.epochs_trained,
                                                record.epochs_planned)
        folder.write_record(record)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def picklable(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """Makes a sampler picklable, as Ray Tune needs: ``tune.Tuner`` pickles its searcher, and the
    sampler with it, when an experiment starts (and again at every checkpoint).

    Optuna 5.1's genetic samplers (NSGA-II, NSGA-III) hold a ``threading.Lock`` and define no
    ``__getstate__``, so they cannot be pickled (Optuna's own study and journal storage drop
    their locks the same way). This registers, once per such class, a reducer that leaves the
    locks out and makes new ones on loading; other samplers are returned as they are.
    """
    cls = type(sampler)
    if cls not in copyreg.dispatch_table and any(
            isinstance(value, _LOCK_TYPES) for value in vars(sampler).values()):
        copyreg.pickle(cls, _without_locks)
    return sampler


def _without_locks(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    state = {k: v for k, v in vars(obj).items() if not isinstance(v, _LOCK_TYPES)}
    locks = {k: type(v) is type(threading.RLock()) for k, v in vars(obj).items()
             if isinstance(v, _LOCK_TYPES)}
    return _with_new_locks, (type(obj), state, locks)


def _with_new_locks(cls: type, state: dict[str, Any], locks: dict[str, bool]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    for name, reentrant in locks.items():
        setattr(obj, name, threading.RLock() if reentrant else threading.Lock())
    return obj


class EarlyStopScheduler(FIFOScheduler):
    """pdenas's own early-stop rules (percentile, ASHA, MO-ASHA: ``_early_stop.stops``) as a Tune
    scheduler, asynchronous as Ray's ASHA: each result adds the epoch's validation accuracy to
    the trial's curve, and the trial goes on or stops as the rule says against the curves of the
    trials that reached that epoch before it (stopped ones included; a failed trial's is dropped,
    as the Optuna backend leaves failed trials out).

    Args:
        config: The study's ``early_stop`` section.
        cost: The cost objective's metric (multi-objective studies), else None.
        min_trials: Keep every trial while fewer than this many reached the epoch.
    """

    def __init__(self, config: EarlyStop, cost: str | None = None,
                 min_trials: int | None = None) -> None:
        super().__init__()
        self.config, self.cost = config, cost
        self.min_trials = MIN_TRIALS if min_trials is None else min_trials
        self._curves: dict[str, list[float]] = {}
        self._costs: dict[str, float] = {}

    def _curve(self, trial_id: str) -> Curve:
        return Curve(tuple(self._curves[trial_id]), self._costs.get(trial_id, math.inf))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        epoch = int(result.get("epoch", 0))
        curve = self._curves.setdefault(trial.trial_id, [])
        del curve[max(epoch - 1, 0):]  # a restored trial trains again from its first epoch
        curve.extend([math.nan] * (epoch - 1 - len(curve)))
        curve.append(float(result.get("val_accuracy", math.nan)))
        if self.cost is not None:
            self._costs[trial.trial_id] = float(result.get(self.cost, math.inf))
        others = [self._curve(t) for t in self._curves if t != trial.trial_id]
        planned = int(result.get("epochs_planned", 0))
        if stops(self.config, self._curve(trial.trial_id), others, planned, self.min_trials):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        try:
            failed = TrialStatus((result or {}).get("status")).failure
        except ValueError:
            failed = False
        if failed:
            self._forget(trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._forget(trial)

    def _forget(self, trial: Any) -> None:
        self._curves.pop(trial.trial_id, None)
        self._costs.pop(trial.trial_id, None)


def _scheduler(config: StudyConfig, space: SearchSpace) -> TrialScheduler:
    """The study's ``early_stop`` rule as a Tune scheduler."""
    early = config.early_stop
    if early.rule == "none":
        return FIFOScheduler()
    if early.rule != "hyperband":
        return EarlyStopScheduler(early, config.objectives[1] if config.multi_objective else None)
    # Asynchronous HyperBand (ASHA over several brackets): Ray's synchronous HyperBand pauses and
    # resumes trials, which a trainable that cannot resume mid-training does not allow.
    max_t = max_epochs(config, space)
    grace = min(early.min_epochs, max_t)
    brackets = 1
    while grace * early.reduction ** brackets <= max_t:
        brackets += 1
    return ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=max_t,
                         grace_period=grace, reduction_factor=early.reduction, brackets=brackets)


def experiment_paths(run_dir: str | Path) -> list[Path]:
    """The run's Tune experiment folders, oldest first."""
    folder = Path(run_dir) / EXPERIMENTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EXPERIMENT.match(p.name))]
    return [p for _, p in sorted(found)]


def _init_ray(address: str | None, quiet: bool) -> bool:
    """Connects to (or starts) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:  # Ray's token authentication stays as the user (or RAY_AUTH_MODE) set it
        ray.init(include_dashboard=False, **kwargs)
    return True


@register_backend("ray")
class RayBackend(Backend):
    """Trials of a Ray Tune experiment (local runtime or cluster), each in its own process."""

    trains_in_process = False

    @classmethod
    def options(cls, config: StudyConfig) -> RayOptions:
        """The study's validated ``ray:`` section."""
        return RayOptions.from_dict(config.ray)

    @classmethod
    def check(cls, config: StudyConfig, *, storage: str | None = None,
              address: str | None = None) -> None:
        options = cls.options(config)
        check_options(config)  # the sampler and its options, as on Optuna
        if config.storage or storage:
            raise InputError("storage: is for the optuna backend; the ray backend keeps its "
                             "results in the run folder (--out)")
        if config.balance_families:
            raise InputError("balance_families: is for the optuna backend (Ray's searcher keeps "
                             "one sampler state); allowed: false with --backend ray")
        if config.device == "cuda" and options.gpus_per_trial <= 0:
            raise InputError("device: cuda with the Ray backend needs ray.gpus_per_trial > 0")

    def prepare(self, data: DataSplits) -> None:
        self.ray_options = self.options(self.config)
        root = self.config.data.resolved_root()
        if not root.is_absolute():  # trials run in their own folders (and maybe on other nodes)
            data_config = dataclasses.replace(self.config.data, root=str(root.resolve()))
            self.config = self.config.replace(data=data_config)
            self.runner = TrialRunner(self.config, self.space, self.run_folder, self.shape)
        # Constraint values live in Optuna user attributes the Ray searcher never sets;
        # infeasible candidates are still skipped by the runner and told PRUNED. Made before
        # anything is written or Ray starts: bad sampler options are bad input.
        self.sampler = picklable(make_sampler(self.config, lambda: self.space.grid(
            image_size=min(data.image_size))))

    def search(self, n_trials: int, timeout: float | None = None,
               progress: Progress | None = None) -> None:
        global _deadline
        run = self.run_folder
        (run.path / EXPERIMENTS_DIR).mkdir(parents=True, exist_ok=True)
        if progress is not None:
            done, best = finished_summary(run.records())
            progress.start(done, n_trials, best)
        # Every epoch's checkpoint replaces the previous one (num_to_keep=1), which snapshots
        # the experiment state each time: cheap here, so Tune's warning about it is noise.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        _deadline = None if timeout is None else time.time() + timeout
        started = _init_ray(self.address, self.quiet)
        try:
            trainable = self._trainable()
            experiments = experiment_paths(run.path)
            if experiments and tune.Tuner.can_restore(str(experiments[-1])):
                _fit(tune.Tuner.restore(str(experiments[-1]), trainable, resume_errored=True),
                     self.quiet)
            missing = n_trials - finished_summary(run.records())[0]
            if missing > 0 and (_deadline is None or time.time() < _deadline):
                index = (int(_EXPERIMENT.match(experiments[-1].name).group(1)) + 1
                         if experiments else 0)
                _fit(self._new_tuner(trainable, missing, run.next_number(), f"exp-{index}"),
                     self.quiet)
        finally:
            _deadline = None
            if started:
                ray.shutdown()

    def _new_tuner(self, trainable: Any, n_trials: int, offset: int, name: str) -> tune.Tuner:
        config = self.config
        metric: str | list[str] = "val_accuracy"
        mode: str | list[str] = "max"
        if config.multi_objective:
            metric, mode = list(config.objectives), ["max"] + ["min"] * (len(config.objectives) - 1)
        first = self.runner.first_params()[:n_trials] if offset == 0 else []
        # The searcher's study lives in the run folder's study.db (as the Optuna backend's), so
        # its Optuna trial numbers continue across top-ups; pdenas numbers are offset only for
        # records an older run wrote without a storage.
        url = self.run_folder.default_storage_url()
        storage = make_storage(url)
        known = optuna.study.get_all_study_names(storage)
        stored = (len(optuna.load_study(study_name=config.name, storage=storage).trials)
                  if config.name in known else 0)
        searcher = _StudySearch(space=_DefineByRun(self.runner, max(0, offset - stored)),
                                metric=metric, mode=mode, sampler=self.sampler,
                                points_to_evaluate=first or None, study_name=config.name,
                                storage=storage)
        searcher.run_folder = self.run_folder
        searcher.device = str(_trial_device(config, self.ray_options.gpus_per_trial))
        limited = ConcurrencyLimiter(
            searcher, max_concurrent=self.ray_options.concurrent(ray.cluster_resources()))
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=limited,
                                        scheduler=_scheduler(config, self.space),
                                        num_samples=n_trials, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name,
                                        reuse_actors=True),  # see the module docstring
            run_config=tune.RunConfig(
                name=name, storage_path=str(self.run_folder.path / EXPERIMENTS_DIR),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[_Finalize(self.run_folder, config.early_stop.rule)],
                verbose=0 if self.quiet else 1),
        )

    def _trainable(self) -> Any:
        resources = {"cpu": self.ray_options.cpus_per_trial, "gpu": self.ray_options.gpus_per_trial}
        with_args = tune.with_parameters(_run_trial, runner=self.runner,
                                         gpus=self.ray_options.gpus_per_trial, deadline=_deadline)
        return tune.with_resources(with_args, resources)


def _fit(tuner: tune.Tuner, quiet: bool) -> None:
    """Runs an experiment; raises ``KeyboardInterrupt`` if Ctrl-C interrupted it.

    Tune stops gracefully on SIGINT (it saves the experiment state, then returns as if it had
    finished), so this catches the first SIGINT itself, remembers it, and asks Tune for the same
    graceful stop through SIGUSR1. A second Ctrl-C interrupts at once.
    """
    interrupted = threading.Event()
    output = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    if threading.current_thread() is not threading.main_thread():
        with output:  # signals reach the main thread only; Tune installs no handler either
            tuner.fit()
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: Any) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, previous)
        os.kill(os.getpid(), signal.SIGUSR1)

    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_interrupt)
    try:
        with output:  # Tune prints its experiment table even at verbose=0
            tuner.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before
    if interrupted.is_set():
        raise KeyboardInterrupt("search interrupted; run the same command to resume")


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.config.get(NUMBER_KEY, trial.trial_id)}"


# --- worker side: one trial -----------------------------------------------------------------------
def _metrics(record: TrialRecord, objectives: tuple[str, ...], epoch: int) -> dict[str, Any]:
    """What a trial reports to Tune: always the searcher's and scheduler's metrics."""
    values = record.objective_values(objectives)
    metrics: dict[str, Any] = {name: (0.0 if value != value else value)  # NaN -> 0
                               for name, value in zip(objectives, values)}
    metrics.update({"epoch": epoch, "status": record.status.value, "trial_number": record.number,
                    "epochs_planned": record.epochs_planned})
    return metrics


def _report(folder: Path, metrics: Mapping[str, Any]) -> None:
    tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(folder)))


class _Hooks(TrialHooks):
    """What a Ray trial reports of its run: each epoch but the last (with a checkpoint of the
    trial folder) for the scheduler; the last one once the final record and weights are saved."""

    def __init__(self, folder: Path, objectives: tuple[str, ...]) -> None:
        self.folder, self.objectives = folder, objectives

    def on_epoch(self, record: TrialRecord, metrics: Mapping[str, float]) -> bool:
        epoch = record.epochs_trained
        if epoch >= record.epochs_planned:
            # The last epoch is reported once the runner has saved the weights and the final
            # record: a scheduler that stops the trial at max_t must not cut that short.
            return False
        view = _metrics(record, self.objectives, epoch)
        view["val_accuracy"] = float(metrics["val_accuracy"])  # this epoch's, for the scheduler
        view.update({k: float(metrics[k]) for k in ("val_loss", "train_loss", "train_accuracy")
                     if k in metrics})
        try:
            _report(self.folder, view)
        except SystemExit:
            # Tune ended the trial: its scheduler stopped it, or the experiment was interrupted.
            # Only the driver knows which: the record stays "running" (the driver makes it
            # "stopped", or a rerun trains it again), and the thread ends without writing more,
            # so that the actor can take the next trial (reuse_actors).
            raise Abandoned from None
        return False


def _run_trial(trial_config: dict[str, Any], *, runner: TrialRunner, gpus: float,
               deadline: float | None = None) -> None:
    """The Tune trainable: replay the candidate, run it through the shared runner, report.
    ``deadline`` (``time.time()``) is the command's ``--timeout``: the runner's calibration
    check skips a candidate that would not end before it."""
    from pdenas.data import load_data

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # per checkpoint
    config = runner.config
    number = int(trial_config[NUMBER_KEY])
    params = {k: v for k, v in trial_config.items() if k != NUMBER_KEY}
    folder = runner.run_folder.trial(number)
    if _finished_in_folder(folder, config.objectives):
        return
    previous = tune.get_checkpoint()
    if previous is not None and _reuse_final(previous, folder.path, config.objectives):
        return
    try:
        arch, train = runner.replay(params)
    except InputError as error:
        record = runner.record_failure(number, f"cannot rebuild the candidate: {error}", params)
        _report(folder.path, _metrics(record, config.objectives, 0))
        return
    device = _trial_device(config, gpus)
    data = load_data(config.data, device=device)

    time_left = None if deadline is None else deadline - time.time()
    try:
        record = runner.run(number, arch, train, data=data, device=device, params=params,
                            hooks=_Hooks(folder.path, config.objectives), time_left=time_left)
    except Abandoned:
        # Ended as Tune's own report ends a stopped trial's thread: returning would report once
        # more (Ray's wrapper does) and wait for ever for a session that no longer reads.
        raise SystemExit(0) from None
    _report(folder.path, _metrics(record, config.objectives, max(record.epochs_trained, 1)))


def _trial_device(config: StudyConfig, gpus: float) -> torch.device:
    """Where a Ray trial trains: the CPU unless the study asks for a GPU and reserves one."""
    import torch

    return (torch.device("cpu") if config.device == "cpu" or gpus <= 0
            else resolve_device(config.device))


def _finished_in_folder(folder: TrialFolder, objectives: tuple[str, ...]) -> bool:
    """A restored trial that the run folder already records as over: report it, do not train.

    The runner writes the final record and the weights before the trainable's last
    ``tune.report``; a Ctrl-C between the two leaves Tune's experiment state one epoch behind, so
    Tune restores the trial from its partial checkpoint. The run folder is the truth: a trial it
    records as finished (and counted toward the budget) is not trained again.
    """
    record = _ending_record(folder.record_path, weights=folder.has_weights())
    if record is None:
        return False
    _report(folder.path, _metrics(record, objectives, max(record.epochs_trained, 1)))
    return True


def _reuse_final(checkpoint: Any, folder: Path, objectives: tuple[str, ...]) -> bool:
    """A restored trial whose checkpoint holds its final record: restore its files, report it
    again and do not train. Returns False otherwise (the trial trains again)."""
    with checkpoint.as_directory() as saved:
        record = _ending_record(Path(saved) / TrialFolder.RECORD,
                                weights=(Path(saved) / TrialFolder.WEIGHTS).is_file())
        if record is None:
            return False
        for item in Path(saved).iterdir():
            if item.is_file() and not (folder / item.name).exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, folder / item.name)
    _report(folder, _metrics(record, objectives, max(record.epochs_trained, 1)))
    return True


def _ending_record(path: Path, *, weights: bool) -> TrialRecord | None:
    """The saved record at ``path`` if it ends a restored trial: final, counted toward the budget
    (an interrupted or lost trial trains again) and, when completed, with its weights beside it.
    None for a missing, damaged or partial record: the trial trains again and rewrites it. One
    rule for the run folder and for a Tune checkpoint."""
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except ValueError:
        return None
    if not (record.status.final and record.status.uses_budget):
        return None
    return record if weights or not record.status.trained else None
