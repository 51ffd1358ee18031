"""The backend contract, and the trial runner every backend shares.

A backend maps pdenas's trials onto a tuning library (Optuna, Ray Tune); everything else about a
trial is the same for every backend and lives here, in ``TrialRunner``.

Lifecycle of a search (``pdenas.backends.run_search`` drives it; the CLI and the Python API call
that, never a backend directly):

1. ``get_backend(name)`` finds the backend class in the registry; ``cls.check(config)``
   validates the backend's own options (samplers, early stopping, Ray settings). Bad input is a
   ``ValueError`` before anything is written.
2. The run folder is claimed (``RunFolder.claim``: a folder holding another study is refused),
   the data is loaded (on the trial device when ``cls.trains_in_process``, else only for its
   shape), and ``backend = cls(config, space, run, shape, device, quiet=...)`` is made.
3. ``backend.prepare(data)`` opens what the backend needs (its storage, its sampler); bad
   options, a storage that cannot be opened or a stored study with other objectives are a
   ``ValueError``. It may create its own storage and nothing else.
4. ``run.json`` is written with ``backend.storage`` (None: the folder's own SQLite file).
5. ``backend.search(n_trials, timeout, progress)`` runs trials until the study holds
   ``n_trials`` that count toward the budget (``TrialStatus.uses_budget``) or ``timeout``
   seconds have passed. Each trial goes through ``TrialRunner``: ``suggest`` (or ``replay``)
   turns the backend's suggestions into a candidate, ``run`` takes it through its phases
   (``_lifecycle``: measure, gate, train, finish), telling the backend through one
   ``TrialHooks`` object (its cost, each epoch, which may stop it, a hung trial). Ctrl-C raises
   ``KeyboardInterrupt`` after giving the running trial back; rerunning the same search
   resumes.

A backend never writes trial files itself: the trial's phases write ``record.json`` (the one
source of truth for every reader), the architecture and the weights through ``TrialFolder``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from pdenas.architecture import Architecture
from pdenas.backends._lifecycle import TrialHooks, TrialLife, now
from pdenas.errors import InputError
from pdenas.runs import RunFolder, TrialRecord, TrialStatus, plain
from pdenas.study import StudyConfig
from pdenas.train import TrainConfig

if TYPE_CHECKING:
    from pdenas.backends._time_model import TimeModel
    from pdenas.data import DataSplits
    from pdenas.space import SearchSpace
    from pdenas.tracking import TrialObserver

__all__ = ["Backend", "CALIBRATIONS_BEFORE_GIVING_UP", "DataShape", "Progress",
           "SKIPS_BEFORE_FITTING_DRAW", "TooLong", "TrialHooks", "TrialRunner", "finished_summary",
           "now"]

SKIPS_BEFORE_FITTING_DRAW = 3
"""Draws skipped in a row as too long for the time left before the search draws one itself from
the part of the space that fits (``TrialRunner.fitting_params``) instead of asking the sampler
again (the sampler has been told of each skipped draw, as a violated constraint)."""

CALIBRATIONS_BEFORE_GIVING_UP = 2
"""Until a trial has trained, how often the space's cheapest candidate is calibrated itself
before its prediction may end the search: one calibration can stall (another process on the
core), and in a space of equal FLOPs the first, stalled, one is already the cheapest's."""


class TooLong(str):
    """Why a candidate is not trained: predicted to need more time than the search has left
    (recorded ``skipped``: not counted toward the budget; a cost limit is ``infeasible``)."""

    status = TrialStatus.SKIPPED

class Progress(Protocol):
    """What a search tells its caller (a progress bar)."""

    def start(self, done: int, total: int, best: float | None) -> None: ...

    def update(self, record: TrialRecord) -> None: ...


@dataclass(frozen=True)
class DataShape:
    """What a candidate needs of the data before training: its input and output sizes."""

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]

    @classmethod
    def of(cls, data: DataSplits) -> DataShape:
        return cls(data.in_channels, data.num_classes, tuple(int(s) for s in data.image_size))


