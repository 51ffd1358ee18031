"""Experiment tracking: every trial's parameters, per-epoch metrics and costs, sent to MLflow and
to TensorBoard as the trial runs.

A study chooses the trackers (``tracking:`` in the study file, ``--track`` on the command line)::

    tracking:
      mlflow: {tracking_uri: sqlite:///mlflow.db}   # optional; default MLFLOW_TRACKING_URI
      tensorboard: {}                               # event files in RUN/tensorboard

Each tracker is a ``TrialObserver``: the shared ``TrialRunner`` (``pdenas.backends._base``) tells it
when a trial starts, after every epoch and when it ends, in the process that trains the trial (so
Ray trials log from their workers). MLflow gets one run per trial (named ``trial-N``, in the
experiment named after the study): the suggested params and
the architecture as params, the epoch metrics with ``step`` = epoch, the costs as ``cost/...``
metrics and the status as a tag. TensorBoard gets one folder per trial (``trial-N``) with the epoch
scalars, the costs and an hparams entry. A tracker that fails logs a warning and is dropped for
that trial; it never fails the trial. The packages are optional extras: ``pdenas[mlflow]``
(mlflow-skinny is enough) and ``pdenas[tensorboard]``.

MLflow's own log lines (``INFO mlflow.store.db.utils: Creating initial MLflow database
tables...``) and the ``🏃 View run ...`` lines it prints for a tracking server are shown only
when ``PDENAS_LOG`` asks for their level (or ``MLFLOW_LOGGING_LEVEL`` is set), with the time
and the trial number, and above the progress bar, never on its line (``quiet_mlflow``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pdenas._config import INTERNAL, Config
from pdenas.errors import InputError

if TYPE_CHECKING:
    from pdenas.runs import RunFolder, TrialRecord

__all__ = [
    "TRACKERS",
    "MlflowObserver",
    "MlflowTracking",
    "TensorBoardObserver",
    "TensorBoardTracking",
    "TrackingConfig",
    "TrialObserver",
    "check_tracking",
    "make_observers",
    "notify",
    "observers_for",
    "parse_trackers",
    "quiet_mlflow",
]

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "tensorboard")
"""The trackers ``--track`` and ``tracking:`` know."""

_PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


@dataclass(frozen=True)
class MlflowTracking(Config):
    """MLflow settings.

    Attributes:
        tracking_uri: Where MLflow stores runs (``sqlite:///mlflow.db``, ``file:/path``,
            ``http://host:5000``); None: MLflow's default (``MLFLOW_TRACKING_URI``, else
            ``./mlruns``).
        experiment: The MLflow experiment: the study's name (not a study key).
    """

    SECTION = "tracking.mlflow"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "experiment": "the MLflow experiment is the study's name"}

    tracking_uri: str | None = None
    experiment: str | None = field(default=None, metadata=INTERNAL)


@dataclass(frozen=True)
class TensorBoardTracking(Config):
    """TensorBoard settings: none for a study file; the event files go to ``RUN/tensorboard``
    (one subfolder per trial), where ``tensorboard --logdir RUN/tensorboard`` reads them.

    Attributes:
        log_dir: The folder of the event files; None: ``tensorboard`` in the run folder. A
            relative path is taken inside the run folder (trials may run in other folders or on
            other machines).
    """

    SECTION = "tracking.tensorboard"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "log_dir": "the event files go to RUN/tensorboard (tensorboard --logdir RUN/tensorboard)"}

    log_dir: str | None = field(default=None, metadata=INTERNAL)


@dataclass(frozen=True)
class TrackingConfig(Config):
    """Which trackers a study sends its trials to (none by default).

    Attributes:
        mlflow: MLflow's settings, or None for no MLflow.
        tensorboard: TensorBoard's settings, or None for no TensorBoard.
    """

    SECTION = "tracking"

    mlflow: MlflowTracking | None = None
    tensorboard: TensorBoardTracking | None = None

    @property
    def active(self) -> list[str]:
        """The trackers chosen, in ``TRACKERS`` order."""
        return [name for name in TRACKERS if getattr(self, name) is not None]


def check_tracking(tracking: TrackingConfig) -> None:
    """Refuses a chosen tracker whose package is not installed (bad input, one line)."""
    for name in tracking.active:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise InputError(f"tracking.{name}: the {_PACKAGES[name]} package is not installed; "
                             f"allowed: pip install 'pdenas[{name}]'")


class TrialObserver(Protocol):
    """Told about one trial as it runs (in the process that trains it)."""

    def trial_started(self, record: TrialRecord) -> None:
        """The trial starts: its params and architecture are known."""

    def epoch_done(self, record: TrialRecord, metrics: Mapping[str, float]) -> None:
        """An epoch finished with these metrics (``epoch`` is ``record.epochs_trained``)."""

    def trial_finished(self, record: TrialRecord) -> None:
        """The trial ended (any status); its costs and final values are in the record."""


def make_observers(tracking: TrackingConfig, run: RunFolder,
                   study_name: str) -> list[TrialObserver]:
    """The observers of a study's trackers (one each, fresh for one trial)."""
    observers: list[TrialObserver] = []
    if tracking.mlflow is not None and server_answers(tracking.mlflow.tracking_uri):
        observers.append(MlflowObserver(tracking.mlflow, study_name, run.path))
    if tracking.tensorboard is not None:
        folder = Path(tracking.tensorboard.log_dir or "tensorboard").expanduser()
        observers.append(TensorBoardObserver(folder if folder.is_absolute() else run.path / folder))
    return observers


