"""The life of one trial, the same on every backend, in four phases:

1. **measure**: the record is written (status running), the model built from its seed (and
   warm-started), its cost measured and its seconds predicted from a few real training steps;
   the backend hears of the cost (``TrialHooks.on_cost``: constraints for the sampler).
2. **gate**: a candidate over a cost limit or the trial time limit, or refused by the stability
   check, is recorded as infeasible and not trained; one predicted to need more than the time
   the search has left is recorded as skipped (not counted toward the budget).
3. **train**: ``fit``, with the backend told after every epoch (``TrialHooks.on_epoch``, which
   may stop the trial early) and a watchdog for a call that hangs past ``trial_timeout``.
4. **finish**: the status, the best-validation weights and the final record; the trackers told.

Only the candidate's own outcomes become trial statuses: divergence, running out of memory, the
time limits, a failure ``fit`` reports (``TrainingFailed``), a candidate that cannot be built
from its params (``InputError``). Anything else raised here is a bug in pdenas, not a property of
the candidate: it propagates with its traceback (as Optuna's ``catch=()``) after the record is
written as interrupted, so that a rerun, once the bug is fixed, trains the trial again. Ctrl-C
does the same.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from pdenas._log import TRIAL
from pdenas.architecture import Architecture
from pdenas.backends._stability import estimate, final_gain, stabilise
from pdenas.backends._warm_start import warm_start
from pdenas.backends._watchdog import Watchdog, grace_seconds, may_exit
from pdenas.errors import InputError
from pdenas.runs import TrialRecord, TrialStatus, plain
from pdenas.train import TrainConfig

if TYPE_CHECKING:
    from pdenas.backends._base import TrialRunner
    from pdenas.data import DataSplits

__all__ = ["Abandoned", "TrialHooks", "TrialLife", "now"]


def now() -> str:
    """The current time, ISO 8601 in UTC (what records store)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Abandoned(BaseException):
    """Raised by a hook when the trial's thread is ended from outside (Ray Tune stops a trial by
    ending its thread at a report, for its scheduler or at Ctrl-C): the trial writes nothing
    more, its record stays as its last epoch wrote it ("running"), and the backend decides what
    it became (Ray's driver: stopped by the scheduler, or left to a rerun to train again)."""


class TrialHooks:
    """What a backend hears of a trial it runs; each method may be left as it is.

    ``on_cost`` and ``on_epoch`` are called in the training thread; ``on_hung`` from the
    watchdog's thread, with the final record, before a supervised worker's process is ended.
    """

    def on_cost(self, record: TrialRecord) -> None:
        """The candidate's cost and predicted seconds are known (before the gate)."""

    def on_epoch(self, record: TrialRecord, metrics: Mapping[str, float]) -> bool:
        """An epoch ended (the record is written); return True to stop the trial early."""
        return False

    def on_hung(self, record: TrialRecord) -> None:
        """The trial hung past its time limit and was recorded as ``timeout``."""


