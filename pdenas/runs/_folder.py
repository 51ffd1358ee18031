"""``RunFolder`` and ``TrialFolder``: the one owner of a run folder's paths and files.

Layout::

    RUN/run.json                  format, version, study name, backend, storage, the study
    RUN/study.db                  the default SQLite storage (Optuna backend)
    RUN/trials/<n>/record.json    the trial's ``TrialRecord``: the one source of truth
    RUN/trials/<n>/architecture.json
    RUN/trials/<n>/model.pt       the best-validation ``state_dict`` (``weights_only`` loadable)

Lifecycle: a search calls ``RunFolder.claim(study)`` before it writes anything (a folder that
holds another study is refused), then ``write_info`` once its backend is ready; each trial
writes through its ``TrialFolder``. Every later command starts from ``RunFolder.open`` and
reads; read-only commands never create anything (no empty database either). Every write is
atomic: a temporary file in the same folder, flushed and fsynced, then ``os.replace``d, so a
crash or a full disk leaves the previous file intact. The default storage is named relative to
the folder (``storage: null`` in ``run.json``), so a copied or moved run folder works.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pdenas._bounded import load_json, short_repr
from pdenas.errors import InputError
from pdenas.runs._record import TrialRecord

__all__ = [
    "DEFAULT_STORAGE",
    "RUN_FORMAT",
    "RUN_VERSION",
    "RunFolder",
    "RunInfo",
    "TrialFolder",
    "atomic_write",
    "write_json",
]

RUN_FORMAT = "pdenas-run"
RUN_VERSION = 2
"""Version 2 added ``format``/``version`` and the folder-relative default storage (``null``)."""
DEFAULT_STORAGE = "study.db"


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Writes ``path`` through ``write(handle)`` on a temporary sibling, then renames it over.

    The temporary file is flushed and fsynced first; on any error it is removed and ``path``
    keeps its previous content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w") as handle:
            try:
                write(handle)
            except RuntimeError as error:  # torch.save's writer reports a failed write so
                raise OSError(errno.EIO, f"could not be written ({error})", str(path)) from error
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.filename is None:  # a failed close or fsync names no file: name the one meant
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Writes JSON atomically (see ``atomic_write``)."""
    text = json.dumps(payload, indent=2)
    atomic_write(path, lambda handle: handle.write(text))


def read_json(path: Path) -> Any:
    """Reads a JSON file of a run folder, bounded in size and depth (``pdenas._bounded``); a
    damaged one is an ``InputError`` naming the file."""
    return load_json(Path(path), what="JSON file")


def read_record(path: Path) -> TrialRecord:
    """Reads a trial record file (a run folder's, or a copy such as a Ray checkpoint's); a
    damaged one is a ``ValueError`` naming the file."""
    try:
        return TrialRecord.from_dict(read_json(path))
    except (TypeError, ValueError) as error:
        message = str(error)
        if message.startswith(str(path)):
            raise
        raise InputError(f"{path}: {message}", key=getattr(error, "key", None) or str(path),
                         detail=message) from None


def _kind_of(path: Path) -> str:
    """What stands at ``path``, in words, for messages about a damaged layout."""
    if path.is_symlink() and not path.exists():
        return "a link to nothing"
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    return "not a regular file" if path.exists() else "missing"


class RunInfo(dict):
    """The contents of ``run.json``: ``study_name``, ``backend``, ``storage`` (None: the
    folder's own SQLite file), ``study_file`` and ``config`` (the resolved study)."""

    @property
    def objectives(self) -> list[str]:
        """The study's objectives: ``val_accuracy`` first, optionally a cost metric."""
        return list(self["config"].get("objectives", ["val_accuracy"]))

    @property
    def cost_objective(self) -> str:
        """The cost accuracy is traded against: the study's second objective, else FLOPs."""
        objectives = self.objectives
        return objectives[1] if len(objectives) > 1 else "flops"


