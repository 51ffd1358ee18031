"""The one road from a validated study to a finished search, for ``pdenas search`` and
``pdenas.search`` alike, whatever the study was given as (a file, a shipped name, a mapping).

``run_study`` decides where the trials run:

- in this process (``backends.run_search``), with a progress bar; or
- in supervised worker processes, for a study with ``workers`` above 1 or an Optuna study with
  a ``trial_timeout`` (a hung trial cannot be ended inside the process that runs it): the run
  folder, its storage and ``run.json`` are prepared here once, then ``run_workers`` starts
  ``pdenas worker RUN`` processes (``_supervise``), and one bar follows them all.

``run_worker`` is what such a process runs: it reads the resolved study from ``RUN/run.json``
(never the study file again, nor environment variables) and runs it on that folder.
"""

from __future__ import annotations

from pathlib import Path

from pdenas._progress import make_progress
from pdenas.backends._run import run_path, run_search
from pdenas.backends._supervise import (RecordFollower, follow_supervisor, needs_supervision,
                                        run_workers, worker_command, worker_count,
                                        worker_threads)
from pdenas.backends._watchdog import restarted_by_supervisor
from pdenas.errors import InputError
from pdenas.runs import RunFolder
from pdenas.study import StudyConfig

__all__ = ["WorkersFailed", "run_study", "run_worker"]


class WorkersFailed(RuntimeError):
    """Worker processes of a search exited with an error (each printed its own traceback).

    Args:
        statuses: The failed workers' exit statuses.
        workers: How many workers ran.
        run: The run folder (its finished trials are kept).
    """

    def __init__(self, statuses: list[int], workers: int, run: Path) -> None:
        self.status = statuses[0]
        super().__init__(f"{len(statuses)} of {workers} search workers failed (exit status "
                         f"{self.status}); finished trials are stored in {run}")


def run_study(config: StudyConfig, *, backend: str = "optuna", out: str | Path | None = None,
              address: str | None = None, progress: bool = True) -> RunFolder:
    """Runs (or resumes) a study here or in supervised workers; returns its run folder.

    Args:
        config: The study, overrides applied.
        backend: A name from ``list_backends()``.
        out: The run folder (default ``runs/<study name>``).
        address: A Ray cluster address.
        progress: Show a progress bar.

    Raises:
        InputError: Bad input, before anything is written.
        WorkersFailed: A worker failed.
        KeyboardInterrupt: Interrupted; finished trials are kept and a rerun resumes.
    """
    if backend != "optuna" and config.workers not in (1, "auto"):
        raise InputError("workers: is for the optuna backend; Ray runs trials side by side "
                         "itself (as many as ray.cpus_per_trial and gpus_per_trial let the "
                         "cluster hold)")
    workers = worker_count(config.workers, config.device, config.threads, backend)
    if workers == 1 and not needs_supervision(config.trial_timeout, backend):
        bar = make_progress(config, run_path(config, out), quiet=not progress)
        try:
            return run_search(config, backend=backend, out=out, address=address,
                              quiet=not progress, progress=bar)
        finally:
            bar.close()
    config = config.replace(threads=worker_threads(workers, config.device, config.threads))
    run = run_search(config, backend=backend, out=out, quiet=True, prepare_only=True)
    # One worker shows its own bar (on the shared stderr); several would garble each other's,
    # so they run quiet and one bar here follows them all through the run folder.
    command = worker_command(run.path, quiet=not progress or workers > 1, storage=config.storage)
    bar = make_progress(config, run.path, quiet=not progress)
    follower = RecordFollower(run, bar, config.n_trials) if progress and workers > 1 else None
    try:  # each worker (one restarted too) gets the time the study has left
        codes = run_workers(command, workers, config.timeout, poll=follower)
    finally:
        if follower is not None:
            follower(force=True)
        bar.close()
    failed = [code for code in codes if code != 0]
    if failed:
        raise WorkersFailed(failed, workers, run.path)
    return run


def run_worker(run_path: str | Path, *, supervisor: int | None = None,
               timeout: float | None = None, storage: str | None = None,
               progress: bool = True) -> RunFolder:
    """One worker of a prepared run: the study stored in ``RUN/run.json``, run on that folder.

    Args:
        run_path: The run folder ``run_study`` prepared.
        supervisor: The process id of the supervisor that started this worker: the worker stops
            when it dies, and may be ended (and replaced) when a trial hangs.
        timeout: Seconds the study has left.
        storage: The storage URL (``run.json`` keeps it without its password).
        progress: Show a progress bar.
    """
    if supervisor is not None:
        follow_supervisor(supervisor)
        restarted_by_supervisor()
    folder = RunFolder(Path(run_path))
    info = folder.read_info()
    config = StudyConfig.from_stored(info["config"], path=info.get("study_file"))
    config = config.replace(timeout=timeout, storage=storage or config.storage)
    bar = make_progress(config, folder.path, quiet=not progress)
    try:
        return run_search(config, backend=info["backend"], out=folder.path, quiet=not progress,
                          progress=bar, keep_info=True)
    finally:
        bar.close()
