"""Tests of pdenas.data: config validation, the embedded digits, splits, standardisation, batching."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pdenas.data import (
    DATASET_NAMES,
    DataConfig,
    DataSplits,
    DataUnavailableError,
    TensorSplit,
    augment_batch,
    batches,
    default_pad,
    load_data,
    load_raw,
    random_crop,
)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data(DataConfig())


def _pixels(data: DataSplits, split: TensorSplit) -> torch.Tensor:
    """Undoes the standardisation: the uint8 images a split was made from."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return ((split.x.double() * std + mean) * 255).round().to(torch.uint8)


def _image_counts(x: torch.Tensor, y: torch.Tensor) -> Counter[bytes]:
    return Counter(image.numpy().tobytes() + bytes([label]) for image, label in zip(x, y.tolist()))


# --- config ---------------------------------------------------------------------------------------


def test_config_defaults_round_trip() -> None:
    config = DataConfig.from_dict({})
    assert config == DataConfig(name="digits", root=None, download=False, val_fraction=0.2, seed=0)
    assert DataConfig.from_dict(config.to_dict()) == config
    assert set(DATASET_NAMES) >= {"digits", "mnist", "fashion_mnist", "cifar10", "stl10", "imagefolder"}


def test_config_unknown_key_names_key_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"^data.batch: unknown key; allowed: name, root, download, val_fraction"):
        DataConfig.from_dict({"name": "digits", "batch": 3})


def test_config_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"'imagenet'.*allowed: digits, mnist, fashion_mnist, cifar10"):
        DataConfig.from_dict({"name": "imagenet"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("val_fraction", 1.5, "val_fraction"),
        ("val_fraction", -0.1, "val_fraction"),
        ("val_fraction", 1, "val_fraction"),
        ("download", "yes", "data.download: got 'yes'; allowed: true or false"),
        ("image_size", 0, "image_size"),
        ("train_limit", True, "train_limit"),
        ("seed", 1.5, "seed"),
        ("root", "", "root"),
    ],
)
def test_config_bad_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig.from_dict({key: value})


def test_imagefolder_needs_root() -> None:
    with pytest.raises(ValueError, match="data.root: required for 'imagefolder'"):
        DataConfig(name="imagefolder")


def test_cifar10_missing_with_download_off(tmp_path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message
    assert "cifar-10-batches-py" in message and "download: true" in message
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []  # nothing written


# --- digits and splits ----------------------------------------------------------------------------


def test_digits_shapes_and_classes(digits: DataSplits) -> None:
    assert digits.name == "digits"
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, (8, 8))
    assert digits.classes == tuple("0123456789")
    assert digits.flip is False
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.shape[0] == len(split)
        assert split.device == torch.device("cpu")
    assert set(digits.test.y.tolist()) == set(range(10))


def test_digits_split_sizes(digits: DataSplits) -> None:
    assert len(digits.test) == 359  # a fixed, stratified 20 % of 1,797
    pool = 1797 - 359
    assert len(digits.val) == round(pool * 0.2)
    assert len(digits.train) + len(digits.val) == pool


def test_train_val_partition_the_official_train_set(digits: DataSplits) -> None:
    raw = load_raw(DataConfig())
    train = _image_counts(_pixels(digits, digits.train), digits.train.y)
    val = _image_counts(_pixels(digits, digits.val), digits.val.y)
    test = _image_counts(_pixels(digits, digits.test), digits.test.y)
    assert train + val == _image_counts(raw.train_x, raw.train_y)
    assert test == _image_counts(raw.test_x, raw.test_y)


def test_no_overlap_between_train_and_val(digits: DataSplits) -> None:
    train = digits.train.x.flatten(1)
    val = digits.val.x.flatten(1)
    # digits has a few exact duplicate images; only those may match, never more than appear in raw.
    raw = load_raw(DataConfig())
    duplicates = sum(c - 1 for c in _image_counts(raw.train_x, torch.zeros_like(raw.train_y)).values())
    matches = (torch.cdist(val.double(), train.double()) == 0).any(dim=1).sum().item()
    assert matches <= duplicates


def test_seeded_determinism() -> None:
    first = load_data(DataConfig(seed=3))
    again = load_data(DataConfig(seed=3))
    other = load_data(DataConfig(seed=4))
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.val.y, again.val.y)
    assert not torch.equal(first.val.x, other.val.x)
    # the test set does not depend on the seed (its standardisation follows the train split)
    assert torch.equal(first.test.y, other.test.y)
    assert torch.equal(_pixels(first, first.test), _pixels(other, other.test))