class TrialFolder:
    """The files of one trial: ``trials/<number>/`` of a run folder."""

    RECORD = "record.json"
    WEIGHTS = "model.pt"

    def __init__(self, run_path: Path, number: int) -> None:
        self.number = int(number)
        self.path = Path(run_path) / "trials" / str(self.number)

    @property
    def record_path(self) -> Path:
        return self.path / self.RECORD

    @property
    def weights_path(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def architecture_path(self) -> Path:
        return self.path / "architecture.json"

    def has_record(self) -> bool:
        """Whether anything stands at the record's path (a folder or a dangling link there is
        damage that ``read_record`` names, never a trial without a record)."""
        return os.path.lexists(self.record_path)

    def has_weights(self) -> bool:
        return self.weights_path.is_file()

    def read_record(self) -> TrialRecord:
        """The trial's record.

        Raises:
            ValueError: No record, or a damaged one (naming the file).
        """
        path = self.record_path
        if not os.path.lexists(path):
            raise InputError(f"{path}: no record of trial {self.number} in the run folder")
        if not path.is_file():
            raise InputError(f"{path}: not a file ({_kind_of(path)}); the trial's record is "
                             "damaged")
        record = read_record(path)
        if record.number != self.number:
            raise InputError(f"{path}: record.number: got {record.number} in the folder of trial "
                             f"{self.number}; the record is damaged or misplaced",
                             key="record.number")
        return record

    def write_record(self, record: TrialRecord) -> None:
        write_json(self.record_path, record.to_dict())

    def write_architecture(self, architecture: Mapping[str, Any]) -> None:
        write_json(self.architecture_path, dict(architecture))

    def write_weights(self, state_dict: Mapping[str, Any]) -> None:
        import torch

        # Serialised in memory first: torch's zip writer reports a failed write of the file as
        # "unexpected pos", where the file system's own error (no space left) says why.
        buffer = io.BytesIO()
        torch.save(dict(state_dict), buffer)
        atomic_write(self.weights_path, lambda handle: handle.write(buffer.getbuffer()),
                     binary=True)

    def load_weights(self) -> dict[str, Any]:
        """The saved ``state_dict`` (CPU tensors; no pickled code runs).

        Raises:
            ValueError: No weights, or a damaged file (naming it).
        """
        import torch

        if os.path.lexists(self.weights_path) and not self.weights_path.is_file():
            raise InputError(f"{self.weights_path}: not a file ({_kind_of(self.weights_path)}); "
                             "the trial's weights are damaged")
        if not self.weights_path.is_file():
            raise InputError(f"{self.weights_path}: trial {self.number} saved no weights")
        try:
            return torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - damaged or foreign: one line
            raise InputError(f"{self.weights_path}: cannot load the trial's weights: "
                             f"{str(error).splitlines()[0][:160]}") from None


class RunFolder:
    """A run folder (see the module docstring for the layout and the lifecycle)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def default_storage_path(self) -> Path:
        return self.path / DEFAULT_STORAGE

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (its ``run.json`` is read and checked).

        Raises:
            ValueError: Not a run folder, a damaged ``run.json``, or one of a newer version.
        """
        folder = cls(path)
        folder.read_info()
        return folder

    def exists(self) -> bool:
        """Whether the folder holds a ``run.json``."""
        return self.info_path.is_file()

    def read_info(self) -> RunInfo:
        """Reads and checks ``run.json``.

        Raises:
            ValueError: Not a run folder, a damaged file, or a newer format version.
        """
        if os.path.lexists(self.info_path) and not self.info_path.is_file():
            raise InputError(f"{self.info_path}: not a file ({_kind_of(self.info_path)}); the run "
                             "folder is damaged")
        if not self.info_path.is_file():
            raise InputError(f"{self.path}: not a pdenas run folder (no run.json); "
                             "run `pdenas search` first")
        data = read_json(self.info_path)
        if not isinstance(data, dict):
            raise InputError(f"{self.info_path}: not a pdenas run file")
        if "format" in data and data["format"] != RUN_FORMAT:
            raise InputError(f"{self.info_path}: not a pdenas run file "
                             f"(format {short_repr(data['format'])})")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InputError(f"{self.info_path}: version: got {short_repr(version)}; allowed: a "
                             f"run format version from 1 to {RUN_VERSION}", key="version")
        if version > RUN_VERSION:
            raise InputError(f"{self.info_path}: written by a newer pdenas (run format version "
                             f"{version}; this one reads up to {RUN_VERSION}); upgrade pdenas")
        if not isinstance(data.get("config"), dict) or not isinstance(data.get("study_name"), str):
            raise InputError(f"{self.info_path}: not a pdenas run file (no study_name or config)")
        if version >= 2 and "storage" not in data:
            raise InputError(f"{self.info_path}: damaged run file (no storage entry; null means "
                             "the folder's own study.db)")
        for key, allowed in (("backend", (str,)), ("storage", (str, type(None))),
                             ("study_file", (str, type(None)))):
            if key in data and not isinstance(data[key], allowed):
                words = "text" if len(allowed) == 1 else "text or null"
                raise InputError(f"{self.info_path}: {key}: got {short_repr(data[key])}; "
                                 f"allowed: {words}", key=key)
        return RunInfo(data)

    def claim(self, study_name: str) -> None:
        """Checks, before anything is written, that this folder may hold ``study_name``.

        Raises:
            ValueError: The path is a file, or the folder holds another study.
        """
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a folder; --out names a run folder")
        if not self.info_path.exists():
            return
        held = self.read_info()["study_name"]
        if held != study_name:
            raise InputError(f"{self.path}: holds the study {short_repr(held)}; refusing to write the "
                             f"study {short_repr(study_name)} into it; use another --out")

    def write_info(self, *, study_name: str, backend: str, config: Mapping[str, Any],
                   storage: str | None = None, study_file: str | None = None) -> None:
        """Writes ``run.json`` (atomically; workers sharing a folder each write the same).

        Args:
            study_name: The study.
            backend: The backend's name.
            config: The resolved study (``StudyConfig.to_dict()``).
            storage: The backend's storage URL; None for the folder's own SQLite file.
            study_file: The study file it came from.
        """
        self.claim(study_name)
        write_json(self.info_path, {
            "format": RUN_FORMAT, "version": RUN_VERSION, "study_name": study_name,
            "backend": backend, "storage": storage, "study_file": study_file,
            "config": dict(config),
        })

    def default_storage_url(self) -> str:
        """The SQLite URL of the folder's own storage (absolute, from where the folder is now)."""
        return f"sqlite:///{self.default_storage_path.resolve()}"

    def storage_url(self, info: RunInfo | None = None) -> str:
        """The run's storage URL: the one ``run.json`` names, else the folder's own SQLite file.

        Raises:
            ValueError: The folder's own SQLite file is missing (nothing is created).
        """
        info = self.read_info() if info is None else info
        stored = info.get("storage")
        if stored and info.get("version", 1) >= 2:
            return str(stored)
        if stored and not str(stored).endswith(f"/{DEFAULT_STORAGE}"):
            return str(stored)  # version 1 named every storage absolutely
        if not self.default_storage_path.is_file():
            raise InputError(f"{self.default_storage_path}: the run's storage is missing")
        return self.default_storage_url()

    def trial(self, number: int) -> TrialFolder:
        return TrialFolder(self.path, number)

    def trial_numbers(self) -> list[int]:
        """Numbers of the trial folders present (with or without a record), ascending."""
        folder = self.path / "trials"
        if not os.path.lexists(folder):
            return []
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder ({_kind_of(folder)}); a run folder's "
                             "trials/ holds one folder per trial; the run folder is damaged")
        numbers = []
        for entry in folder.iterdir():
            name = entry.name
            if not (name.isascii() and name.isdigit()):
                continue  # (not a trial's: left alone)
            if name != str(int(name)):
                raise InputError(f"{entry}: not a trial folder's name (trial {int(name)}'s is "
                                 f"trials/{int(name)}); the run folder is damaged: move it away")
            if not entry.is_dir():
                raise InputError(f"{entry}: not a folder ({_kind_of(entry)}); each trial is a "
                                 "folder trials/<number>; the run folder is damaged")
            numbers.append(int(name))
        return sorted(numbers)

    def next_number(self) -> int:
        """The first trial number no trial folder uses."""
        numbers = self.trial_numbers()
        return numbers[-1] + 1 if numbers else 0

    def records(self) -> list[TrialRecord]:
        """Every trial's record, by number; folders without a record (a trial that died before
        writing its first) are left out.

        Raises:
            ValueError: A damaged record, naming its file.
        """
        trials = (self.trial(n) for n in self.trial_numbers())
        return [t.read_record() for t in trials if t.has_record()]
