"""The Optuna backend: a thin adapter from the shared objective to an Optuna study.

One worker process runs ``search``. Several workers may share one study through a storage URL
(PostgreSQL, MySQL, a journal file): the budget of trials lives in the storage as a queue of
WAITING trials that each worker pops atomically, so the workers together run exactly
``n_trials`` trials. A worker that dies mid-trial stops its heartbeat; another worker fails the
stale trial and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues it again with the same
parameters. Rerunning the same command resumes the study: finished trials stay, the queue is
topped up to the budget. Counting and topping up the budget, and failing a dead worker's trial,
happen under a lock (``budget_lock``) so workers that start or clean up together never queue too
many trials. ``PDENAS_HEARTBEAT_INTERVAL`` and ``PDENAS_GRACE_PERIOD`` (seconds, read at import)
set how often a running trial beats and how long a silent one lives before it is retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from pdenas.study import StudyConfig, TrialRecord, run_candidate

# The heartbeat, its retry callback and metric names are marked experimental; they are what
# multi-worker studies need, so do not warn at every start.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

__all__ = [
    "FAILURE_STATUSES",
    "FINAL_STATUSES",
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "budget_lock",
    "driver_url",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "open_study",
    "sampler_and_pruner",
    "search",
    "top_up",
]

FINAL_STATUSES = ("completed", "pruned", "stopped", "infeasible", "diverged", "oom", "failed")
FAILURE_STATUSES = ("diverged", "oom", "failed")
"""Statuses a FAIL trial carries when its candidate failed (it used up one unit of the budget).
A FAIL trial with any other status lost its worker (even between recording "completed" and
telling Optuna): its heartbeat callback queued a copy, so it does not count."""
"""Statuses of trials that used up one unit of the budget (a dead worker's trial does not)."""

HEARTBEAT_INTERVAL = int(os.environ.get("PDENAS_HEARTBEAT_INTERVAL", "10"))
"""Seconds between two heartbeats of a running trial (RDB storages)."""
GRACE_PERIOD = int(os.environ.get("PDENAS_GRACE_PERIOD", "40"))
"""Seconds without a heartbeat after which a trial counts as dead and is retried."""
POLL_SECONDS = 2.0


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: an RDB URL, or ``journal:PATH`` / a ``.log`` file path.

    RDB storages get a heartbeat, so trials of a dead worker are failed and retried.
    """
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url.removeprefix("journal:").removeprefix("//")
        from optuna.storages.journal import JournalFileBackend

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(
            f"storage: {url!r} is not a storage URL; use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, or journal:/path/study.log"
        )
    url = driver_url(url)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3
                ),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        except ImportError as error:
            raise ValueError(f"storage: the driver for {url.split(':')[0]} is missing ({error}); "
                             "for PostgreSQL install pdenas[postgres]") from None
        except Exception as error:  # sqlalchemy.exc.OperationalError and friends
            # Workers that open a fresh database at the same moment race on creating Optuna's
            # tables and all but one fail: the tables exist on the next try.
            if attempt == 2:
                raise ValueError(f"storage: cannot open {url}: {str(error).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def driver_url(url: str) -> str:
    """Names the installed PostgreSQL driver in a ``postgresql://`` URL.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; pdenas[postgres] installs
    psycopg2. A URL that names its driver (``postgresql+psycopg://``) is left as it is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


@contextlib.contextmanager
def budget_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Serialises the budget bookkeeping of the workers that share a study.

    Counting the budget and queueing the missing trials (``top_up``), and failing a dead worker's
    trial and queueing its retry, must not interleave between workers, or a study would get more
    trials than asked for. PostgreSQL and MySQL use an advisory lock named after the study;
    SQLite and journal files a file lock beside them; other storages are not locked.
    """
    scheme = storage_url.partition(":")[0].split("+")[0]
    if scheme in ("postgresql", "postgres", "mysql", "mariadb"):
        import hashlib

        import sqlalchemy
        from sqlalchemy.pool import NullPool

        key = int.from_bytes(hashlib.sha1(f"pdenas:{study_name}".encode()).digest()[:8], "big",
                             signed=True)
        postgres = scheme.startswith("postgres")
        lock, unlock = (("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
                        if postgres else
                        ("SELECT GET_LOCK(:name, 600)", "SELECT RELEASE_LOCK(:name)"))
        args = {"key": key} if postgres else {"name": f"pdenas-{key:x}"[:64]}
        engine = sqlalchemy.create_engine(driver_url(storage_url), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(lock), args)
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text(unlock), args)
        finally:
            engine.dispose()
        return
    path = None
    if scheme == "sqlite":
        database = storage_url.partition(":///")[2]
        path = database if database and database != ":memory:" else None
    elif storage_url.startswith("journal:") or storage_url.endswith((".log", ".journal")):
        path = storage_url.removeprefix("journal:").removeprefix("//")
    if path is None:
        yield
        return
    import fcntl

    with open(f"{path}.pdenas-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _constraints(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints") or [])


def make_sampler(config: StudyConfig, grid: Callable[[], dict[str, list[Any]]] | None = None):
    """An Optuna sampler by name, seeded, constraint-aware where the sampler supports it."""
    options = dict(config.sampler_options)
    seed = options.pop("seed", config.seed)
    constrained = {"constraints_func": _constraints} if config.constraints.active else {}
    name = config.sampler
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **constrained, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **constrained, **options)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, **constrained, **options)
        if name == "grid":
            if grid is None:
                raise ValueError("sampler: grid needs a search space")
            return optuna.samplers.GridSampler(grid(), seed=seed, **options)
    except TypeError as error:
        raise ValueError(f"sampler_options: {error}") from None
    raise ValueError(f"sampler: unknown {name!r}")


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name; multi-objective studies get none (pdenas's own rule applies)."""
    options = dict(config.pruner_options)
    if config.multi_objective or config.pruner == "none":
        return optuna.pruners.NopPruner()
    try:
        if config.pruner == "median":
            options.setdefault("n_startup_trials", 4)
            options.setdefault("n_warmup_steps", 1)
            return optuna.pruners.MedianPruner(**options)
        if config.pruner == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", config.train.epochs)
            return optuna.pruners.HyperbandPruner(**options)
        if config.pruner == "successive_halving":
            options.setdefault("min_resource", 1)
            return optuna.pruners.SuccessiveHalvingPruner(**options)
    except TypeError as error:
        raise ValueError(f"pruner_options: {error}") from None
    raise ValueError(f"pruner: unknown {config.pruner!r}")


def sampler_and_pruner(config: StudyConfig, space, data) -> tuple[optuna.samplers.BaseSampler,
                                                                  optuna.pruners.BasePruner]:
    """The study's sampler (a grid over ``space`` capped to the data's image size) and pruner.

    Raises:
        ValueError: Bad sampler or pruner options; nothing has been opened or written yet.
    """
    def grid() -> dict[str, list[Any]]:
        return space.grid(image_size=min(data.image_size))

    return make_sampler(config, grid), make_pruner(config)


def open_study(config: StudyConfig, storage_url: str, sampler=None, pruner=None) -> optuna.Study:
    """Creates the study or loads it; refuses a stored study with other objectives."""
    storage = make_storage(storage_url)
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            directions=config.directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except ValueError as error:
        raise ValueError(f"storage: {error}") from None
    stored = [d.name.lower() for d in study.directions]
    if stored != config.directions:
        raise ValueError(
            f"objectives: the stored study {config.name!r} optimises {stored}, this study file "
            f"asks for {config.directions}; use another name or storage"
        )
    study.set_metric_names(list(config.objectives))
    return study


def _counts_toward_budget(trial: FrozenTrial) -> bool:
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return trial.user_attrs.get("status") in FAILURE_STATUSES


def top_up(study: optuna.Study, n_trials: int, first_params: Sequence[Mapping[str, Any]] = ()) -> int:
    """Queues WAITING trials until the study holds ``n_trials`` that count toward the budget.

    Args:
        study: The study.
        n_trials: The budget.
        first_params: Fixed params for the first trials of a new study (one per family, say,
            so that every family is tried before the sampler narrows down).

    Returns:
        How many trials were queued.
    """
    trials = study.get_trials(deepcopy=False)
    used = sum(_counts_toward_budget(t) for t in trials)
    missing = max(0, n_trials - used)
    seeds = list(first_params) if not trials else []
    for i in range(missing):
        params = dict(seeds[i]) if i < len(seeds) else {}
        study.enqueue_trial(params, user_attrs={"status": "queued"}, skip_if_exists=False)
    return missing


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


def _pop(study: optuna.Study) -> optuna.Trial | None:
    """Atomically takes one WAITING trial of the budget; None when the queue is empty."""
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def _others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


class _EarlyStopRule:
    """Multi-objective studies: stop a candidate whose best validation accuracy so far is below
    a percentile (the median by default), at the same epoch, of the trials that reached it (finished and stopped ones, as
    Optuna's MedianPruner does; Optuna's pruners refuse multi-objective studies)."""

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
            self._histories = [
                t.user_attrs.get("history") or []
                for t in self.study.get_trials(deepcopy=False, states=states)
            ]
        at_epoch = [h[epoch - 1]["val_accuracy"] for h in self._histories if len(h) >= epoch]
        if len(at_epoch) < self.min_trials:
            return False
        return accuracy < float(np.percentile(at_epoch, self.percentile))


def run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    config: StudyConfig,
    space,
    data,
    device,
    run_dir: Path,
) -> TrialRecord:
    """Suggests, trains and tells one trial."""
    arch, train = space.suggest(
        trial,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=min(data.image_size),
        base_train=dataclasses.asdict(config.train),
    )
    trial.set_user_attr("status", "running")
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("architecture", arch.to_dict())
    trial.set_user_attr("family", arch.family)
    history: list[dict[str, float]] = []
    rule = (_EarlyStopRule(study, config.early_stop_warmup, config.early_stop_percentile)
            if config.multi_objective else None)

    def report(epoch: int, metrics: Mapping[str, float]) -> bool:
        history.append({k: float(v) for k, v in metrics.items()})
        trial.set_user_attr("history", history)
        accuracy = float(metrics["val_accuracy"])
        if rule is not None:
            return rule(epoch, max(h["val_accuracy"] for h in history))
        trial.report(accuracy, epoch)
        return trial.should_prune()

    def on_cost(record: TrialRecord) -> None:
        for key, value in record.cost.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("constraints", record.constraints)

    record = run_candidate(trial.number, arch, train, config, data, device, run_dir,
                           report=report, on_cost=on_cost)
    attrs = record.to_dict()
    for key in ("status", "failure_reason", "train", "val_accuracy", "epochs_trained",
                "epochs_planned", "history", "constraints", "max_stable_step", "seconds"):
        trial.set_user_attr(key, attrs[key])
    values = record.objective_values(config.objectives)
    if record.status == "completed" and all(math.isfinite(v) for v in values):
        study.tell(trial, values)
    elif record.status in ("pruned", "infeasible"):
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    return record


def search(
    config: StudyConfig,
    space,
    data,
    device,
    run_dir: Path,
    storage_url: str,
    n_trials: int,
    timeout: float | None = None,
    on_trial: Callable[[TrialRecord, optuna.Study], None] | None = None,
    on_start: Callable[[int, int, float | None], None] | None = None,
    study: optuna.Study | None = None,
) -> optuna.Study:
    """Runs (or resumes) the study until its budget of trials is used or ``timeout`` passes.

    Args:
        config: The study.
        space: A ``SearchSpace``.
        data: Data splits on ``device``.
        device: Where trials train.
        run_dir: The run folder.
        storage_url: Optuna storage URL.
        n_trials: The study's total budget of trials.
        timeout: Seconds after which no new trial starts.
        on_trial: Called after each finished trial (progress display).
        on_start: Called once with (trials already finished, budget, best accuracy so far).
        study: The study, already opened on ``storage_url`` with ``sampler_and_pruner`` (the
            command opens it before it writes anything); None opens it here.

    Returns:
        The study.
    """
    if study is None:
        study = open_study(config, storage_url, *sampler_and_pruner(config, space, data))
    first = []
    if config.cover_families and getattr(space.families, "kind", None) == "choice":
        first = [{"family": f} for f in space.families.choices]
    with budget_lock(storage_url, config.name):
        top_up(study, n_trials, first)
    if on_start is not None:
        finished = [t for t in study.get_trials(deepcopy=False)
                    if t.state.is_finished() and _counts_toward_budget(t)]
        accuracies = [t.user_attrs.get("val_accuracy") for t in finished
                      if t.state == TrialState.COMPLETE]
        best = max((a for a in accuracies if a is not None), default=None)
        on_start(len(finished), n_trials, best)
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        with budget_lock(storage_url, config.name):
            optuna.storages.fail_stale_trials(study)
        trial = _pop(study)
        if trial is None:
            # Wait while other workers run trials: a dead worker's trial comes back to the queue
            # once its heartbeat is stale. Without heartbeats (journal files) it never would.
            if _beats(study) and _others_running(study):
                time.sleep(POLL_SECONDS)
                continue
            break
        try:
            with _heartbeat(study, trial._trial_id):
                record = run_one(study, trial, config, space, data, device, run_dir)
        except KeyboardInterrupt:
            # Give the slot back so a rerun does the trial again, then stop.
            # Queue the replacement before failing the trial: the budget never looks short.
            with contextlib.suppress(Exception):
                trial.set_user_attr("status", "interrupted")
                study.enqueue_trial(trial.params, user_attrs={"status": "queued"})
                study.tell(trial, state=TrialState.FAIL)
            raise
        if on_trial is not None:
            on_trial(record, study)
    return study


def write_run_file(run_dir: Path, config: StudyConfig, storage_url: str, backend: str) -> None:
    """Records where a run's results live, so later commands need only the folder."""
    payload = {
        "study_name": config.name,
        "storage": storage_url,
        "backend": backend,
        "study_file": config.path,
        "config": config.to_dict(),
    }
    # Atomic: workers sharing a run folder each write it, and a reader never sees half a file.
    tmp = run_dir / f".run.json.{socket.gethostname()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, run_dir / "run.json")
