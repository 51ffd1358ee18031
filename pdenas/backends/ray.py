"""The Ray Tune backend: the shared objective run as Ray Tune trials, on one machine or a cluster.

``search`` runs a ``ray.tune.Tuner`` whose searcher is Ray's ``OptunaSearch`` driven by the study's
define-by-run search space (``space.suggest`` on the Optuna trial it is handed) and sampler, whose
scheduler is ASHA (or asynchronous HyperBand, or FIFO) on the validation accuracy per epoch, and
whose trials each reserve the study's CPUs and (fractional) GPUs, at most ``max_concurrent`` at a
time. Each Ray trial gets a unique pdenas trial number, rebuilds its candidate with
``space.replay`` and trains it with ``run_candidate``, so the run folder looks like the Optuna
backend's (``trials/<n>/{model.pt, architecture.json, record.json}``) and the leaderboard,
comparison and export read it the same way.

Layout of a Ray run folder::

    run.json                 backend "ray"; ``storage`` is the ``ray/`` folder below
    ray/exp-<k>/             Tune experiments (the first run, then one per top-up); restorable
    trials/<n>/record.json   written after every epoch (status "running") and at the end

Every epoch is reported with ``ray.tune.report`` together with a checkpoint of the trial folder.
When ASHA stops a trial, its trainable is simply not resumed: a driver-side callback then turns
the record's "running" into "stopped", so it keeps the epochs it trained and is never ranked as a
fully trained trial (Ray's OptunaSearch would tell Optuna such a trial COMPLETED with its low,
early values; this backend tells Optuna it was PRUNED instead, and failed candidates FAILED).

Rerunning the same command restores the latest experiment (``Tuner.restore(...,
resume_errored=True)``): finished trials stay, interrupted ones start again from their last
checkpoint (a finished trial is not retrained; a partly trained one trains again from scratch).
If the study then holds fewer finished trials than ``n_trials`` (a larger ``--n-trials``, or an
earlier ``--timeout``), a new experiment runs the missing trials with the next free numbers.
``--timeout`` starts no new trial after that many seconds; running trials finish.

A multi-node cluster needs the run folder on a file system that every node mounts at the same
path (Ray requires a shared ``storage_path`` for checkpoints), and pdenas plus the data on every
node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from pdenas.backends.optuna import FINAL_STATUSES, make_sampler, write_run_file
from pdenas.study import (COST_OBJECTIVES, Constraints, StudyConfig, TrialRecord, resolve_device,
                          run_candidate, trial_dir)

if TYPE_CHECKING:
    from pdenas.data import DataSplits
    from pdenas.space import SearchSpace

__all__ = [
    "EXPERIMENTS_DIR",
    "NUMBER_KEY",
    "experiment_paths",
    "load_records",
    "max_epochs",
    "search",
]

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

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int,
                 image_size: tuple[int, int], base_train: dict[str, Any], offset: int) -> None:
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        self.image_size, self.base_train, self.offset = image_size, base_train, offset

    def __call__(self, trial: Any) -> dict[str, int]:
        self.space.suggest(trial, in_channels=self.in_channels, num_classes=self.num_classes,
                           image_size=self.image_size, base_train=self.base_train)
        return {NUMBER_KEY: self.offset + int(trial.number)}


class _StudySearch(OptunaSearch):
    """OptunaSearch that obeys the command's timeout and tells Optuna what pdenas recorded.

    A trial that ASHA stopped, or that was pruned or skipped as infeasible, is told PRUNED; a
    diverged or failed candidate FAIL; only a completed one COMPLETE with its final values.
    """

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if _deadline is not None and time.time() >= _deadline:
            running = set(self._ot_trials) - set(self._completed_trials)
            return None if running else Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        status = (result or {}).get("status")
        if status == "completed" and not error:
            super().on_trial_complete(trial_id, result, error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        import optuna

        state = (optuna.trial.TrialState.PRUNED
                 if status in ("running", "stopped", "pruned", "infeasible")
                 else optuna.trial.TrialState.FAIL)
        with contextlib.suppress(Exception):
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


class _Finalize(tune.Callback):
    """Driver side: once Tune is done with a trial, a record still "running" becomes "stopped"
    (the scheduler stopped it early) or "failed" (its trainable raised)."""

    def __init__(self, run_dir: str, scheduler: str) -> None:
        self.run_dir, self.scheduler = run_dir, scheduler

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=True)

    def _finish(self, trial: Any, failed: bool) -> None:
        number = (trial.config or {}).get(NUMBER_KEY)
        if number is None:
            return
        path = trial_dir(self.run_dir, int(number)) / "record.json"
        if not path.is_file():
            if not failed:
                return  # never started (a pending trial the experiment ended)
            record = TrialRecord(number=int(number))
        else:
            record = TrialRecord(**json.loads(path.read_text()))
            if record.status != "running":
                return
        if failed:
            record.status = "failed"
            record.failure_reason = f"the Ray trial raised: see {trial.path} (error.txt)"
        else:
            record.status = "stopped"
            record.failure_reason = (f"stopped early by the {self.scheduler} scheduler after "
                                     f"{record.epochs_trained} of {record.epochs_planned} epochs")
        _write_json(path, record.to_dict())


def max_epochs(config: StudyConfig, space: SearchSpace) -> int:
    """The most epochs any candidate trains: the scheduler's ``max_t``."""
    most = int(config.train.epochs)
    families = space.families.extremes()
    for family in families:
        for key, dim in space.dimensions_for(family).train:
            if key == "epochs":
                most = max(most, *(int(v) for v in dim.extremes()))
    return most


