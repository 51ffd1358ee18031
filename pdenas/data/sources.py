"""Decoding a data set by name into `RawData` (uint8, optionally resized), cached per process.

The cache is keyed on what decides the decoded pixels (name, root, download, image_size), so
reloading with another seed, split or training cap does not decode again.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from pdenas.data.config import DataConfig
from pdenas.data.raw import RawData, fixed_test_split

__all__ = ["clear_cache", "load_digits", "load_raw", "resize_uint8"]

_RESIZE_CHUNK = 1024


def load_digits() -> RawData:
    """Loads scikit-learn's bundled 8x8 digits (1,797 images, values 0..16 scaled to 0..255),
    with a fixed, stratified 20 % test set."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8)[:, None]
    labels = torch.from_numpy(bunch.target).long()
    return fixed_test_split(images, labels, tuple(str(i) for i in range(10)))


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes uint8 images (N, C, H, W) to size x size (bilinear, antialiased), in chunks."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], _RESIZE_CHUNK):
        chunk = x[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _decode(name: str, root: Path, download: bool, image_size: int | None) -> RawData:
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion_mnist"):
        from pdenas.data.idx import load_idx_family

        return load_idx_family(name, root, download)
    if name == "imagefolder":
        from pdenas.data.vision import load_imagefolder

        return load_imagefolder(root, image_size)
    from pdenas.data.vision import load_torchvision

    return load_torchvision(name, root, download)


@functools.lru_cache(maxsize=4)
def _cached(name: str, root: str, download: bool, image_size: int | None) -> RawData:
    raw = _decode(name, Path(root), download, image_size)
    if image_size is None:
        return raw
    train_x, test_x = (resize_uint8(x, image_size) for x in (raw.train_x, raw.test_x))
    return RawData(train_x, raw.train_y, test_x, raw.test_y, raw.classes)


def load_raw(config: DataConfig) -> RawData:
    """Returns the decoded (and resized) data set of `config`, from the process cache when possible.

    The returned tensors are shared with the cache: never modify them in place.

    Raises:
        DataUnavailableError: The data set's files are missing (downloads off) or unreadable.
    """
    root = str(config.resolved_root().absolute())
    return _cached(config.name, root, config.download, config.image_size)


def clear_cache() -> None:
    """Drops every decoded data set held by `load_raw`."""
    _cached.cache_clear()
