"""How far single candidates get under ``search_budget.py``'s protocol: the ceiling a search meets.

Trains fixed ResNet candidates with pdenas's ``fit`` on the same data as ``search_budget.py``
(Debian's Fashion-MNIST, 12,000 train / 3,000 validation from the first 15,000 training images,
the official 10,000 test images), 6 epochs, AdamW, cosine schedule, no augmentation, one torch
thread per run, two runs at a time. Two recipes: the CPU study's (batch 128, weight clipping 1,
time smoothness 2e-4) and a second one (batch 64, label smoothing 0.1, neither clipping nor time
smoothness). Prints, per run, the validation curve, the test accuracy of the best-validation
epoch and the seconds. Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_budget_ceiling.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

STUDY_RECIPE = {"batch_size": 128, "clip_weights": 1.0, "time_smoothness": 2e-4,
                "label_smoothing": 0.0}
OTHER_RECIPE = {"batch_size": 64, "clip_weights": None, "time_smoothness": 0.0,
                "label_smoothing": 0.1}
RUNS = [  # (name, widths, blocks per unit, recipe)
    ("16-32-64 x2, study recipe", (16, 32, 64, 64), (2, 2, 2), STUDY_RECIPE),
    ("16-32-64 x2, other recipe", (16, 32, 64, 64), (2, 2, 2), OTHER_RECIPE),
    ("32-64-128 x1, study recipe", (32, 64, 128, 128), (1, 1, 1), STUDY_RECIPE),
    ("32-64-128 x1, other recipe", (32, 64, 128, 128), (1, 1, 1), OTHER_RECIPE),
    ("32-64-128 x2, other recipe", (32, 64, 128, 128), (2, 2, 2), OTHER_RECIPE),
]


def train_one(index: int) -> dict:
    """Trains run ``index`` of ``RUNS`` (seed 0) and returns its figures."""
    import torch

    from pdenas import build_model
    from pdenas.architecture import Architecture
    from pdenas.data import DataConfig, load_data
    from pdenas.train import TrainConfig, evaluate, fit

    torch.set_num_threads(1)
    name, widths, depths, recipe = RUNS[index]
    data = load_data(DataConfig(name="fashion_mnist", train_limit=15_000, val_fraction=0.2, seed=0))
    torch.manual_seed(0)
    model = build_model(Architecture(family="resnet", widths=widths, depths=depths,
                                     in_channels=1, num_classes=10))
    config = TrainConfig(epochs=6, optimizer="adamw", lr=3e-3, augment=False, **recipe)
    start = time.monotonic()
    result = fit(model, data, config, "cpu")
    model.load_state_dict(result.best_state)
    return {"name": name, "seconds": time.monotonic() - start,
            "val": [h["val_accuracy"] for h in result.history],
            "test": evaluate(model, data.test, "cpu")[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(train_one, range(len(RUNS))))
    print("| candidate | validation per epoch (%) | test (%) | seconds |")
    print("|---|---|---:|---:|")
    for row in rows:
        curve = " ".join(f"{100 * v:.1f}" for v in row["val"])
        print(f"| {row['name']} | {curve} | {100 * row['test']:.2f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
