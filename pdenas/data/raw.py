"""Decoded data sets before splitting: `RawData` (uint8 images, int64 labels) and shared helpers.

Every reader in this package returns a `RawData`; turning it into standardised train/validation/test
tensors is `splits.py`'s job.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdenas.data.config import DataUnavailableError

__all__ = ["FIXED_TEST_SEED", "RawData", "fixed_test_split", "missing_files_error", "reading"]

FIXED_TEST_SEED = 0
"""Seed of the held-out test set of data sets without an official one (fixed, so every run and
every study tests on the same images whatever its own seed)."""


@dataclass(frozen=True)
class RawData:
    """A decoded data set with its official train/test split.

    Attributes:
        train_x: uint8 images (N, C, H, W) of the official training set.
        train_y: int64 labels (N,).
        test_x: uint8 images of the test set.
        test_y: int64 labels of the test set.
        classes: Class names, indexed by label.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("train_x", "test_x"):
            x = getattr(self, name)
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{name} must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"train and test images differ: {self.train_x.shape[1:]} vs {self.test_x.shape[1:]}")
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"labels must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")


def fixed_test_split(
    x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], test_fraction: float = 0.2
) -> RawData:
    """Splits a data set without an official test set into train and a fixed, stratified test set.

    Args:
        x: uint8 images (N, C, H, W).
        y: int64 labels.
        classes: Class names.
        test_fraction: Share of each class that goes to the test set.
    """
    rng = np.random.default_rng(FIXED_TEST_SEED)
    labels = y.numpy()
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test[members[: int(round(len(members) * test_fraction))]] = True
    test_idx = torch.from_numpy(np.flatnonzero(test))
    train_idx = torch.from_numpy(np.flatnonzero(~test))
    return RawData(x[train_idx], y[train_idx], x[test_idx], y[test_idx], tuple(classes))


def missing_files_error(name: str, root: Path, missing: Sequence[str]) -> DataUnavailableError:
    """Returns the one-line error for a data set whose files are not under `root`.

    Args:
        name: The data set's name.
        root: The folder that was searched.
        missing: The missing files, relative to `root`.
    """
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return DataUnavailableError(
        f"{name} not found: {root / missing[0]} is missing{more}; set `download: true` in the data "
        f"config to fetch it, or set `root` to a folder that holds it"
    )


@contextlib.contextmanager
def reading(name: str, root: Path, download: bool) -> Iterator[None]:
    """Turns the errors of reading or downloading a data set into one-line `DataUnavailableError`s.

    Args:
        name: The data set's name.
        root: The folder it is read from.
        download: Whether a download may have been attempted.

    A failure leaves nothing behind: the folders a failed download created are removed.
    """
    new_folder = _topmost_missing(root)
    try:
        yield
    except DataUnavailableError:
        _remove(new_folder)
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        _remove(new_folder)
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        verb = "download or read" if download else "read"
        raise DataUnavailableError(f"could not {verb} {name} under {root}: {reason}") from exc


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove(folder: Path | None) -> None:
    if folder is not None and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
