"""How far single candidates get under ``search_budget.py``'s protocol: the ceiling a search meets.

Trains fixed candidates (ResNets, and two PDE nets that the search_budget run trained) with
pdenas's ``fit`` on the same data as ``search_budget.py`` (Debian's Fashion-MNIST, 12,000 train /
3,000 validation from the first 15,000 training images, the official 10,000 test images), 6 epochs,
AdamW at lr 3e-3, cosine schedule, no augmentation, one torch thread per run, two runs at a time.
Recipes: the CPU study's first one (batch 128, weight clipping 1, time smoothness 2e-4), a second
one (batch 64, label smoothing 0.1, neither clipping nor time smoothness), for the PDE nets the
second with the paper's clipping and time smoothness put back, and the per-step recipe (the second
with the rate moved every step after a 0.3-epoch warm-up and channels-last batches; also at batch
32 and lr 2e-3). Prints, per run, the validation curve, the test accuracy of the best-validation
epoch and the seconds. ``--seeds`` repeats each run with other seeds (initialisation and batch
order; the data split stays seed 0, as in ``search_budget.py``), ``--runs`` picks runs by index.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_budget_ceiling.py [--jobs 2] [--seeds 0 1 2]
        [--runs 1 3]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

STUDY_RECIPE = {"batch_size": 128, "clip_weights": 1.0, "time_smoothness": 2e-4,
                "label_smoothing": 0.0}
OTHER_RECIPE = {"batch_size": 64, "clip_weights": None, "time_smoothness": 0.0,
                "label_smoothing": 0.1}
MIXED_RECIPE = {**OTHER_RECIPE, "clip_weights": 1.0, "time_smoothness": 2e-4}
# The CPU study's recipe since 2026-12-05: the other recipe with the rate moved every step (cosine
# to zero) after a linear warm-up of 0.3 epochs, channels-last batches; and the same at batch 32
# (lr 2e-3), more accurate in recipe_ablation.md but slower per epoch on a CPU.
STEP_RECIPE = {**OTHER_RECIPE, "schedule_interval": "step", "warmup_epochs": 0.3,
               "channels_last": True}
STEP_RECIPE_32 = {**STEP_RECIPE, "batch_size": 32, "lr": 2e-3}
# The same in bf16 autocast (native on this CPU: AMX), 2026-12-06.
BF16_RECIPE = {**STEP_RECIPE, "amp": "bf16"}
BF16_RECIPE_32 = {**STEP_RECIPE_32, "amp": "bf16"}
RESNET = {"family": "resnet"}
# Two PDE candidates of the search_budget run (trials 6 and 4 there), at the same fixed lr.
SECOND_ORDER = {"family": "second_order", "step_size": 0.363, "norm": "batch"}
PARABOLIC = {"family": "parabolic", "step_size": 0.392, "norm": "batch"}
# The chosen trial of the 2026-12-05 search_budget runs (trial 5 there).
HAMILTONIAN = {"family": "hamiltonian", "step_size": 0.435, "norm": "batch"}
RUNS = [  # (name, family options, widths, blocks per unit, recipe)
    ("resnet 16-32-64 x2, study recipe", RESNET, (16, 32, 64, 64), (2, 2, 2), STUDY_RECIPE),
    ("resnet 16-32-64 x2, other recipe", RESNET, (16, 32, 64, 64), (2, 2, 2), OTHER_RECIPE),
    ("resnet 32-64-128 x1, study recipe", RESNET, (32, 64, 128, 128), (1, 1, 1), STUDY_RECIPE),
    ("resnet 32-64-128 x1, other recipe", RESNET, (32, 64, 128, 128), (1, 1, 1), OTHER_RECIPE),
    ("resnet 32-64-128 x2, other recipe", RESNET, (32, 64, 128, 128), (2, 2, 2), OTHER_RECIPE),
    ("second_order 16-32-64 x2, study recipe", SECOND_ORDER, (16, 32, 64, 64), (2, 2, 2),
     STUDY_RECIPE),
    ("second_order 16-32-64 x2, other recipe", SECOND_ORDER, (16, 32, 64, 64), (2, 2, 2),
     OTHER_RECIPE),
    ("second_order 16-32-64 x2, other + clipping + smoothness", SECOND_ORDER, (16, 32, 64, 64),
     (2, 2, 2), MIXED_RECIPE),
    ("parabolic 16-32-64 x1, study recipe", PARABOLIC, (16, 32, 64, 64), (1, 1, 1),
     STUDY_RECIPE),
    ("parabolic 16-32-64 x1, other recipe", PARABOLIC, (16, 32, 64, 64), (1, 1, 1),
     OTHER_RECIPE),
    ("parabolic 16-32-64 x1, other + clipping + smoothness", PARABOLIC, (16, 32, 64, 64),
     (1, 1, 1), MIXED_RECIPE),
    ("resnet 32-64-128 x1, per-step recipe, batch 32", RESNET, (32, 64, 128, 128), (1, 1, 1),
     STEP_RECIPE_32),
    ("resnet 32-64-128 x1, per-step recipe", RESNET, (32, 64, 128, 128), (1, 1, 1), STEP_RECIPE),
    ("second_order 16-32-64 x2, per-step recipe", SECOND_ORDER, (16, 32, 64, 64), (2, 2, 2),
     STEP_RECIPE),
    ("parabolic 16-32-64 x1, per-step recipe", PARABOLIC, (16, 32, 64, 64), (1, 1, 1),
     STEP_RECIPE),
    ("resnet 32-64-128 x1, per-step recipe, batch 32, bf16", RESNET, (32, 64, 128, 128),
     (1, 1, 1), BF16_RECIPE_32),
    ("resnet 32-64-128 x1, per-step recipe, bf16", RESNET, (32, 64, 128, 128), (1, 1, 1),
     BF16_RECIPE),
    ("resnet 32-64-128 x2, per-step recipe, batch 32, bf16", RESNET, (32, 64, 128, 128),
     (2, 2, 2), BF16_RECIPE_32),
    ("parabolic 16-32-64 x1, per-step recipe, bf16", PARABOLIC, (16, 32, 64, 64), (1, 1, 1),
     BF16_RECIPE),
    ("resnet 48-96-192 x1, per-step recipe, batch 32, bf16", RESNET, (48, 96, 192, 192),
     (1, 1, 1), BF16_RECIPE_32),
    ("resnet 64-128-256 x1, per-step recipe, batch 32, bf16", RESNET, (64, 128, 256, 256),
     (1, 1, 1), BF16_RECIPE_32),
    ("hamiltonian 48-96-192 x1, per-step recipe, batch 32, bf16", HAMILTONIAN,
     (48, 96, 192, 192), (1, 1, 1), BF16_RECIPE_32),
]


def train_one(job: tuple[int, int]) -> dict:
    """Trains run ``index`` of ``RUNS`` with ``seed`` (``job`` is both) and returns its figures."""
    import torch

    from pdenas import build_model
    from pdenas.architecture import Architecture
    from pdenas.data import DataConfig, load_data
    from pdenas.train import TrainConfig, evaluate, fit

    index, seed = job
    torch.set_num_threads(1)
    name, family, widths, depths, recipe = RUNS[index]
    data = load_data(DataConfig(name="fashion_mnist", train_limit=15_000, val_fraction=0.2, seed=0))
    torch.manual_seed(seed)
    model = build_model(Architecture(widths=widths, depths=depths, in_channels=1, num_classes=10,
                                     **family))
    config = TrainConfig(**{"epochs": 6, "optimizer": "adamw", "lr": 3e-3, "augment": False,
                            **recipe})
    start = time.monotonic()
    result = fit(model, data, config, "cpu", seed=seed)
    model.load_state_dict(result.best_state)
    return {"name": name, "seed": seed, "seconds": time.monotonic() - start,
            "val": [h["val_accuracy"] for h in result.history],
            "test": evaluate(model, data.test, "cpu")[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=int, nargs="+", default=list(range(len(RUNS))),
                        choices=range(len(RUNS)))
    args = parser.parse_args()
    jobs = [(index, seed) for seed in args.seeds for index in args.runs]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(train_one, jobs))
    print("| candidate | seed | validation per epoch (%) | test (%) | seconds |")
    print("|---|---:|---|---:|---:|")
    for row in rows:
        curve = " ".join(f"{100 * v:.1f}" for v in row["val"])
        print(f"| {row['name']} | {row['seed']} | {curve} | {100 * row['test']:.2f} "
              f"| {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