SERVER_TIMEOUT = 3.0
"""Seconds a tracking server has to answer the one check per process (``server_answers``)."""

_answers: dict[str, bool] = {}


def server_answers(uri: str | None) -> bool:
    """Whether the MLflow tracking server at ``uri`` answers, asked once per process (a file or
    database URI always does). A server that does not answer is warned about once and left out
    of the search: MLflow's own client retries each call for minutes, so a server that is down
    would otherwise slow every trial (a one-trial search took 4 min 14 s instead of 8 s). The
    calls that do go out retry less and time out sooner (``MLFLOW_HTTP_REQUEST_*``, unless the
    user set them)."""
    import os
    import urllib.error
    import urllib.request

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.startswith(("http://", "https://")):
        return True
    if uri not in _answers:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT):
                _answers[uri] = True
        except urllib.error.HTTPError:  # it answered (an old server without /health)
            _answers[uri] = True
        except (OSError, ValueError) as error:
            _answers[uri] = False
            log.warning("tracking: the MLflow server at %s does not answer (%s); the search "
                        "goes on without MLflow", uri, getattr(error, "reason", error))
    return _answers[uri]


_MLFLOW_LOGGERS = ("mlflow", "alembic", "huey", "sqlalchemy.engine")
"""The loggers MLflow's import gives a handler of its own (on stderr)."""

_mlflow_quiet = False


def _requested_level() -> int:
    """The level ``PDENAS_LOG`` names (WARNING when unset or not a level)."""
    level = logging.getLevelName(os.environ.get("PDENAS_LOG", "").strip().upper() or "WARNING")
    return level if isinstance(level, int) else logging.WARNING


def quiet_mlflow() -> None:
    """MLflow's log lines as pdenas's: at the level ``PDENAS_LOG`` asks for (default WARNING, so
    MLflow's INFO lines are not shown), with the time and the trial number, and written with
    ``tqdm.write`` so that they never break the progress bar. Once per process, after importing
    MLflow (its import installs its handlers and sets its level to INFO). A level the user set
    with ``MLFLOW_LOGGING_LEVEL`` is kept.
    """
    global _mlflow_quiet
    if _mlflow_quiet:
        return
    _mlflow_quiet = True
    import mlflow  # noqa: F401  (its import configures its loggers, replaced below)

    from pdenas._log import FORMAT, _TrialField
    from pdenas._progress import BarSafeHandler

    handler = BarSafeHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_TrialField())
    for name in _MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        theirs = [h for h in logger.handlers if type(h) is logging.StreamHandler
                  and type(getattr(h, "stream", None)).__name__ == "MlflowLoggingStream"]
        for old in theirs:
            for log_filter in old.filters:  # MLflow's own filters (suppressed messages)
                if log_filter not in handler.filters:
                    handler.addFilter(log_filter)
        if theirs:
            logger.handlers = [h for h in logger.handlers if h not in theirs] + [handler]
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(_requested_level())


def observers_for(config: Any, run: RunFolder) -> list[TrialObserver]:
    """The observers a study's ``tracking`` section asks for (none when it has none)."""
    tracking = getattr(config, "tracking", None)
    if tracking is None or not tracking.active:
        return []
    return make_observers(tracking, run, config.name)


