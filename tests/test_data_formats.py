"""Tests of pdenas.data's readers on small files in each data set's real on-disk format, so the
torchvision code paths (and the IDX reader) run; and of Debian's Fashion-MNIST folder."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pdenas.data import DataConfig, DataUnavailableError, load_data, load_raw
from pdenas.data.config import DEBIAN_FASHION_MNIST

RNG = np.random.default_rng(0)


def _images(n: int, channels: int, size: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _check_raw(config: DataConfig, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    raw = load_raw(config)
    assert torch.equal(raw.train_x, torch.from_numpy(train[0]))
    assert raw.train_y.tolist() == train[1].tolist()
    assert torch.equal(raw.test_x, torch.from_numpy(test[0]))
    assert raw.test_y.tolist() == test[1].tolist()


# --- CIFAR (cifar-10-batches-py / cifar-100-python pickles) -------------------------------------


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(root: Path, per_batch: int = 3) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    folder = root / "cifar-10-batches-py"
    parts = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        x, y = _images(per_batch, 3, 32), RNG.integers(0, 10, per_batch)
        _pickle(folder / name, {"batch_label": name, "data": x.reshape(per_batch, -1), "labels": y.tolist()})
        parts[name] = (x, y)
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    train = tuple(np.concatenate([parts[f"data_batch_{i}"][k] for i in range(1, 6)]) for k in (0, 1))
    return train, parts["test_batch"]


def test_cifar10_pickles(tmp_path: Path) -> None:
    train, test = _write_cifar10(tmp_path)
    config = DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2)
    _check_raw(config, train, test)
    data = load_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    assert data.train.x.shape[1:] == (3, 32, 32) and data.in_channels == 3
    assert data.classes == tuple(f"class{i}" for i in range(10)) and data.flip is True
    assert len(data.mean) == len(data.std) == 3


def test_cifar100_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    parts = {}
    for name, n in (("train", 8), ("test", 4)):
        x, y = _images(n, 3, 32), RNG.integers(0, 100, n)
        _pickle(folder / name, {"data": x.reshape(n, -1), "fine_labels": y.tolist(), "coarse_labels": [0] * n})
        parts[name] = (x, y)
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["c"]})
    config = DataConfig(name="cifar100", root=str(tmp_path))
    _check_raw(config, parts["train"], parts["test"])
    assert load_data(config).num_classes == 100


def test_corrupt_cifar_file_is_unavailable(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataUnavailableError, match="could not read cifar10"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


# --- STL-10 (stl10_binary/*.bin, column-major images, labels 1..10) -------------------------------


def test_stl10_binary(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    parts = {}
    for split, n in (("train", 6), ("test", 4)):
        x, y = _images(n, 3, 96), RNG.integers(0, 10, n)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        parts[split] = (x, y)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    config = DataConfig(name="stl10", root=str(tmp_path))
    _check_raw(config, parts["train"], parts["test"])
    data = load_data(DataConfig(name="stl10", root=str(tmp_path), image_size=32))
    assert data.train.x.shape[1:] == (3, 32, 32) and data.image_size == (32, 32)
    assert data.classes == tuple(names)


# --- SVHN (.mat files, label 10 means digit 0) ----------------------------------------------------


def test_svhn_mat(tmp_path: Path) -> None:
    parts = {}
    for split, n in (("train", 6), ("test", 3)):
        x, y = _images(n, 3, 32), np.arange(n) % 10
        labels = np.where(y == 0, 10, y).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})
        parts[split] = (x, y)
    config = DataConfig(name="svhn", root=str(tmp_path))
    _check_raw(config, parts["train"], parts["test"])
    assert load_data(config).flip is False


# --- MNIST (IDX files: a plain folder of .gz files, and torchvision's MNIST/raw layout) -----------


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(folder: Path, gz: bool, n_train: int = 10, n_test: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _images(n_train, 1, 28)[:, 0],
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": _images(n_test, 1, 28)[:, 0],
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (folder / stem).write_bytes(_idx_bytes(array))
    return arrays


def _idx_parts(arrays: dict[str, np.ndarray]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    return (
        (arrays["train-images-idx3-ubyte"][:, None], arrays["train-labels-idx1-ubyte"]),
        (arrays["t10k-images-idx3-ubyte"][:, None], arrays["t10k-labels-idx1-ubyte"]),
    )


def test_mnist_folder_of_gz_files(tmp_path: Path) -> None:
    arrays = _write_idx(tmp_path, gz=True)
    config = DataConfig(name="mnist", root=str(tmp_path))
    _check_raw(config, *_idx_parts(arrays))
    data = load_data(config)
    assert data.train.x.shape[1:] == (1, 28, 28) and data.classes == tuple("0123456789")
    assert data.flip is False


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_idx(tmp_path / "MNIST" / "raw", gz=False)
    _check_raw(DataConfig(name="mnist", root=str(tmp_path)), *_idx_parts(arrays))


def test_fashion_mnist_gz_in_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    config = DataConfig(name="fashion_mnist", root=str(tmp_path))
    _check_raw(config, *_idx_parts(arrays))
    data = load_data(config)
    assert data.classes[0] == "T-shirt/top" and data.flip is True


def test_truncated_idx_file_is_unavailable(tmp_path: Path) -> None:
    _write_idx(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(DataUnavailableError, match="truncated"):
        load_data(DataConfig(name="mnist", root=str(tmp_path)))


def test_fashion_mnist_from_debian_folder() -> None:
    if not DEBIAN_FASHION_MNIST.is_dir():
        message = f"{DEBIAN_FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    data = load_data(DataConfig(name="fashion_mnist", train_limit=500))
    assert (len(data.train), len(data.val), len(data.test)) == (400, 100, 10_000)
    assert data.train.x.shape[1:] == (1, 28, 28) and data.num_classes == 10
    assert sorted(set(data.test.y.tolist())) == list(range(10))
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    assert 0.2 < data.mean[0] < 0.4  # Fashion-MNIST's pixel mean is about 0.286


# --- missing data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "stl10", "svhn"])
def test_missing_files_with_download_off(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataUnavailableError, match="download: true") as info:
        load_data(DataConfig(name=name, root=str(tmp_path)))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --- image folders --------------------------------------------------------------------------------


def _write_images(folder: Path, per_class: int, sizes: tuple[int, ...] = (12,)) -> None:
    for label, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            size = sizes[i % len(sizes)]
            pixels = np.full((size, size, 3), 40 + 150 * label, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_imagefolder_resized_with_fixed_test_split(tmp_path: Path) -> None:
    _write_images(tmp_path, per_class=5, sizes=(12, 20))
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    assert data.classes == ("cat", "dog") and data.in_channels == 3
    assert data.train.x.shape[1:] == (3, 8, 8)
    assert len(data.test) == 2 and len(data.train) + len(data.val) == 8
    raw = load_raw(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    assert torch.equal(raw.test_x[raw.test_y == 1], torch.full((1, 3, 8, 8), 190, dtype=torch.uint8))
    with pytest.raises(ValueError, match="set data.image_size"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_imagefolder_with_train_and_test_folders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", per_class=4)
    _write_images(tmp_path / "test", per_class=2)
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 4)
    assert data.image_size == (12, 12)


def test_imagefolder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="imagefolder"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path / "nothing")))
    with pytest.raises(DataUnavailableError, match="class folder"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path)))