def test_standardisation_uses_train_statistics(digits: DataSplits) -> None:
    x = digits.train.x.double()
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(unbiased=False).item() - 1.0) < 1e-5
    raw = load_raw(DataConfig())
    assert torch.equal(_pixels(digits, digits.test), raw.test_x)
    assert 0.0 < digits.mean[0] < 1.0 and 0.0 < digits.std[0] < 1.0


def test_train_limit_and_resize() -> None:
    data = load_data(DataConfig(train_limit=100, image_size=16, val_fraction=0.25))
    assert (len(data.train), len(data.val)) == (75, 25)
    assert data.train.x.shape[1:] == (1, 16, 16) and data.image_size == (16, 16)
    assert len(data.test) == 359


# --- batching -------------------------------------------------------------------------------------


def _indexed_split(n: int = 50, channels: int = 2, size: int = 6) -> TensorSplit:
    x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))
    return TensorSplit(x, torch.arange(n))


def test_batches_cover_every_example_once_per_epoch() -> None:
    split = _indexed_split(50)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        seen = [y for _, y in batches(split, 16, shuffle=True, generator=generator)]
        assert [len(y) for y in seen] == [16, 16, 16, 2]
        order = torch.cat(seen)
        assert sorted(order.tolist()) == list(range(50))
        assert order.tolist() != list(range(50))
    for x, y in batches(split, 16, shuffle=True, generator=generator):
        assert torch.equal(x, split.x[y])  # images stay with their labels


def test_batches_in_order_and_drop_last() -> None:
    split = _indexed_split(50)
    assert torch.cat([y for _, y in batches(split, 20)]).tolist() == list(range(50))
    assert [len(y) for _, y in batches(split, 20, drop_last=True)] == [20, 20]
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(split, 0))


def test_batches_are_reproducible_with_a_seed() -> None:
    split = _indexed_split(30)

    def epoch(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [x for x, _ in batches(split, 8, shuffle=True, augment=True, flip=True, generator=gen)]

    assert all(torch.equal(a, b) for a, b in zip(epoch(5), epoch(5)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(5), epoch(6)))


def test_augmentation_keeps_shapes_and_changes_pixels(digits: DataSplits) -> None:
    generator = torch.Generator().manual_seed(0)
    for x, y in batches(digits.train, 64, shuffle=False, augment=True, flip=False, generator=generator):
        assert x.shape == (len(y), 1, 8, 8) and x.dtype == torch.float32
        assert not torch.equal(x, digits.train.x[: len(y)])
        break
    original = digits.train.x[:64].clone()
    augment_batch(digits.train.x[:64], flip=True, generator=generator)
    assert torch.equal(original, digits.train.x[:64])  # the data is not modified in place


def test_crop_is_a_translation_of_the_original() -> None:
    x = _indexed_split(40, channels=3, size=8).x
    pad = 2
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    shifts = set()
    for image, crop in zip(padded, out):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(image[:, dy : dy + 8, dx : dx + 8], crop)
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 5  # offsets differ between images


def test_flip_mirrors_some_images_and_only_when_allowed() -> None:
    x = _indexed_split(40).x
    flipped = augment_batch(x, flip=True, pad=0, generator=torch.Generator().manual_seed(0))
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, x)]
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    assert all(m != s for m, s in zip(mirrored, same))
    assert 5 < sum(mirrored) < 35
    assert torch.equal(augment_batch(x, flip=False, pad=0), x)


def test_default_pad() -> None:
    # H/16 as Meganet.m's drivers: randomCrop(Y, 4) on CIFAR, randomCrop(Y, 12) on STL-10
    assert [default_pad(s) for s in (8, 28, 32, 96)] == [1, 2, 2, 6]


def test_a_failed_read_or_download_leaves_no_new_folder(tmp_path):
    from pdenas.data.raw import reading

    existing = tmp_path / "kept"
    existing.mkdir()
    root = existing / "new" / "cifar"
    with pytest.raises(DataUnavailableError, match="could not download or read cifar10"):
        with reading("cifar10", root, download=True):
            root.mkdir(parents=True)
            (root / "partial.tar.gz").write_bytes(b"half an archive")
            raise OSError("connection reset")
    assert existing.is_dir() and not (existing / "new").exists()