class TrialRunner:
    """Turns a backend's suggestions into candidates and runs them: the same for every backend.

    Args:
        config: The study.
        space: Its search space.
        run: The run folder.
        shape: The data's shape.
        observers: Made fresh for each trial and told when it starts, after every epoch and when
            it ends (``pdenas.tracking.TrialObserver``); None: the study's ``tracking`` section's
            trackers, made in the process that trains the trial.
    """

    def __init__(self, config: StudyConfig, space: SearchSpace, run: RunFolder,
                 shape: DataShape,
                 observers: Callable[[], list[TrialObserver]] | None = None) -> None:
        self.config, self.space, self.run_folder, self.shape = config, space, run, shape
        self.observers = observers
        for k, params in enumerate(config.start_with):  # before anything is written
            try:
                space.check_params(params, in_channels=shape.in_channels,
                                   num_classes=shape.num_classes, image_size=shape.image_size)
            except ValueError as error:
                raise InputError(f"start_with[{k}].{error}") from None
        self.out_of_time = False
        """The search has no time for another candidate (``--timeout``): even the space's
        cheapest candidate is predicted not to fit in the time left (``fitting_params``). The
        backend starts no further trial. A draw that does not fit alone does not end the search:
        candidates differ in cost several times over, and a cheaper one may still fit."""

    def make_observers(self) -> list[TrialObserver]:
        """A trial's trackers, made fresh for it."""
        from pdenas.tracking import observers_for

        return self.observers() if self.observers is not None else observers_for(
            self.config, self.run_folder)

    def family_choices(self) -> tuple[str, list[str]]:
        """The family param's name and the families the space chooses from (empty when the
        space fixes one family)."""
        families = self.space.families
        choices = list(families.choices) if getattr(families, "kind", None) == "choice" else []
        return families.name, choices

    def first_params(self) -> list[dict[str, Any]]:
        """Fixed params of a new study's first trials: the study's ``start_with``, then one per
        family (``cover_families``), so every family is tried before the sampler narrows down."""
        name, choices = self.family_choices()
        started = {params.get(name) for params in self.config.start_with}
        cover = ([{name: family} for family in choices if family not in started]
                 if self.config.cover_families else [])
        return [*map(dict, self.config.start_with), *cover]

    def _build(self, method: Callable[..., tuple[Architecture, TrainConfig]], source: Any
               ) -> tuple[Architecture, TrainConfig]:
        return method(source, in_channels=self.shape.in_channels,
                      num_classes=self.shape.num_classes, image_size=self.shape.image_size,
                      base_train=self.config.train.to_dict())

    def suggest(self, trial: Any) -> tuple[Architecture, TrainConfig]:
        """The candidate of a define-by-run trial (``optuna.Trial`` or Ray's)."""
        return self._build(self.space.suggest, trial)

    def replay(self, params: Mapping[str, Any]) -> tuple[Architecture, TrainConfig]:
        """The candidate of stored params (``ValueError`` when they do not fit the space)."""
        return self._build(self.space.replay, params)

    def record_failure(self, number: int, reason: str,
                       params: Mapping[str, Any] | None = None) -> TrialRecord:
        """Records a trial whose candidate could not even be built (status failed)."""
        record = TrialRecord(number=number, status=TrialStatus.FAILED, failure_reason=reason,
                             params=plain(dict(params or {})), epochs_planned=self.config.train.epochs,
                             started_at=now(), finished_at=now())
        self.run_folder.trial(number).write_record(record)
        return record

    def run(self, number: int, arch: Architecture, train: TrainConfig, *, data: DataSplits,
            device: torch.device, params: Mapping[str, Any] | None = None,
            hooks: TrialHooks | None = None, time_left: float | None = None) -> TrialRecord:
        """Takes one candidate through its phases (``_lifecycle.TrialLife``: measure, gate,
        train, finish) and returns its final record (also in ``trials/<number>/record.json``).

        A diverging, out-of-memory, timed-out or failing candidate becomes a record with its
        status and reason; Ctrl-C and errors in pdenas itself write the record as interrupted
        and propagate. The arguments are ``TrialLife``'s.
        """
        return TrialLife(self, number, arch, train, data=data, device=device, params=params,
                         hooks=hooks, time_left=time_left).run()

    # --- the time left (``--timeout``): ``_time_model`` ------------------------------------------
    def time_model(self, device: torch.device | str) -> TimeModel:
        """The seconds model, fitted on the run's trials measured by this host on ``device``."""
        from pdenas.backends._time_model import TimeModel

        return TimeModel(self.run_folder.records(), device, self.shape.image_size)

    def skip_reason(self, arch: Architecture, train: TrainConfig, time_left: float | None,
                    device: torch.device | str) -> TooLong | None:
        """Why a drawn candidate is not even built: predicted, from its architecture and the
        trials measured so far, to need more than the time left; None to build it. Until a trial
        has trained, a candidate as cheap as the space's cheapest is built until it was
        calibrated twice itself (one calibration is too weak to give up on the space)."""
        if time_left is None:
            return None
        model = self.time_model(device)
        upper = model.upper(arch, train)
        if upper is None or upper <= time_left or self._unsettled(model, arch, train):
            return None
        return TooLong(f"predicted to need {upper:,.0f} s (before building it, from "
                       f"{model.count} measured trials), more than the search has left "
                       f"({max(time_left, 0):,.0f} s)")

    def record_skipped(self, number: int, arch: Architecture, train: TrainConfig,
                       reason: TooLong, params: Mapping[str, Any] | None = None,
                       device: torch.device | str = "cpu") -> TrialRecord:
        """Records a draw skipped before it was built (status skipped: not counted)."""
        record = TrialRecord(number=number, status=TrialStatus.SKIPPED, failure_reason=reason,
                             architecture=arch.to_dict(), train=train.to_dict(),
                             params=plain(dict(params or {})), epochs_planned=train.epochs,
                             device=str(device), started_at=now(), finished_at=now())
        self.run_folder.trial(number).write_record(record)
        return record

    def nothing_fits(self, time_left: float, device: torch.device | str) -> bool:
        """Whether even the space's cheapest candidate is predicted not to fit in ``time_left``
        (then ``out_of_time`` is set); False while no trial is measured, and while the prediction
        rests on calibrations alone and the cheapest was not calibrated twice itself (it is tried:
        see ``skip_reason``)."""
        model = self.time_model(device)
        if not model.count:
            return False
        params, _ = self._cheapest(model)
        arch, train = self.replay(params)
        upper = model.upper(arch, train)
        self.out_of_time = (upper is not None and upper > time_left
                            and not self._unsettled(model, arch, train))
        return self.out_of_time

    def fitting_params(self, time_left: float, device: torch.device | str,
                       seed: int) -> dict[str, Any] | None:
        """Params of a candidate drawn from the part of the space predicted to fit in
        ``time_left`` (``_time_model.fitting_draw``), or None when none fits; then, if even the
        cheapest candidate is predicted not to fit, ``out_of_time`` is set. While the prediction
        rests on calibrations alone, the space's cheapest candidate instead, until it was
        calibrated twice itself."""
        from pdenas.backends._time_model import fitting_draw

        model = self.time_model(device)
        if not model.count:
            return None
        params = fitting_draw(self._suggested, model, time_left, seed)
        if params is None:
            low, _ = self._cheapest(model)
            if self._unsettled(model, *self.replay(low)):
                return low
        self.out_of_time = params is None
        return params

    def _suggested(self, trial: Any) -> tuple[Architecture, TrainConfig]:
        return self._build(self.space.suggest, trial)

    def _cheapest(self, model: TimeModel) -> tuple[dict[str, Any], float]:
        from pdenas.backends._time_model import cheapest

        return cheapest(self._suggested, model)

    def _unsettled(self, model: TimeModel, arch: Architecture, train: TrainConfig) -> bool:
        """Whether the search may not yet give up on a candidate predicted not to fit: no trial
        has trained (the model rests on calibrations, where one stall made a tiny network seem
        to need 15 s an epoch), the candidate is as cheap as the space's cheapest, and it was
        not calibrated ``CALIBRATIONS_BEFORE_GIVING_UP`` times itself."""
        if model.trained or model.measured(arch) >= CALIBRATIONS_BEFORE_GIVING_UP:
            return False
        _, low = self._cheapest(model)
        predicted = model.predict(arch, train)
        return predicted is not None and predicted <= low * (1 + 1e-9)

    def refusal(self, record: TrialRecord, time_left: float | None) -> str | None:
        """Why a measured candidate is not trained (a cost limit, or its predicted time), or
        None to train it."""
        config, cost = self.config, record.cost
        if not config.constraints.skip_infeasible:
            return None
        predicted = cost["predicted_seconds"]
        broken = config.constraints.describe(cost)
        if broken:
            return "breaks a cost limit: " + broken
        if config.trial_timeout is not None and predicted > config.trial_timeout:
            return (f"predicted to need {predicted:,.0f} s, over the trial time limit "
                    f"({config.trial_timeout:g} s)")
        if time_left is not None and predicted > time_left:
            return TooLong(f"predicted to need {predicted:,.0f} s, more than the search has "
                           f"left ({max(time_left, 0):,.0f} s)")
        return None


