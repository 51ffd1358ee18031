"""The two STL-10 presets end to end: ``stl10_paper`` (the paper's text) and ``stl10_authors``
(the authors' runSTL10.m driver), each validated and searched through ``pdenas.search`` on a
few images written in STL-10's real binary format (``stl10_binary/*.bin``: uint8 images stored
column-major, labels 1..10), with epochs, batch and image size shrunk by overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pdenas
from pdenas.api import load_study
from pdenas.data import DataConfig, load_data
from pdenas.space import SearchSpace
from pdenas.train import evaluate, learning_rates

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def write_stl10(root: Path, train: int, test: int, seed: int = 0) -> None:
    """STL-10's labelled binary files under ``root/stl10_binary`` with random 96x96 images."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n in (("train", train), ("test", test)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        y = np.arange(n) % 10  # every class present
        # STL-10 stores each image column-major (the reader transposes H and W back)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")


@pytest.fixture(scope="module")
def stl10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stl10")
    write_stl10(root, train=20, test=10)
    return root


def _small(root: Path, epochs: int) -> dict[str, object]:
    """Overrides that shrink a preset to seconds on one CPU thread: the files above, no
    download, 24x24 images, 2 epochs at batch 8, the CPU, fp32."""
    return {"data": {"root": str(root), "download": False, "image_size": 24},
            "train": {"epochs": epochs, "batch_size": 8, "amp": "off"}, "device": "cpu"}


def test_the_authors_preset_is_runSTL10s_recipe() -> None:
    study = load_study("stl10_authors", {})
    assert study.data.val_fraction == 0 and study.data.name == "stl10"
    assert (study.train.epochs, study.train.batch_size) == (180, 32)
    space = SearchSpace.load(study.space)
    arch, train = space.replay({"family": "hamiltonian"}, in_channels=3, num_classes=10,
                               image_size=96, base_train=study.train.to_dict())
    assert arch.widths == (16, 32, 64, 128, 128) and arch.depths == (5, 5, 5, 5)
    assert arch.step_size == 1.0 and arch.norm == "tv"
    assert (train.optimizer, train.momentum, train.momentum_form, train.nesterov) == (
        "sgd", 0.9, "meganet", False)
    assert (train.weight_decay, train.time_smoothness, train.time_smoothness_form) == (
        4e-4, 1e-4, "meganet")
    assert train.keep == "last" and train.clip_weights == 1.0
    # lr = [0.1 * ones(40); kron(0.1 * 1.5 .^ (-1:-1:-14), ones(10))] / 2
    expected = [0.05] * 40 + [0.05 * 1.5 ** -k for k in range(1, 15) for _ in range(10)]
    assert learning_rates(train) == pytest.approx(expected, rel=1e-8)
    paper = load_study("stl10_paper", {})
    assert paper.data.val_fraction == 0.2 and paper.train.batch_size == 125


def test_val_fraction_0_trains_on_everything_and_lends_the_test_split(stl10_root: Path) -> None:
    data = load_data(DataConfig(name="stl10", root=str(stl10_root), val_fraction=0.0,
                                image_size=24))
    assert len(data.train) == 20 and data.val is data.test and len(data.test) == 10
    held_out = load_data(DataConfig(name="stl10", root=str(stl10_root), image_size=24))
    assert (len(held_out.train), len(held_out.val)) == (16, 4)
    with pytest.raises(ValueError, match=r"^data\.val_fraction: .*allowed: a number in \[0, 1\)"):
        DataConfig(name="stl10", val_fraction=1.0)
    with pytest.raises(ValueError, match=r"^data\.val_fraction"):
        DataConfig(name="stl10", val_fraction=-0.1)


@pytest.mark.parametrize("preset", ["stl10_paper", "stl10_authors"])
def test_the_preset_runs_end_to_end_on_stl10_files(preset: str, stl10_root: Path,
                                                  tmp_path: Path) -> None:
    run = pdenas.search(preset, out=tmp_path / preset, n_trials=1, progress=False,
                        **_small(stl10_root, epochs=2))
    trials = run.trials()
    assert len(trials) == 1 and trials["status"].tolist() == ["completed"], trials.to_dict()
    record = run.folder.trial(0).read_record()
    assert record.epochs_trained == 2 and len(record.history) == 2
    data = load_data(DataConfig(name="stl10", root=str(stl10_root), image_size=24,
                                val_fraction=0.0 if preset == "stl10_authors" else 0.2))
    model = pdenas.build_model(pdenas.Architecture.from_dict(record.architecture))
    model.load_state_dict(run.folder.trial(0).load_weights())
    _, test_accuracy = evaluate(model, data.test, "cpu")
    if preset == "stl10_authors":
        # the last iterate is kept, and its "validation" accuracy is its test accuracy
        assert record.val_accuracy == record.history[-1]["val_accuracy"]
        assert record.val_accuracy == pytest.approx(test_accuracy)
        assert model.units[0].depth == 5
    else:
        assert record.val_accuracy == max(h["val_accuracy"] for h in record.history)
        assert model.units[0].depth == 3


def test_retraining_for_export_never_trains_on_the_lent_test_split(
        stl10_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas import train as train_module
    from pdenas.export import _select

    trained_on: list[int] = []
    monkeypatch.setattr(train_module, "fit",
                        lambda model, splits, *a, **k: trained_on.append(len(splits.train)))
    arch = pdenas.Architecture(family="parabolic", widths=(4, 4), depths=(1,))
    for fraction, expected in ((0.0, 20), (0.2, 20)):  # 20 = train only; 16 + 4 val
        data = load_data(DataConfig(name="stl10", root=str(stl10_root), val_fraction=fraction,
                                    image_size=24))
        _select.retrain(arch, None, data, torch.device("cpu"), seed=0, number=0)
        assert trained_on.pop() == expected
