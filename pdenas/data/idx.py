"""MNIST and Fashion-MNIST: torchvision's datasets, or a plain folder of IDX files (.gz or not).

A folder of IDX files is what Debian's `dataset-fashion-mnist` installs under
/usr/share/datasets/fashion-mnist/ (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). torchvision reads only its own layout
(ROOT/MNIST/raw/ with the files decompressed), so such folders are read by `read_idx` here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from pdenas.data.config import DataUnavailableError
from pdenas.data.raw import RawData, missing_files_error, reading

__all__ = ["IDX_FILES", "find_idx_folder", "load_idx_family", "read_idx"]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four files of an MNIST-style data set (each may also be gzipped, with a .gz suffix)."""


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (MNIST's format), gzipped when its name ends in .gz.

    Args:
        path: The file.

    Returns:
        A uint8 array with the file's dimensions.

    Raises:
        DataUnavailableError: The file is not an unsigned-byte IDX file or is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataUnavailableError(f"{path} holds IDX type {data[2]:#04x}; only unsigned bytes (0x08) are read")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataUnavailableError(f"{path} is truncated: {len(data) - header} bytes of data, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_folder(root: Path, layout_name: str) -> Path | None:
    """Returns the first of `root` and torchvision's `root/<layout_name>/raw` that holds all four
    IDX files (plain or gzipped), or None."""
    for folder in (root, root / layout_name / "raw"):
        if all(_idx_path(folder, stem) is not None for stem in IDX_FILES):
            return folder
    return None


def _from_idx_folder(folder: Path, classes: tuple[str, ...]) -> RawData:
    arrays = [read_idx(_idx_path(folder, stem)) for stem in IDX_FILES]  # type: ignore[arg-type]
    train_x, train_y, test_x, test_y = (torch.from_numpy(a.copy()) for a in arrays)
    return RawData(train_x[:, None], train_y.long(), test_x[:, None], test_y.long(), classes)


def load_idx_family(name: str, root: Path, download: bool) -> RawData:
    """Loads "mnist" or "fashion_mnist".

    Looks for, in order: torchvision's layout with decompressed files (read by torchvision); a folder
    of IDX files, gzipped or not, at `root` or at torchvision's `root/<MNIST|FashionMNIST>/raw`;
    then downloads with torchvision when `download` is on.

    Args:
        name: "mnist" or "fashion_mnist".
        root: The folder to look in (and download to).
        download: Whether torchvision may download missing files.

    Raises:
        DataUnavailableError: The files are not there and downloads are off, or reading failed.
    """
    from torchvision.datasets import MNIST, FashionMNIST

    dataset_cls = {"mnist": MNIST, "fashion_mnist": FashionMNIST}[name]
    classes = tuple(str(i) for i in range(10)) if name == "mnist" else tuple(FashionMNIST.classes)
    layout_name = dataset_cls.__name__
    raw = root / layout_name / "raw"
    with reading(name, root, download):
        if not all((raw / stem).is_file() for stem in IDX_FILES):
            folder = find_idx_folder(root, layout_name)
            if folder is not None:
                return _from_idx_folder(folder, classes)
            if not download:
                missing = [f"{stem}.gz" for stem in IDX_FILES if _idx_path(root, stem) is None]
                raise missing_files_error(name, root, missing)
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=False)
        return RawData(train.data[:, None], train.targets.long(), test.data[:, None], test.targets.long(), classes)
