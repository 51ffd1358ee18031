"""The data configuration (`DataConfig`), the catalogue of known data sets, and the data error.

Everything here is validated at the edge (``pdenas._config``): `DataConfig.from_dict` rejects unknown
keys and bad values with one line, ``data.key: problem; allowed: ...``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pdenas._config import INTERNAL, Config
from pdenas.errors import InputError

__all__ = [
    "STANDARDISATIONS",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST",
    "DataConfig",
    "DataUnavailableError",
    "DatasetInfo",
    "dataset_info",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MAX_IMAGE_SIZE = 1024
"""The largest ``image_size`` (a side): beyond it even one resized data set outgrows memory."""
"""Where Debian's `dataset-fashion-mnist` package installs its IDX .gz files."""


STANDARDISATIONS = ("channel", "image")
"""How pixels become a model's input (``DataConfig.standardise``)."""


class DataUnavailableError(InputError):
    """The data set's files are not present (and downloads are off, or the download failed)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set before loading it.

    Attributes:
        name: The data set's name in configs.
        flip: Whether horizontal flips preserve the label (not for digits, letters and house numbers).
        needs_root: Whether the data set cannot be found without `root`.
        pixels: What a pixel value (0..255) is, for someone feeding the exported model their
            own copy of the data set.
    """

    name: str
    flip: bool
    needs_root: bool = False
    pixels: str = "the data set's 8-bit values, 0..255"


_INFO = {
    info.name: info
    for info in (
        DatasetInfo("digits", flip=False,
                    pixels="scikit-learn's load_digits values (0..16) rescaled: "
                           "pixel = round(value * 255 / 16)"),
        DatasetInfo("mnist", flip=False),
        DatasetInfo("fashion_mnist", flip=True),
        DatasetInfo("cifar10", flip=True),
        DatasetInfo("cifar100", flip=True),
        DatasetInfo("stl10", flip=True),
        DatasetInfo("svhn", flip=False),
        DatasetInfo("imagefolder", flip=True, needs_root=True),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Returns the catalogue entry of a data set.

    Args:
        name: One of `DATASET_NAMES`.

    Raises:
        ValueError: The name is not a known data set.
    """
    try:
        return _INFO[name]
    except KeyError:
        raise InputError(f"unknown data set {name!r}; allowed: {', '.join(DATASET_NAMES)}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig(Config):
    """Which data set to load and how to split it.

    Attributes:
        name: One of `DATASET_NAMES`; "digits" (scikit-learn's bundled 8x8 digits) needs no files.
        root: Folder holding the data set's files (torchvision's layout, or a folder of IDX files
            for mnist / fashion_mnist, or class subfolders for imagefolder). None means "data"
            (fashion_mnist: Debian's /usr/share/datasets/fashion-mnist when it is installed).
        download: Whether torchvision may download missing files.
        val_fraction: Share of the (capped) official training set held out for validation, in
            [0, 1). 0 trains on all of it and has no validation split of its own: the test split
            stands in as ``val`` (what the authors' STL-10 driver does, watching test accuracy
            while it trains). Only for reproducing such a protocol, with ``train.keep: last``:
            anything chosen by the "validation" accuracy is then chosen on the test set.
        image_size: Resize images to image_size x image_size; None keeps the data set's size.
        train_limit: Use at most this many examples of the official training set (a seeded subset,
            split into train and validation as usual); None uses them all.
        standardise: How pixels become the model's input: "channel" (the default: per channel,
            ``(pixel / 255 - mean) / std`` with the training split's statistics) or "image"
            (the authors' ``normalizeData.m``, TensorFlow's per-image standardisation: each image
            on its own, ``(x - mean(x)) / max(std(x), 1 / sqrt(n))`` over its n = C·H·W values
            of ``x = pixel`` on the 0..255 scale, std with n - 1; no data set statistics).
        seed: Seed of the subset and the train/validation split: fixed (0) for a study file, so
            that runs with different study seeds train and validate on the same images.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    image_size: int | None = None
    train_limit: int | None = None
    standardise: str = "channel"
    seed: int = field(default=0, metadata=INTERNAL)

    SECTION = "data"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "seed": "the split is fixed, so that runs with different study seeds train and "
                "validate on the same images (the study's seed seeds everything else)"}

    def __post_init__(self) -> None:
        if isinstance(self.root, Path):
            object.__setattr__(self, "root", str(self.root))
        super().__post_init__()
        self.require("name", self.name in _INFO, ", ".join(DATASET_NAMES),
                     problem=f"unknown data set {self.name!r}")
        self.require("root", self.root is None or bool(self.root), "a non-empty path or null")
        self.require("root", self.root is not None or not dataset_info(self.name).needs_root,
                     "a folder of class subfolders",
                     problem=f"required for {self.name!r}")
        self.require("val_fraction", 0.0 <= self.val_fraction < 1.0,
                     "a number in [0, 1) (0: train on everything, the test split as val)")
        for key in ("image_size", "train_limit"):
            value = getattr(self, key)
            self.require(key, value is None or value >= 2, "an integer >= 2 or null")
        self.require("image_size", self.image_size is None or self.image_size <= MAX_IMAGE_SIZE,
                     f"an integer from 2 to {MAX_IMAGE_SIZE} or null")
        self.require("standardise", self.standardise in STANDARDISATIONS,
                     ", ".join(STANDARDISATIONS))

    def resolved_root(self) -> Path:
        """Returns the folder the data set is read from (or downloaded to)."""
        if self.root is not None:
            return Path(self.root).expanduser()
        if self.name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
            return DEBIAN_FASHION_MNIST
        return Path("data")
