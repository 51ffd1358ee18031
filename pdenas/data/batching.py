"""Mini-batches of in-memory tensors, with augmentation done on whole batches.

Random numbers are drawn on the CPU from the caller's generator (so a seed gives the same batches
on every device) and only the small index tensors move to the data's device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pdenas.data.splits import TensorSplit

__all__ = ["augment_batch", "batches", "default_pad", "random_crop", "random_flip"]


def default_pad(height: int) -> int:
    """The crop padding used when none is given: a sixteenth of the image side, at least 1.

    So images move by up to H/16 pixels each way: 2 for 32x32, 6 for STL-10's 96x96, 2 for
    28x28, 1 for 8x8 digits. This is what Meganet.m's drivers do: ``randomCrop(Y, crop)`` pads
    ``crop / 2`` per side and shifts by up to ``crop``, with ``crop`` = 4 for CIFAR
    (``cnnDriver``) and 12 for STL-10 (``runSTL10``).
    """
    return max(1, round(height / 16))


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirrors each image of a batch (N, C, H, W) left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pads a batch (N, C, H, W) with zeros (the mean, after standardisation) on every side and
    cuts a random H x W window from each image, with two batched gathers.

    Args:
        x: The batch.
        pad: Padding per side; each image moves by up to `pad` pixels each way.
        generator: Source of the random offsets.
    """
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    padded = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    return padded.gather(3, cols.expand(n, c, h, w))


def augment_batch(
    x: torch.Tensor, *, flip: bool, pad: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Applies a padded random crop and, when `flip` is allowed, a random horizontal flip.

    Args:
        x: A batch (N, C, H, W); it is not modified.
        flip: Whether horizontal flips preserve the labels.
        pad: Crop padding per side; None uses `default_pad` (H/16, Meganet.m's drivers).
        generator: Source of randomness.
    """
    x = random_crop(x, default_pad(x.shape[2]) if pad is None else pad, generator)
    return random_flip(x, generator) if flip else x


def batches(
    split: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    flip: bool = False,
    pad: int | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (x, y) mini-batches of a split on its device; one pass is one epoch.

    Args:
        split: The examples.
        batch_size: Examples per batch (the last one may be smaller unless `drop_last`).
        shuffle: Visit the examples in a random order (each exactly once).
        augment: Apply `augment_batch` (padded random crop, and flips where `flip`).
        flip: Whether horizontal flips preserve the labels (`DataSplits.flip`).
        pad: Crop padding per side; None uses `default_pad`.
        generator: A CPU torch.Generator for the order and the augmentation.
        drop_last: Skip a last, smaller batch (batch norm cannot train on a batch of one).

    Raises:
        ValueError: batch_size is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            x, y = split.x[index], split.y[index]
        if augment:
            x = augment_batch(x, flip=flip, pad=pad, generator=generator)
        yield x, y
