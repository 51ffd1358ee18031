"""``run_search``: one search in this process, through the backend contract
(``pdenas.backends._base``); ``_orchestrate`` decides whether a study runs here or in workers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdenas.backends._base import DataShape, Progress
from pdenas.backends._registry import get_backend
from pdenas.runs import RunFolder

if TYPE_CHECKING:
    from pdenas.study import StudyConfig

__all__ = ["RESUMABLE_KEYS", "check_same_study", "run_path", "run_search"]


def run_path(config: StudyConfig, out: str | Path | None) -> Path:
    """The run folder of a search: ``out``, or ``runs/<study name>`` (absolute).

    Raises:
        InputError: A path that cannot be resolved (a symbolic link loop).
    """
    from pdenas.errors import InputError

    path = Path(out) if out else Path("runs") / config.name
    try:
        return path.resolve()
    except RuntimeError as error:  # Python 3.11's Path.resolve on a symbolic link loop
        raise InputError(f"--out {path}: {error}", key="out") from None


RESUMABLE_KEYS = frozenset({"n_trials", "timeout", "trial_timeout", "workers", "threads", "device",
                            "storage", "tracking", "description"})
"""Study keys a rerun may change: how long and where the search runs, not what its trials are.
Any other change (the data, the space, the training budget, the objectives, the sampler, the
seed...) would rank trials trained under different settings together."""


def check_same_study(run: RunFolder, config: StudyConfig) -> None:
    """Refuses to resume a run with a study that changed what its trials are.

    Raises:
        InputError: Naming the first changed key, its stored and its new value, and what to do.
    """
    from pdenas.errors import InputError
    from pdenas.study import StudyConfig

    stored = StudyConfig.from_stored(run.read_info()["config"]).to_dict()
    changed = _first_change(stored, config.to_dict())
    if changed is not None:
        key, before, after = changed
        raise InputError(
            f"{key}: the run in {run.path} was started with {before!r}, this search asks for "
            f"{after!r}; trials trained under both would be ranked together. Search into a new "
            "folder (--out) or keep the run's settings (only n_trials, timeout, trial_timeout, "
            "workers, threads, device, storage and tracking may change on a rerun)", key=key,
            detail=f"the run was started with {before!r}, this search asks for {after!r}")


def _first_change(before: Any, after: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first key whose value differs (nested mappings walked), skipping resumable keys."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if not prefix and key in RESUMABLE_KEYS:
                continue
            found = _first_change(before.get(key), after.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if before == after else (prefix.rstrip("."), before, after)


def run_search(config: StudyConfig, *, backend: str = "optuna", out: str | Path | None = None,
               address: str | None = None, quiet: bool = False,
               progress: Progress | None = None, prepare_only: bool = False,
               keep_info: bool = False) -> RunFolder:
    """Runs (or resumes) a study: the lifecycle of ``pdenas.backends._base``.

    Args:
        config: The study, with any command-line overrides applied.
        backend: A name from ``list_backends()``.
        out: The run folder (default ``runs/<study name>``).
        address: A cluster address (Ray).
        quiet: No progress output of the backend's own.
        progress: Told when the search starts and after each trial.
        prepare_only: Stop once the storage is ready and ``run.json`` is written (before
            starting worker processes on the same study).
        keep_info: Leave ``run.json`` as it is (a worker of a prepared run: the study it was
            started with stays recorded, not the worker's time left).

    Returns:
        The run folder.

    Raises:
        ValueError: Bad input (one line); nothing of the run was written.
        KeyboardInterrupt: The search was interrupted; rerunning it resumes.
    """
    import torch

    from pdenas.backends._storage import redact_url
    from pdenas.data import load_data
    from pdenas.space import SearchSpace
    from pdenas.study import resolve_device
    from pdenas.tracking import check_tracking

    cls = get_backend(backend)
    cls.check(config, address=address)
    check_tracking(config.tracking)
    run = RunFolder(run_path(config, out))
    run.claim(config.name)
    if not keep_info and run.info_path.is_file():
        check_same_study(run, config)
    space = SearchSpace.load(config.space_path())
    device = resolve_device(config.device)
    if config.threads is not None and cls.trains_in_process:
        torch.set_num_threads(config.threads)
    # Out-of-process trials load the data on their own device; here only its shape is needed.
    data = load_data(config.data, device=device if cls.trains_in_process else "cpu")
    engine = cls(config, space, run, DataShape.of(data), device, quiet=quiet, address=address)
    engine.prepare(data)
    if not keep_info:
        info = config.to_dict()  # no database password in run.json
        info["storage"] = info["storage"] and redact_url(info["storage"])
        run.write_info(study_name=config.name, backend=cls.name, config=info,
                       storage=engine.storage and redact_url(engine.storage),
                       study_file=config.path)
    if prepare_only:
        return run
    engine.search(config.n_trials, config.timeout, progress)
    return run
