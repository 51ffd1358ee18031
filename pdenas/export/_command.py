"""``pdenas export RUN``: select a trial, get its weights, evaluate it, write every format and the
card into a staging folder, and move them into place only once all of it worked.

The output folder is checked for writing before any of the work (a read-only run folder is one
line, not an error after minutes of retraining). The staging folder lives in the system's
temporary folder as ``pdenas-export-*`` and holds a lock (``.pdenas-lock``, an ``flock`` taken
before the lock file gets its name) for as long as its export runs; each export first removes
the staging folders whose lock is free, which only those of a killed export are. The files are
copied into the output folder under temporary names and renamed into place only once all are
there, so a full disk leaves the output folder as it was."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pdenas.architecture import Architecture
from pdenas.errors import InputError
from pdenas.export._card import card_markdown, model_card
from pdenas.export._formats import CHECK_IMAGES, parse_formats, write_formats
from pdenas.export._select import retrain, saved_model, select_trial, trial_record
from pdenas.export._weights import CONFIG_FILE, FILES, plain

__all__ = ["STAGING_PREFIX", "export_trial", "remove_stale_staging"]

STAGING_PREFIX = "pdenas-export-"
"""The name of every staging folder starts with this (in ``tempfile.gettempdir()``)."""
LOCK_NAME = ".pdenas-lock"
"""The lock file inside a staging folder, locked for as long as its export runs."""
NEW_PREFIX = ".pdenas-new-"
"""An exported file's name in the output folder while it is copied there, before its rename."""


def export_trial(
    run_dir: str | Path,
    trial: str | int = "best",
    formats: str | Sequence[str] | None = None,
    retrain_epochs: int | None = None,
    out: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Exports one trial of a run (see ``pdenas.export``) and returns its model card.

    Args:
        run_dir: The run folder.
        trial: ``best``, a trial number or ``pareto:K``.
        formats: Some of ``FORMATS`` (a comma list or a sequence); None: every format whose
            packages are installed (``default_formats``).
        retrain_epochs: Retrain from scratch on train + validation for this many epochs instead
            of taking the trial's saved weights.
        out: The export folder (default ``RUN/export/trial-N``).
        device: Where to retrain, evaluate and time: "auto", "cpu" or "cuda".

    Raises:
        ValueError: Bad input, before anything is written.
    """
    from pdenas.data import load_data
    from pdenas.results import load_run
    from pdenas.study import StudyConfig, resolve_device
    from pdenas.train import TrainConfig, evaluate

    run_dir = Path(run_dir)
    info = load_run(run_dir)
    fmts = parse_formats(formats)
    if retrain_epochs is not None and (isinstance(retrain_epochs, bool) or retrain_epochs < 1):
        raise InputError(f"--retrain-epochs: must be an integer >= 1, got {retrain_epochs!r}")
    number = select_trial(run_dir, trial)
    record = trial_record(run_dir, number, need_weights=retrain_epochs is None)
    arch = Architecture.from_dict(record["architecture"])
    out = Path(out) if out else run_dir / "export" / f"trial-{number}"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    check_writable(out)
    remove_stale_staging()
    config = StudyConfig.from_stored(info["config"])
    dev = resolve_device(device)
    data = load_data(config.data, device=dev)
    train = TrainConfig.from_stored(record.get("train") or {})
    if retrain_epochs is None:
        model = saved_model(run_dir, number, arch).to(dev)
    else:
        train = TrainConfig.from_dict({**train.to_dict(), "epochs": retrain_epochs})
        model = retrain(arch, train, data, dev, seed=config.seed, number=number)
    test_loss, test_accuracy = evaluate(model.eval(), data.test, dev)
    card = model_card(model, arch, data, dev, record=record, info=info, train=train,
                      run_dir=run_dir, number=number, trial=trial, formats=fmts,
                      retrain_epochs=retrain_epochs, test_loss=test_loss,
                      test_accuracy=test_accuracy)
    meta = {k: card[k] for k in ("data", "metrics", "source", "training")}
    with _staging() as staging:
        checks = write_formats(model, staging, data.test.x[:CHECK_IMAGES], fmts, mean=data.mean,
                               std=data.std, classes=data.classes, info=meta)
        card["files"] = ({fmt: FILES[fmt] for fmt in fmts} | {"card": ["card.json", "card.md"]}
                         | ({"safetensors": [FILES["safetensors"], CONFIG_FILE]}
                            if "safetensors" in fmts else {}))
        card["checks"] = {fmt: check.to_dict() for fmt, check in checks.items()}
        card = plain(card)
        (staging / "card.json").write_text(json.dumps(card, indent=2))
        (staging / "card.md").write_text(card_markdown(card))
        _move_into(staging, out)
    card["out"] = str(out)
    return card


def _move_into(staging: Path, out: Path) -> None:
    """Puts every file of the staging folder into ``out`` (created), replacing same-named files,
    each with the permissions a new file gets here (0666 less the umask: some writers, as
    safetensors', make private temporary files).

    All files are first copied into ``out`` under temporary names (``NEW_PREFIX``), then renamed
    into place, so a fault while copying (a full disk) leaves ``out`` as it was: the copies and
    any folder made for them are removed, and the error names the file in ``out``. Copies that
    a killed export left there are removed first.
    """
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{NEW_PREFIX}*"):
        stale.unlink()
    umask = os.umask(0)
    os.umask(umask)
    items = [item for item in sorted(staging.iterdir()) if item.name != LOCK_NAME]
    copies: list[Path] = []
    try:
        for item in items:
            copies.append(out / f"{NEW_PREFIX}{item.name}")
            try:
                shutil.copyfile(item, copies[-1])
            except OSError as error:  # shutil names the source; the file that failed is here
                raise OSError(error.errno, error.strerror or str(error),
                              str(out / item.name)) from None
            copies[-1].chmod(0o666 & ~umask)
    except BaseException:
        for copy in copies:
            copy.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for item, copy in zip(items, copies):
        os.replace(copy, out / item.name)


def check_writable(out: Path) -> None:
    """Refuses an output folder that cannot be written, before any work: a file is created and
    removed in ``out``, or in the nearest folder above it that exists (a permission check would
    not do: root passes it on a read-only file system).

    Raises:
        ValueError: Naming the folder and the cause (one ``InputError`` line).
    """
    where = out
    while not where.is_dir() and where != where.parent:
        if where.is_symlink() and not where.exists():
            raise InputError(f"--out {out}: {where} is a symbolic link that leads nowhere (a "
                             "loop or a missing target)")
        if where.exists():
            raise InputError(f"--out {out}: {where} is not a folder")
        where = where.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".pdenas-write-check-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"--out {out}: cannot write in {where}: "
                         f"{error.strerror or error}; nothing was exported") from None


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    """A new staging folder, locked while the block runs, then removed."""
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    try:
        with open(folder / f"{LOCK_NAME}.new", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.rename(folder / f"{LOCK_NAME}.new", folder / LOCK_NAME)  # named only once held
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_staging(root: str | Path | None = None) -> list[Path]:
    """Removes the staging folders of exports that were killed (their lock is free) from
    ``root`` (default ``tempfile.gettempdir()``) and returns them.

    Only folders named ``STAGING_PREFIX*``, owned by this user, not links, holding a lock file
    that no process holds are removed: a running export's folder, or anything else, stays.
    """
    removed = []
    for folder in sorted(Path(root or tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*")):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            with open(folder / LOCK_NAME) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder)
            removed.append(folder)
        except OSError:  # no lock file, a lock held, or gone meanwhile: left as it is
            continue
    return removed