class TrialLife:
    """One trial through its phases (see the module docstring); ``run`` returns its record.

    Args:
        runner: The search's runner (study, space, run folder, data shape, observers, gate).
        number: The trial number (also offsets the seed of the initial weights).
        arch: The candidate.
        train: Its training settings.
        data: Data splits on ``device``.
        device: Where to train.
        params: The suggested params (stored so the trial can be rebuilt).
        hooks: The backend's hooks.
        time_left: Seconds the search has left (``--timeout``).
    """

    def __init__(self, runner: TrialRunner, number: int, arch: Architecture, train: TrainConfig,
                 *, data: DataSplits, device: torch.device,
                 params: Mapping[str, Any] | None = None, hooks: TrialHooks | None = None,
                 time_left: float | None = None) -> None:
        from pdenas.train import FitResult

        self.runner, self.config, self.arch, self.train = runner, runner.config, arch, train
        self.data, self.device, self.time_left = data, device, time_left
        self.hooks = hooks or TrialHooks()
        self.folder = runner.run_folder.trial(number)
        self.record = TrialRecord(
            number=number, architecture=arch.to_dict(), train=train.to_dict(),
            params=plain(dict(params or {})), epochs_planned=train.epochs,
            worker=f"{socket.gethostname()}:{os.getpid()}", device=str(device), started_at=now())
        self.start = time.perf_counter()
        self.model: torch.nn.Module | None = None
        self.progress = FitResult()  # fit fills it in place: the watchdog reads the best weights
        self.observers: list[Any] = []
        self.watchdog: Watchdog | None = None
        self.abandoned = False

    # --- the phases ----------------------------------------------------------------------------
    def run(self) -> TrialRecord:
        """Runs the phases; never raises for the candidate's own outcomes."""
        token = TRIAL.set(self.record.number)  # log lines name the trial
        try:
            return self._run()
        finally:
            TRIAL.reset(token)

    def _run(self) -> TrialRecord:
        from pdenas.tracking import notify
        from pdenas.train import TrainingFailed

        self.folder.write_architecture(self.arch.to_dict())
        self.save()
        self.observers = self.runner.make_observers()
        notify(self.observers, "trial_started", self.record)
        self.watchdog = self._arm_watchdog()
        try:
            self.measure()
            refused = self.gate()
            if refused is None:
                self.fit()
            else:
                # over a cost limit: infeasible; too long for the time left: skipped (TooLong)
                self.record.status = getattr(refused, "status", TrialStatus.INFEASIBLE)
                self.record.failure_reason = str(refused)
        except TrainingFailed as error:
            self._training_failed(error)
        except torch.OutOfMemoryError as error:  # while building or measuring, before training
            self._outcome(TrialStatus.OOM,
                          f"out of memory before training: {str(error).splitlines()[0]}")
        except MemoryError as error:  # Python's own allocations (host memory) anywhere
            self._outcome(TrialStatus.OOM,
                          f"out of host memory: MemoryError {str(error)[:160]}".rstrip())
        except InputError as error:  # the candidate's params describe no network that can run
            self._outcome(TrialStatus.FAILED, f"cannot build the candidate: {error}")
        except Abandoned:
            self.abandoned = True
            raise
        except BaseException as error:  # Ctrl-C, or a bug in pdenas: not the candidate's doing
            self.record.status = TrialStatus.INTERRUPTED
            self.record.failure_reason = (
                "interrupted (Ctrl-C or kill); queued again for the next run"
                if isinstance(error, KeyboardInterrupt) else
                f"stopped by an error in pdenas, not the candidate ({type(error).__name__}); "
                "a rerun trains it again")
            raise
        finally:
            self.finish()
        return self.record

    def measure(self) -> None:
        """Builds the model from its seed (warm-started), measures its cost and predicts its
        seconds (a few real training steps, counted in the trial's time)."""
        from pdenas.cost import measure_cost
        from pdenas.network import build_model
        from pdenas.train import estimate_seconds

        config, record, arch, train = self.config, self.record, self.arch, self.train
        torch.manual_seed(config.seed * 100_003 + record.number)
        self.model = build_model(arch)
        if config.warm_start:
            record.warm_start = warm_start(self.model, arch, self.runner.run_folder) or {}
        self.model = self.model.to(self.device)
        shape = (arch.in_channels, *self.runner.shape.image_size)
        record.cost = measure_cost(self.model, shape, train.batch_size, self.device,
                                   repeats=config.latency_repeats).to_dict()
        training = estimate_seconds(self.model, self.data, train, self.device)
        record.cost["predicted_seconds"] = self.elapsed() + training
        record.constraints = config.constraints.violations(record.cost)
        if config.trial_timeout is not None:  # the same number of values for every trial
            record.constraints.append(record.cost["predicted_seconds"] - config.trial_timeout)
        if self.arch.norm == "none":  # the ||K|| bound bounds nothing under TV or batch norm
            record.max_stable_step = min(unit.max_stable_step() for unit in self.model.units)
        self.hooks.on_cost(record)

    def gate(self) -> str | None:
        """Why the measured candidate is not trained (a cost or time limit, the stability
        check), or None to train it (h may have been shortened)."""
        refused = self.runner.refusal(self.record, self.time_left)
        if refused is not None:
            return refused
        check = self.config.stability
        if check.mode == "off":
            return None
        images = self.data.train.x[:check.images]
        self.arch, self.record.stability, refused = stabilise(self.model, self.arch, images, check)
        self.record.architecture = self.arch.to_dict()
        self.folder.write_architecture(self.record.architecture)
        return refused

    def fit(self) -> None:
        """Trains the candidate; the status says whether it ran its epochs or was stopped."""
        from pdenas.train import fit

        config, record = self.config, self.record
        deadline = (None if config.trial_timeout is None
                    else time.monotonic() + config.trial_timeout - self.elapsed())
        result = fit(self.model, self.data, self.train, self.device, callback=self._epoch_done,
                     seed=config.seed + record.number, deadline=deadline, result=self.progress)
        check = config.stability
        if check.mode != "off":  # the best-validation weights, as trained
            record.stability["final"] = estimate(self.model, self.data.train.x[:check.images],
                                                 check)
        else:  # their gain alone, cheaply (the leaderboard's gain column)
            record.stability = {"final": final_gain(self.model, self.data.train.x)}
        record.history = [plain(h) for h in result.history]
        record.epochs_trained = result.epochs_trained
        record.val_accuracy = float(result.best_val_accuracy) if result.history else None
        self.folder.write_weights(result.best_state)
        record.status = TrialStatus.STOPPED if result.stopped else TrialStatus.COMPLETED

    def finish(self) -> None:
        """Writes the final record and tells the trackers, unless the watchdog already recorded
        the trial as hung (then its record stands)."""
        from pdenas.tracking import notify

        if self.abandoned:  # the backend finishes the record (see Abandoned)
            if self.watchdog is not None:
                self.watchdog.stop()
            return
        if self.watchdog is None or self.watchdog.stop():
            if self.record.status.final:
                self.record.finished_at = now()
            self.save()
            notify(self.observers, "trial_finished", self.record)
        else:  # hung, recorded by the watchdog, and returned after all (an unsupervised process)
            self.record = self.folder.read_record()

    # --- helpers -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since the trial started."""
        return time.perf_counter() - self.start

    def save(self) -> None:
        """Writes the record with the seconds so far."""
        self.record.seconds = self.elapsed()
        self.folder.write_record(self.record)

    def _epoch_done(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        from pdenas.tracking import notify

        record = self.record
        record.history.append({k: float(v) for k, v in metrics.items()})
        record.epochs_trained = epoch
        record.val_accuracy = max(h["val_accuracy"] for h in record.history)
        self.save()
        notify(self.observers, "epoch_done", record, metrics)
        return bool(self.hooks.on_epoch(record, metrics))

    def _outcome(self, status: TrialStatus, reason: str) -> None:
        self.record.status, self.record.failure_reason = status, reason

    def _training_failed(self, error: Any) -> None:
        from pdenas.train import TimedOut

        record = self.record
        self._outcome(error.status, str(error))
        record.history = [plain(h) for h in error.history]  # the epochs completed before
        record.epochs_trained = len(record.history)
        if isinstance(error, TimedOut):  # ranked as a stopped trial, its best epoch kept
            record.failure_reason = (
                f"stopped at the trial time limit ({self.config.trial_timeout:g} s) after "
                f"{record.epochs_trained} of {self.train.epochs} epochs")
            if error.result.best_state:
                record.val_accuracy = float(error.result.best_val_accuracy)
                self.folder.write_weights(error.result.best_state)

    def _arm_watchdog(self) -> Watchdog | None:
        """With ``trial_timeout``: a watchdog that records the trial as hung when a call does not
        return within the limit plus a grace period (``_watchdog``)."""
        limit = self.config.trial_timeout
        if limit is None:
            return None
        grace = grace_seconds(limit)

        def hung() -> None:
            from pdenas.tracking import notify
            from pdenas.train import final_depth_state

            record = self.record
            record.status = TrialStatus.TIMEOUT
            record.epochs_trained = len(record.history)
            record.failure_reason = (
                f"hung: still running {grace:g} s past the trial time limit ({limit:g} s) "
                f"after {record.epochs_trained} of {self.train.epochs} epochs; its worker was "
                "ended")
            best = (final_depth_state(self.progress, self.model, self.train)
                    if self.model is not None else {})
            if best:  # ranked as a stopped trial, its best epoch kept
                record.val_accuracy = float(self.progress.best_val_accuracy)
                self.folder.write_weights(best)
            record.finished_at = now()
            self.save()
            notify(self.observers, "trial_finished", record)
            self.hooks.on_hung(record)

        return Watchdog(time.monotonic() + limit + grace, hung, exit_process=may_exit()).start()

