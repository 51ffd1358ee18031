"""Train/validation/test tensors in memory (`DataSplits`), standardised with train-split statistics.

`load_data(config, device)` takes the decoded official training set, caps it at `train_limit`
(a seeded subset), holds out a seeded `val_fraction` for validation, and standardises every split
per channel with the mean and standard deviation of the training split (or, with
`standardise: image`, each image on its own, as the authors' code). The test split is only for
final evaluation, except with `val_fraction: 0` (the authors' STL-10 protocol): then everything
trains and the test split is also lent as `val`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdenas.data.config import DataConfig, dataset_info
from pdenas.data.sources import load_raw
from pdenas.errors import InputError

__all__ = ["DataSplits", "TensorSplit", "load_data", "standardise", "standardise_images"]


@dataclass(frozen=True)
class TensorSplit:
    """Examples held as tensors on one device.

    Attributes:
        x: float32 standardised images (N, C, H, W).
        y: int64 labels (N,).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        """The device the tensors live on."""
        return self.x.device


@dataclass(frozen=True)
class DataSplits:
    """A loaded data set: the three splits and what a model and an exporter need to know.

    Attributes:
        train: Training examples.
        val: Validation examples (held out from the official training set); with
            ``val_fraction: 0`` the test split itself (``DataConfig.val_fraction``).
        test: Test examples, for final evaluation only.
        num_classes: Number of classes.
        in_channels: Image channels (1 or 3).
        image_size: (height, width) of the images.
        classes: Class names, indexed by label.
        flip: Whether horizontal flips preserve the label.
        mean: Per-channel mean of the training split, on the 0..1 pixel scale.
        std: Per-channel standard deviation of the training split, on the 0..1 pixel scale; a
            model's input is (pixel / 255 - mean) / std. With ``standardise`` "image", 0 and 1:
            the input is the image standardised on its own (``standardise_images``).
        name: The data set's name.
        standardise: ``DataConfig.standardise``: "channel" or "image".
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    standardise: str = "channel"


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Maps uint8 images (N, C, H, W) to float32 (x / 255 - mean) / std, per channel.

    Args:
        x: uint8 images.
        mean: Per-channel means on the 0..1 scale, shape (C,).
        std: Per-channel standard deviations on the 0..1 scale, shape (C,).
    """
    scale = (1.0 / (255.0 * std)).to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    shift = (mean / std).to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return x.to(torch.float32).mul_(scale).sub_(shift)


def standardise_images(x: torch.Tensor) -> torch.Tensor:
    """Maps uint8 images (N, C, H, W) to float32, each image standardised on its own as the
    authors' ``normalizeData.m`` (TensorFlow's ``per_image_standardization``) does:
    ``(x - mean(x)) / max(std(x), 1 / sqrt(n))`` over the image's n = C·H·W values on the
    0..255 scale, with the sample standard deviation (n - 1)."""
    out = x.to(torch.float32)
    flat = out.view(out.shape[0], -1)
    floor = flat.shape[1] ** -0.5
    std, mean = torch.std_mean(flat, dim=1, keepdim=True)
    flat.sub_(mean).div_(std.clamp_min(floor))
    return out


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std (0..1 scale, float64) of uint8 images, from 256-bin histograms."""
    counts = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])
    counts = counts.to(torch.float64)
    levels = torch.arange(256, dtype=torch.float64, device=x.device) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * levels).sum(dim=1) / total
    var = (counts * (levels - mean[:, None]).square()).sum(dim=1) / total
    return mean, var.sqrt().clamp_min(1e-6)


def _split_indices(n: int, config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=generator)
    if config.train_limit is not None:
        order = order[: config.train_limit]
    if config.val_fraction == 0:  # everything trains; load_data lends the test split as val
        if len(order) < 1:
            raise InputError(f"{config.name} has no training examples")
        return order.sort().values, order[:0]
    if len(order) < 2:
        raise InputError(f"{config.name} has {n} training examples; at least 2 are needed for a train/val split")
    n_val = min(max(int(round(len(order) * config.val_fraction)), 1), len(order) - 1)
    return order[n_val:].sort().values, order[:n_val].sort().values


def load_data(config: DataConfig, device: str | torch.device = "cpu") -> DataSplits:
    """Loads, splits and standardises a data set into tensors on `device`.

    Args:
        config: Which data set and how to split it.
        device: Where the tensors live ("cpu", "cuda", ...).

    Raises:
        DataUnavailableError: The data set's files are missing (downloads off) or unreadable.
    """
    raw = load_raw(config)
    device = torch.device(device)
    train_idx, val_idx = _split_indices(raw.train_x.shape[0], config)
    train_u8 = raw.train_x[train_idx].to(device)
    channels = train_u8.shape[1]
    if config.standardise == "image":  # no data set statistics: the identity after it
        mean = torch.zeros(channels, dtype=torch.float64)
        std = torch.ones(channels, dtype=torch.float64)
    else:
        mean, std = _channel_stats(train_u8)

    def inputs(x: torch.Tensor) -> torch.Tensor:
        if config.standardise == "image":
            return standardise_images(x.to(device))
        return standardise(x.to(device), mean, std)

    def split(x: torch.Tensor, y: torch.Tensor) -> TensorSplit:
        return TensorSplit(inputs(x), y.to(device))

    test = split(raw.test_x, raw.test_y)
    return DataSplits(
        train=TensorSplit(inputs(train_u8), raw.train_y[train_idx].to(device)),
        val=test if config.val_fraction == 0 else split(raw.train_x[val_idx], raw.train_y[val_idx]),
        test=test,
        num_classes=len(raw.classes),
        in_channels=int(raw.train_x.shape[1]),
        image_size=(int(raw.train_x.shape[2]), int(raw.train_x.shape[3])),
        classes=raw.classes,
        flip=dataset_info(config.name).flip,
        mean=tuple(float(m) for m in mean.cpu()),
        std=tuple(float(s) for s in std.cpu()),
        name=config.name,
        standardise=config.standardise,
    )