def _scheduler(config: StudyConfig, space: SearchSpace) -> TrialScheduler:
    ray_config = config.ray
    if ray_config.scheduler == "fifo":
        return FIFOScheduler()
    max_t = max_epochs(config, space)
    grace = min(ray_config.grace_period, max_t)
    brackets = 1
    if ray_config.scheduler == "hyperband":
        # Asynchronous HyperBand (ASHA over several brackets): Ray's synchronous HyperBand pauses
        # and resumes trials, which a trainable that cannot resume mid-training does not allow.
        while grace * ray_config.reduction_factor ** brackets <= max_t:
            brackets += 1
    return ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=max_t,
                         grace_period=grace, reduction_factor=ray_config.reduction_factor,
                         brackets=brackets)


def experiment_paths(run_dir: str | Path) -> list[Path]:
    """The run's Tune experiment folders, oldest first."""
    folder = Path(run_dir) / EXPERIMENTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EXPERIMENT.match(p.name))]
    return [p for _, p in sorted(found)]


def _finished_records(run_dir: Path) -> tuple[int, int]:
    """(trials with a final status, the next free trial number)."""
    done, next_number = 0, 0
    for path in (run_dir / "trials").glob("*/record.json"):
        with contextlib.suppress(ValueError, OSError):
            record = json.loads(path.read_text())
            next_number = max(next_number, int(record["number"]) + 1)
            done += record.get("status") in FINAL_STATUSES
    for path in (run_dir / "trials").glob("*"):  # a trial that died before its first record
        if path.name.isdigit():
            next_number = max(next_number, int(path.name) + 1)
    return done, next_number


def _check(config: StudyConfig) -> None:
    if config.device == "cuda" and config.ray.gpus_per_trial <= 0:
        raise ValueError("device: cuda with the Ray backend needs ray.gpus_per_trial > 0")