def notify(observers: list[TrialObserver], event: str, *args: Any) -> None:
    """Calls ``event`` on every observer; one that raises is warned about and dropped."""
    for observer in list(observers):
        try:
            getattr(observer, event)(*args)
        except Exception as error:  # a tracker must never fail a trial
            log.warning("tracking: %s failed in %s (%s: %s); it is off for this trial",
                        type(observer).__name__, event, type(error).__name__, error)
            observers.remove(observer)


def parse_trackers(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--track`` values (``mlflow``, ``tensorboard``, or a comma list) as a ``tracking``
    override: each chosen tracker with the settings the study gives it (or the defaults).

    Raises:
        ValueError: An unknown tracker.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for item in (part.strip() for name in names for part in name.split(",")):
        if item not in TRACKERS:
            raise InputError(f"--track: unknown tracker {item!r}; allowed: {', '.join(TRACKERS)}")
        chosen[item] = {}
    return chosen


def _params(record: TrialRecord) -> dict[str, str]:
    """The trial's suggested params and its architecture, as flat text values."""
    values: dict[str, Any] = {f"arch.{k}": v for k, v in record.architecture.items()}
    values.update(record.params)
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _costs(record: TrialRecord) -> dict[str, float]:
    return {f"cost/{k}": float(v) for k, v in record.cost.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowObserver:
    """One MLflow run per trial (see the module docstring).

    Args:
        settings: The study's MLflow settings.
        study_name: The default experiment name.
        run_path: The pdenas run folder (stored as a tag).
    """

    def __init__(self, settings: MlflowTracking, study_name: str, run_path: Path) -> None:
        self.settings, self.study_name, self.run_path = settings, study_name, run_path
        self.client: Any = None
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        name = self.settings.experiment or self.study_name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # another worker created it first
            return str(self.client.get_experiment_by_name(name).experiment_id)

    def trial_started(self, record: TrialRecord) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        family = str(record.architecture.get("family", ""))
        run = self.client.create_run(
            self._experiment_id(), run_name=f"trial-{record.number}",
            tags={"pdenas.trial": str(record.number), "pdenas.run": str(self.run_path),
                  "pdenas.study": self.study_name, "pdenas.family": family})
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in _params(record).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def epoch_done(self, record: TrialRecord, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(record.epochs_trained)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), stamp, step) for k, v in metrics.items() if k != "epoch"])

    def trial_finished(self, record: TrialRecord) -> None:
        from mlflow.entities import Metric, RunTag

        if self.run_id is None:
            return
        stamp = int(time.time() * 1000)
        values = _costs(record) | {"epochs_trained": float(record.epochs_trained)}
        if record.val_accuracy is not None:
            values["best_val_accuracy"] = float(record.val_accuracy)
        tags = [RunTag("pdenas.status", record.status.value)]
        if record.failure_reason:
            tags.append(RunTag("pdenas.failure_reason", record.failure_reason[:5000]))
        self.client.log_batch(self.run_id, tags=tags,
                              metrics=[Metric(k, v, stamp, 0) for k, v in values.items()])
        status = ("FAILED" if record.status.failure else
                  "KILLED" if not record.status.uses_budget else "FINISHED")
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # its "View run" lines
            self.client.set_terminated(self.run_id, status=status)
        for line in printed.getvalue().splitlines():
            if line.strip():
                logging.getLogger("mlflow.tracking").info(line)


class TensorBoardObserver:
    """One TensorBoard event folder per trial (``<log_dir>/trial-N``).

    Args:
        log_dir: The folder that holds the trials' folders.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def trial_started(self, record: TrialRecord) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir / f"trial-{record.number}"))
        self.writer.add_text("params", "\n".join(f"    {k}: {v}"
                                                for k, v in _params(record).items()))

    def epoch_done(self, record: TrialRecord, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key, float(value), int(record.epochs_trained))
        self.writer.flush()

    def trial_finished(self, record: TrialRecord) -> None:
        if self.writer is None:
            return
        for key, value in _costs(record).items():
            self.writer.add_scalar(key, value, 0)
        hparams: dict[str, Any] = {k: v for k, v in record.params.items()
                                   if isinstance(v, (int, float, str, bool))}
        hparams.update(family=str(record.architecture.get("family", "")),
                       status=record.status.value)
        results = {"best_val_accuracy": float(record.val_accuracy or 0.0),
                   "epochs_trained": float(record.epochs_trained)}
        self.writer.add_hparams(hparams, results, run_name=".")
        self.writer.close()
