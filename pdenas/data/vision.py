"""CIFAR-10, CIFAR-100, STL-10, SVHN and image folders, read with torchvision's dataset classes.

torchvision checks MD5 sums of every file at each load. Here the downloaded archive's checksum is
still verified by torchvision's download, but a load checks only that the files are present: this
skips hashing hundreds of MB per load and lets the tests run the real readers on small files in the
real formats.

CIFAR's batches are Python pickles, and ``pickle.load`` runs whatever a file asks for, so whoever
can write ``data.root`` (a shared folder on a cluster) could run code in every worker. They are
read here with ``SafeUnpickler``, which builds only what those files hold (dicts, lists, strings,
numbers, and numeric numpy arrays) and refuses every other global, instead of torchvision's
``pickle.load``. (Checking torchvision's MD5 sums at each load would also stop tampered files,
but costs hashing ~170 MB per load and refuses re-packed or subset files that are honest.)
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, STL10, SVHN

from pdenas.data.raw import RawData, fixed_test_split, missing_files_error, reading
from pdenas.errors import InputError

__all__ = ["TORCHVISION_LOADERS", "load_imagefolder", "load_torchvision"]

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _no_md5(files: list[list[str]]) -> list[list[str | None]]:
    return [[filename, None] for filename, *_ in files]


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10, checking presence instead of checksums when loading."""

    train_list = _no_md5(CIFAR10.train_list)
    test_list = _no_md5(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100(CIFAR100):
    """torchvision's CIFAR100, checking presence instead of checksums when loading."""

    train_list = _no_md5(CIFAR100.train_list)
    test_list = _no_md5(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


class _STL10(STL10):
    """torchvision's STL10 (labelled splits only), checking presence instead of checksums."""

    train_list = _no_md5(STL10.train_list[:2])
    test_list = _no_md5(STL10.test_list)


class _SVHN(SVHN):
    """torchvision's SVHN, checking presence instead of checksums when loading."""

    split_list = {split: [url, filename, None] for split, (url, filename, _) in SVHN.split_list.items()}


def _from_arrays(train_x: np.ndarray, train_y: object, test_x: np.ndarray, test_y: object, classes: object) -> RawData:
    """Wraps (N, C, H, W) uint8 arrays and label sequences as `RawData`."""
    images = [torch.from_numpy(np.ascontiguousarray(x)) for x in (train_x, test_x)]
    labels = [torch.as_tensor(np.asarray(y), dtype=torch.int64) for y in (train_y, test_y)]
    return RawData(images[0], labels[0], images[1], labels[1], tuple(classes))  # type: ignore[arg-type]


def _reconstruct(cls: type, *args: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build {cls!r}: only numpy arrays are allowed")
    return np.ndarray.__new__(np.ndarray, *args)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing the codec {encoding!r} in a data file")
    return codecs.encode(text, "latin1")


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles data files without running code: only numpy arrays (and dtypes) of plain
    containers are built; any other global in the file is an ``UnpicklingError``."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file may hold "
                                         "code; CIFAR files hold only numpy arrays") from None


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        entry = SafeUnpickler(handle, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise InputError(f"{path.name}: not a CIFAR batch (a {type(entry).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar_batches(folder: Path, files: list[list[str]], labels_key: str) -> tuple[np.ndarray, list[int]]:
    images, labels = [], []
    for filename, *_ in files:
        entry = _unpickle(folder / filename)
        data = entry["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
            raise InputError(f"{filename}: data is not uint8 32x32x3 images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(y) for y in entry[labels_key if labels_key in entry else "labels"])
    return np.concatenate(images), labels


def _cifar(cls: type[CIFAR10]) -> Callable[[Path, bool], RawData]:
    def load(root: Path, download: bool) -> RawData:
        folder = root / cls.base_folder
        if download and not all((folder / f).is_file() for f, _ in [*cls.train_list, *cls.test_list]):
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        key = "fine_labels" if cls.meta["key"] == "fine_label_names" else "labels"
        train_x, train_y = _cifar_batches(folder, cls.train_list, key)
        test_x, test_y = _cifar_batches(folder, cls.test_list, key)
        classes = [str(c) for c in _unpickle(folder / cls.meta["filename"])[cls.meta["key"]]]
        return _from_arrays(train_x, train_y, test_x, test_y, classes)

    return load


def _stl10(root: Path, download: bool) -> RawData:
    train = _STL10(str(root), split="train", download=download)
    test = _STL10(str(root), split="test")
    classes = getattr(train, "classes", STL10_CLASSES)
    return _from_arrays(train.data, train.labels, test.data, test.labels, classes)


def _svhn(root: Path, download: bool) -> RawData:
    train = _SVHN(str(root), split="train", download=download)
    test = _SVHN(str(root), split="test", download=download)
    return _from_arrays(train.data, train.labels, test.data, test.labels, (str(i) for i in range(10)))


TORCHVISION_LOADERS: dict[str, tuple[Callable[[Path, bool], RawData], tuple[str, ...]]] = {
    "cifar10": (
        _cifar(_CIFAR10),
        tuple(f"{CIFAR10.base_folder}/{f}" for f, _ in [*CIFAR10.train_list, *CIFAR10.test_list])
        + (f"{CIFAR10.base_folder}/{CIFAR10.meta['filename']}",),
    ),
    "cifar100": (
        _cifar(_CIFAR100),
        tuple(f"{CIFAR100.base_folder}/{f}" for f, _ in [*CIFAR100.train_list, *CIFAR100.test_list])
        + (f"{CIFAR100.base_folder}/{CIFAR100.meta['filename']}",),
    ),
    "stl10": (_stl10, tuple(f"{STL10.base_folder}/{f}" for f, _ in [*_STL10.train_list, *_STL10.test_list])),
    "svhn": (_svhn, tuple(f for _, f, _ in (SVHN.split_list["train"], SVHN.split_list["test"]))),
}
"""Loader and the files it needs (relative to root) of each torchvision data set."""


def load_torchvision(name: str, root: Path, download: bool) -> RawData:
    """Loads one of `TORCHVISION_LOADERS` from `root`, downloading only when `download` is on.

    Raises:
        DataUnavailableError: Files are missing and downloads are off, or the download or read failed.
    """
    load, required = TORCHVISION_LOADERS[name]
    missing = [f for f in required if not (root / f).is_file()]
    if missing and not download:
        raise missing_files_error(name, root, missing)
    with reading(name, root, download):
        return load(root, download)


def _image_folder(folder: Path, image_size: int | None) -> tuple[list[torch.Tensor], list[int], tuple[str, ...]]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    steps = [transforms.Resize((image_size, image_size))] if image_size else []
    ds = ImageFolder(str(folder), transform=transforms.Compose([*steps, transforms.PILToTensor()]))
    return [image for image, _ in ds], list(ds.targets), tuple(ds.classes)


def _stack(folder: Path, images: list[torch.Tensor]) -> torch.Tensor:
    sizes = sorted({tuple(image.shape[1:]) for image in images})
    if len(sizes) > 1:
        raise InputError(f"images in {folder} differ in size ({sizes[0]}, {sizes[1]}, ...); set data.image_size")
    return torch.stack(images)


def load_imagefolder(root: Path, image_size: int | None) -> RawData:
    """Loads a folder of class subfolders as RGB images, resized to image_size x image_size.

    When `root` has `train/` and `test/` subfolders (each of class subfolders) they are the official
    split; otherwise a fixed, stratified 20 % of `root` is the test set.

    Raises:
        DataUnavailableError: The folder is missing, empty or unreadable.
        ValueError: Images differ in size and `image_size` is not set, or train/ and test/ differ
            in classes.
    """
    split = (root / "train").is_dir() and (root / "test").is_dir()
    folders = (root / "train", root / "test") if split else (root,)
    with reading("imagefolder", root, False):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        parts = [_image_folder(folder, image_size) for folder in folders]
    xs = [_stack(folder, images) for folder, (images, _, _) in zip(folders, parts)]
    ys = [torch.tensor(targets, dtype=torch.int64) for _, targets, _ in parts]
    classes = parts[0][2]
    if not split:
        return fixed_test_split(xs[0], ys[0], classes)
    if parts[1][2] != classes:
        raise InputError(f"{root}/train and {root}/test have different class folders")
    return RawData(xs[0], ys[0], xs[1], ys[1], classes)