def _init_ray(address: str | None, quiet: bool) -> bool:
    """Connects to (or starts) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(include_dashboard=False, **kwargs)
    return True


def search(
    config: StudyConfig,
    space: SearchSpace,
    run_dir: str | Path,
    n_trials: int | None = None,
    timeout: float | None = None,
    address: str | None = None,
    quiet: bool = False,
    data: DataSplits | None = None,
) -> int:
    """Runs (or restores and continues) the study on Ray Tune until ``n_trials`` trials finished.

    Args:
        config: The study.
        space: Its search space.
        run_dir: The run folder (made absolute: Tune's ``storage_path`` lives inside it).
        n_trials: The study's total budget of trials (default: the study's).
        timeout: Seconds after which no new trial starts (running ones finish).
        address: A Ray cluster ("auto", "HOST:PORT"); default: the study's ``ray.address``, else
            a local runtime. A Ray runtime already initialised in this process is used as it is.
        quiet: No Tune progress output.
        data: The loaded data, if the caller has it (only its shape is used here: each trial
            loads the data itself on its own device).

    Returns:
        How many trials of the study have finished.

    Raises:
        ValueError: The study cannot run on Ray (e.g. device cuda without GPUs per trial).
        KeyboardInterrupt: The search was interrupted; rerunning it resumes.
    """
    global _deadline
    _check(config)
    run_dir = Path(run_dir).resolve()
    root = config.data.resolved_root()
    if not root.is_absolute():  # trials run in their own folders (and maybe on other nodes)
        config = config.replace(data=dataclasses.replace(config.data, root=str(root.resolve())))
    n_trials = config.n_trials if n_trials is None else int(n_trials)
    address = address or config.ray.address
    if data is None:
        from pdenas.data import load_data

        data = load_data(config.data, device="cpu")
    dims = (data.in_channels, data.num_classes, tuple(data.image_size))
    # Constraint values live in Optuna user attributes the Ray searcher never sets; infeasible
    # candidates are still skipped by run_candidate and told PRUNED. Made before anything is
    # written or Ray starts: bad sampler options are bad input.
    sampler = make_sampler(config.replace(constraints=Constraints()),
                           lambda: space.grid(image_size=min(data.image_size)))
    storage = run_dir / EXPERIMENTS_DIR
    storage.mkdir(parents=True, exist_ok=True)
    write_run_file(run_dir, config, str(storage), "ray")
    # Every epoch's checkpoint replaces the previous one (num_to_keep=1), which snapshots the
    # experiment state each time: cheap here, so Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    _deadline = None if timeout is None else time.time() + timeout
    started = _init_ray(address, quiet)
    try:
        trainable = _trainable(config, space, run_dir)
        experiments = experiment_paths(run_dir)
        if experiments and tune.Tuner.can_restore(str(experiments[-1])):
            _fit(tune.Tuner.restore(str(experiments[-1]), trainable, resume_errored=True), quiet)
        done, next_number = _finished_records(run_dir)
        missing = n_trials - done
        if missing > 0 and (_deadline is None or time.time() < _deadline):
            index = int(_EXPERIMENT.match(experiments[-1].name).group(1)) + 1 if experiments else 0
            _fit(_new_tuner(config, space, run_dir, trainable, dims, sampler, missing,
                            next_number, f"exp-{index}", quiet), quiet)
            done, _ = _finished_records(run_dir)
        return done
    finally:
        _deadline = None
        if started:
            ray.shutdown()


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


def _new_tuner(config: StudyConfig, space: SearchSpace, run_dir: Path, trainable: Any,
               dims: tuple[int, int, tuple[int, int]], sampler: Any, n_trials: int, offset: int,
               name: str, quiet: bool) -> tune.Tuner:
    in_channels, num_classes, image_size = dims
    base_train = dataclasses.asdict(config.train)
    define_by_run = _DefineByRun(space, in_channels, num_classes, image_size, base_train, offset)
    metric: str | list[str] = "val_accuracy"
    mode: str | list[str] = "max"
    if config.multi_objective:
        metric, mode = list(config.objectives), ["max"] + ["min"] * (len(config.objectives) - 1)
    first: list[dict[str, Any]] = []
    if offset == 0 and config.cover_families and getattr(space.families, "kind", None) == "choice":
        first = [{"family": family} for family in space.families.choices][:n_trials]
    searcher = _StudySearch(space=define_by_run, metric=metric, mode=mode, sampler=sampler,
                            points_to_evaluate=first or None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.ray.max_concurrent),
            scheduler=_scheduler(config, space),
            num_samples=n_trials,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(run_dir / EXPERIMENTS_DIR),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_Finalize(str(run_dir), config.ray.scheduler)],
            verbose=0 if quiet else 1,
        ),
    )


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.config.get(NUMBER_KEY, trial.trial_id)}"


def _trainable(config: StudyConfig, space: SearchSpace, run_dir: Path) -> Any:
    resources = {"cpu": config.ray.cpus_per_trial, "gpu": config.ray.gpus_per_trial}
    with_args = tune.with_parameters(_run_trial, study=config, space=space, run_dir=str(run_dir))
    return tune.with_resources(with_args, resources)


# --- worker side: one trial -----------------------------------------------------------------------
def _trial_device(config: StudyConfig) -> Any:
    import torch

    if config.device == "cpu" or config.ray.gpus_per_trial <= 0:
        return torch.device("cpu")
    return resolve_device(config.device)


def _metrics(record: TrialRecord, objectives: tuple[str, ...], epoch: int,
             extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """What a trial reports to Tune: always the searcher's and scheduler's metrics."""
    values = record.objective_values(objectives)
    metrics: dict[str, Any] = {name: (0.0 if value != value else value)  # NaN -> 0
                               for name, value in zip(objectives, values)}
    metrics.update({"epoch": epoch, "status": record.status, "trial_number": record.number,
                    "epochs_planned": record.epochs_planned})
    metrics.update(extra or {})
    return metrics


def _write_json(path: Path, payload: Any) -> None:
    """Writes JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _run_trial(trial_config: dict[str, Any], *, study: StudyConfig, space: SearchSpace,
               run_dir: str) -> None:
    """The Tune trainable: replay the candidate, train it with ``run_candidate``, report."""
    from pdenas.data import load_data

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # per checkpoint
    number = int(trial_config[NUMBER_KEY])
    params = {k: v for k, v in trial_config.items() if k != NUMBER_KEY}
    folder = trial_dir(run_dir, number)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "ray.json", {"trial_id": tune.get_context().get_trial_id(),
                                      "params": params})
    previous = tune.get_checkpoint()
    if previous is not None and _reuse_final(previous, folder, study.objectives):
        return
    device = _trial_device(study)
    data = load_data(study.data, device=device)
    try:
        arch, train = space.replay(params, in_channels=data.in_channels,
                                   num_classes=data.num_classes, image_size=tuple(data.image_size),
                                   base_train=dataclasses.asdict(study.train))
    except ValueError as error:
        record = TrialRecord(number=number, status="failed",
                             failure_reason=f"cannot rebuild the candidate: {error}")
        _write_json(folder / "record.json", record.to_dict())
        tune.report(_metrics(record, study.objectives, 0),
                    checkpoint=tune.Checkpoint.from_directory(str(folder)))
        return
    (folder / "architecture.json").write_text(json.dumps(arch.to_dict(), indent=2))
    start = time.perf_counter()
    progress: dict[str, Any] = {"record": None, "history": []}

    def on_cost(record: TrialRecord) -> None:
        progress["record"] = record

    def report(epoch: int, metrics: Mapping[str, float]) -> bool:
        history = progress["history"]
        history.append({k: float(v) for k, v in metrics.items()})
        if epoch >= train.epochs:
            # The last epoch is reported once run_candidate has saved the weights and the final
            # record: a scheduler that stops the trial at max_t must not cut that short.
            return False
        partial = dataclasses.replace(
            progress["record"], status="running", history=list(history), epochs_trained=epoch,
            val_accuracy=max(h["val_accuracy"] for h in history),
            seconds=time.perf_counter() - start)
        _write_json(folder / "record.json", partial.to_dict())
        extra = {k: float(metrics[k]) for k in ("val_loss", "train_loss", "train_accuracy")
                 if k in metrics}
        scheduler_view = _metrics(partial, study.objectives, epoch, extra)
        scheduler_view["val_accuracy"] = float(metrics["val_accuracy"])  # this epoch's
        try:
            tune.report(scheduler_view, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        except SystemExit:
            # Tune stopped the trial (the scheduler, or the end of the experiment) and would end
            # this thread here. Write nothing more: the partial record above stays, the driver
            # marks it stopped, and the actor's process ends with this thread still waiting
            # (unwinding through run_candidate would overwrite the record).
            threading.Event().wait()
        return False

    record = run_candidate(number, arch, train, study, data, device, run_dir,
                           report=report, on_cost=on_cost)
    tune.report(_metrics(record, study.objectives, max(record.epochs_trained, 1)),
                checkpoint=tune.Checkpoint.from_directory(str(folder)))


def _reuse_final(checkpoint: Any, folder: Path, objectives: tuple[str, ...]) -> bool:
    """A restored trial whose checkpoint holds its final record: restore its files, report it
    again and do not train. Returns False for a partial checkpoint (the trial trains again)."""
    with checkpoint.as_directory() as saved:
        path = Path(saved) / "record.json"
        if not path.is_file():
            return False
        record = TrialRecord(**json.loads(path.read_text()))
        if record.status == "running":
            return False
        for item in Path(saved).iterdir():
            if item.is_file() and not (folder / item.name).exists():
                shutil.copy2(item, folder / item.name)
    tune.report(_metrics(record, objectives, max(record.epochs_trained, 1)),
                checkpoint=tune.Checkpoint.from_directory(str(folder)))
    return True


# --- reading results ------------------------------------------------------------------------------
_ARCH_KEYS = ("family", "step_size", "depths", "widths", "activation", "norm", "reversible")
_STATES = {"running": "RUNNING", "failed": "ERROR"}


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The trials of a Ray run folder, one row each, with the Optuna backend's columns.

    Columns: ``number``, ``state`` (RUNNING, TERMINATED or ERROR), ``status``,
    ``failure_reason``, the architecture fields, the metrics, ``epochs_trained``,
    ``epochs_planned``, ``seconds``, ``history`` and ``params_suggested``. A record that is not
    "completed" never claims the full budget: its ``epochs_trained`` is what it trained.
    """
    rows = []
    for path in sorted((Path(run_dir) / "trials").glob("*/record.json")):
        try:
            record = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        arch = record.get("architecture") or {}
        cost = record.get("cost") or {}
        status = record.get("status", "running")
        row: dict[str, Any] = {
            "number": int(record["number"]),
            "state": _STATES.get(status, "TERMINATED"),
            "status": status,
            "failure_reason": record.get("failure_reason"),
        }
        for key in _ARCH_KEYS:
            value = arch.get(key)
            row[key] = tuple(value) if isinstance(value, list) else value
        row["val_accuracy"] = record.get("val_accuracy")
        for key in COST_OBJECTIVES:
            row[key] = cost.get(key)
        row["epochs_trained"] = record.get("epochs_trained")
        row["epochs_planned"] = record.get("epochs_planned")
        row["seconds"] = record.get("seconds")
        row["history"] = record.get("history") or []
        row["max_stable_step"] = record.get("max_stable_step")
        ray_file = path.with_name("ray.json")
        params: dict[str, Any] = {}
        with contextlib.suppress(ValueError, OSError):
            params = json.loads(ray_file.read_text()).get("params", {})
        row["params_suggested"] = params
        rows.append(row)
    return rows