class Backend(abc.ABC):
    """One tuning library behind pdenas's search (see the module docstring for the lifecycle).

    Args:
        config: The study (checked with ``check``).
        space: Its search space.
        run: The run folder (claimed).
        shape: The data's shape.
        device: Where in-process trials train.
        quiet: No progress output of the library's own.
        address: A cluster address, for backends that have one.
    """

    name: ClassVar[str]
    """The registry name (``--backend``)."""
    trains_in_process: ClassVar[bool] = True
    """Whether trials train in this process on the loaded data (else each loads its own)."""
    storage: str | None = None
    """What ``run.json`` records as the storage (None: the folder's own SQLite file)."""

    def __init__(self, config: StudyConfig, space: SearchSpace, run: RunFolder,
                 shape: DataShape, device: torch.device, *, quiet: bool = False,
                 address: str | None = None) -> None:
        self.config, self.space, self.run_folder = config, space, run
        self.shape, self.device, self.quiet, self.address = shape, device, quiet, address
        self.runner = TrialRunner(config, space, run, shape)

    @classmethod
    def check(cls, config: StudyConfig, *, storage: str | None = None,
              address: str | None = None) -> None:
        """Validates the backend's own options and arguments (``ValueError`` for bad input)."""

    @abc.abstractmethod
    def prepare(self, data: DataSplits) -> None:
        """Opens the backend's storage and sampler; ``ValueError`` for bad input."""

    @abc.abstractmethod
    def search(self, n_trials: int, timeout: float | None = None,
               progress: Progress | None = None) -> None:
        """Runs trials until the budget is used or ``timeout`` seconds passed."""


def finished_summary(records: Sequence[TrialRecord]) -> tuple[int, float | None]:
    """(trials that used their unit of the budget and are over, best completed accuracy)."""
    done = [r for r in records if r.status.final and r.status.uses_budget]
    accuracies = [r.val_accuracy for r in done
                  if r.status is TrialStatus.COMPLETED and r.val_accuracy is not None]
    return len(done), max(accuracies, default=None)

