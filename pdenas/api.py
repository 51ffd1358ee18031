"""The Python API: run a search and read, compare and export its results from a notebook or a
script, with the same behaviour as the ``pdenas`` command (which is a thin layer over this).

    import pdenas

    run = pdenas.search("quickstart", n_trials=4, train={"epochs": 3})
    run.trials()          # one row per trial (pandas)
    run.export()          # the best trial's model: model.pt, model.pt2, safetensors, ONNX, card

``search`` takes a study file, a shipped study's name (``pdenas studies``) or a mapping, with
overrides deep-merged into the study before it is validated; ``open_run`` opens a run folder that
exists. ``Run`` is a view of a run folder (``pdenas.runs.RunFolder``): every method reads the
trials' records, so it works the same for every backend and for a run copied from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pdenas._progress import TqdmProgress
from pdenas.errors import InputError
from pdenas.runs import RunFolder, RunInfo
from pdenas.study import StudyConfig, deep_merge, find_study

__all__ = ["Run", "TqdmProgress", "load_study", "open_run", "search"]


def load_study(study: str | Path | Mapping[str, Any],
               overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """A validated study from a file, a shipped study's name or a mapping, with ``overrides``
    deep-merged into it first (``{"train": {"epochs": 3}}`` changes one training key).

    Raises:
        ValueError: An unknown study, or a bad key or value (one line naming it).
    """
    if isinstance(study, StudyConfig):
        return StudyConfig.from_dict(deep_merge(study.to_dict(), overrides or {}), path=study.path)
    if isinstance(study, Mapping):
        return StudyConfig.from_dict(deep_merge(study, overrides or {}))
    return StudyConfig.load(find_study(study), overrides)


def search(study: str | Path | Mapping[str, Any], *, out: str | Path | None = None,
           n_trials: int | None = None, backend: str = "optuna", address: str | None = None,
           progress: bool = True, **overrides: Any) -> Run:
    """Runs (or resumes) a study and returns its run; calling it again tops the study up.

    The ``pdenas search`` command is this function: the same study, given as a file, a shipped
    study's name or a mapping, runs the same way. A study with ``workers`` above 1, or an Optuna
    study with a ``trial_timeout``, runs in supervised ``pdenas worker`` processes that share it
    (a trial hung past its limit is recorded and its worker replaced); any other runs here.

    Args:
        study: A study file, a shipped study's name (``quickstart``) or a study mapping.
        out: The run folder (default ``runs/<study name>``).
        n_trials: Total trials of the study (default: the study's).
        backend: ``optuna`` or ``ray``.
        address: A Ray cluster address (the ray backend): ``auto`` or ``HOST:PORT``.
        progress: Show a progress bar (tqdm's auto mode: a widget in notebooks).
        **overrides: Study keys merged into the study before validation, e.g.
            ``train={"epochs": 3}``, ``seed=1``, ``workers=2``, ``tracking={"tensorboard": {}}``.

    Returns:
        The run.

    Raises:
        InputError: Bad input (a ``ValueError``), before anything is written.
        WorkersFailed: A worker process failed (its traceback is on stderr); finished trials
            are kept.
        KeyboardInterrupt: Interrupted; finished trials are kept and a rerun resumes.
    """
    from pdenas.backends import run_study

    if n_trials is not None:
        overrides["n_trials"] = n_trials
    config = load_study(study, overrides)
    return Run(run_study(config, backend=backend, out=out, address=address,
                         progress=progress).path)


def open_run(path: str | Path) -> Run:
    """The run in a run folder.

    Raises:
        ValueError: The folder is not a pdenas run (no ``run.json``).
    """
    run = Run(path)
    run.info  # noqa: B018 - reads run.json, so a folder that is no run fails here
    return run


class Run:
    """A run folder's results: trials, the leaderboard, the best trial, the Pareto front,
    comparisons and exports.

    Args:
        path: The run folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.folder = RunFolder(Path(path))
        self.last_card: dict[str, Any] | None = None
        """The model card of the last ``export``."""

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.folder.path

    @property
    def info(self) -> RunInfo:
        """``run.json``: the study's name, backend, storage and resolved study."""
        return self.folder.read_info()

    @property
    def config(self) -> StudyConfig:
        """The study the run was made with."""
        return StudyConfig.from_stored(self.info["config"])

    def trials(self) -> pd.DataFrame:
        """Every trial, one row each (``pdenas.results.load_trials``: status, architecture,
        metrics, costs, history, times)."""
        from pdenas.results import load_trials

        return load_trials(self.path)

    def leaderboard(self) -> pd.DataFrame:
        """The fully trained trials ranked by Pareto rank, then accuracy."""
        from pdenas.results import leaderboard

        return leaderboard(self.trials(), self.info.objectives)

    def best(self) -> int:
        """The number of the best trial: the highest validation accuracy among the completed,
        fully trained trials, ties to the lower cost (what ``export`` takes by default).

        Raises:
            ValueError: No fully trained trial yet.
        """
        from pdenas.export import select_trial

        return select_trial(self.path, "best")

    def pareto(self) -> pd.DataFrame:
        """The Pareto front (accuracy against the cost objective, FLOPs for single-objective
        studies) of the fully trained trials, by accuracy (``pareto:K`` is its K-th row)."""
        board = self.leaderboard()
        if board.empty:
            return board
        front = board[board["pareto_rank"] == 1]
        return front.sort_values(["val_accuracy", "number"], ascending=[False, True]).reset_index(
            drop=True)

    def compare(self, *others: str | Path | Run, out: str | Path | None = None,
                retrain_top: int = 0, seeds: int = 3, device: str = "auto",
                echo: Callable[[str], None] | None = None, verdict: bool = False,
                **verdict_options: Any) -> Any:
        """Compares the PDE families of this run, or this run with others side by side.

        Args:
            *others: Further runs (or their folders): then the runs are compared with each
                other (Pareto fronts, hypervolume against wall time and trials, best accuracy
                per family per run).
            out: The report's folder (default ``RUN/compare``, or ``RUN/compare_runs``).
            retrain_top: One run: retrain each family's top K architectures (0: none).
            seeds: One run: seeds per retrained architecture.
            device: One run: where to retrain.
            echo: Where to print the tables (None: nowhere; the CLI prints).
            verdict: One run: which family is best and how sure that is (paired retraining,
                intervals, P(best), paired differences, one sentence); ``seeds`` is then the
                seeds of its first look. The result's ``verdict`` holds it.
            **verdict_options: ``candidates``, ``max_seeds``, ``max_seconds``, ``budget``
                (``flop_epochs``, ``seconds``, ``trials``), ``alpha``, ``margin`` (a fraction):
                see ``pdenas.compare.compare_run``.

        Returns:
            ``pdenas.compare.Comparison``: the report's path, the tables (DataFrames), the
            plots and, with ``verdict=True``, the verdict (``.verdict.to_dict()`` is
            ``verdict.json``).
        """
        from pdenas.compare import compare_run, compare_runs

        if not others:
            return compare_run(self.path, out=out, retrain_top=retrain_top, seeds=seeds,
                               device=device, echo=echo, verdict=verdict, **verdict_options)
        if retrain_top or verdict:
            flag = "--retrain-top" if retrain_top else "--verdict"
            raise InputError(f"{flag}: compares the families of one run; name one run")
        paths = [self.path] + [o.path if isinstance(o, Run) else Path(o) for o in others]
        return compare_runs(paths, out=out, echo=echo)

    def export(self, trial: str | int = "best", *, formats: str | Sequence[str] | None = None,
               out: str | Path | None = None, retrain_epochs: int | None = None,
               device: str = "auto") -> Path:
        """Exports a trial's model and its card; returns the export folder.

        Args:
            trial: ``best``, a trial number or ``pareto:K``.
            formats: Some of ``pt``, ``pt2``, ``safetensors``, ``onnx`` (default: all, ONNX when
                its packages are installed).
            out: The export folder (default ``RUN/export/trial-N``).
            retrain_epochs: Retrain from scratch on train + validation for this many epochs.
            device: Where to retrain, evaluate and time.
        """
        from pdenas.export import export_trial

        card = export_trial(self.path, trial=trial, formats=formats,
                            retrain_epochs=retrain_epochs, out=out, device=device)
        self.last_card = card
        return Path(card["out"])
