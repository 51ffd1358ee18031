"""Data sets for pdenas: loading (embedded digits, MNIST-style IDX folders, torchvision sets, image
folders), seeded train/validation/test splits held as standardised tensors, and fast batching with
augmentation on tensors.

The module map: `config` (DataConfig, catalogue, errors), `raw` (decoded uint8 data), `idx` (MNIST
and Fashion-MNIST), `vision` (CIFAR, STL-10, SVHN, image folders), `sources` (decode by name, cached),
`splits` (DataSplits, load_data), `batching` (batches, augmentation).
"""

from __future__ import annotations

from pdenas.data.batching import augment_batch, batches, default_pad, random_crop, random_flip
from pdenas.data.config import DATASET_NAMES, DataConfig, DataUnavailableError, dataset_info
from pdenas.data.sources import clear_cache, load_raw
from pdenas.data.splits import DataSplits, TensorSplit, load_data, standardise

__all__ = [
    "DATASET_NAMES",
    "DataConfig",
    "DataSplits",
    "DataUnavailableError",
    "TensorSplit",
    "augment_batch",
    "batches",
    "clear_cache",
    "dataset_info",
    "default_pad",
    "load_data",
    "load_raw",
    "random_crop",
    "random_flip",
    "standardise",
]
