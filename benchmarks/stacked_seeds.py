"""Paired seeds trained together (``pdenas.stacked.fit_seeds``) against S separate ``fit`` runs.

For each candidate and each S, in the same process: S separate runs as the retraining makes them
(``torch.manual_seed(s); fit(build_model(arch), data, config, seed=s)``, one after the other),
then the same S seeds as one stacked model. Wall time covers everything a run does (building,
training, one validation pass per epoch); seconds are the median of ``--repeats`` pairs of runs
made one after the other; images per second are training images seen (S x images x epochs) per
median wall second; speed-up is the median of the pairs' ratios (separate seconds / stacked
seconds), with the lowest and highest. The last column is the largest difference in final
validation accuracy between a seed's two runs. A second table puts the stacked run's
differences next to those of ``fit`` against itself with channels-last memory format: the
float32 rounding floor of the same runs.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/stacked_seeds.py [--seeds 1 4 8 16] [--epochs 1] [--repeats 3]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch

from pdenas.architecture import Architecture
from pdenas.data import DataConfig, load_data
from pdenas.network import build_model
from pdenas.stacked import fit_seeds
from pdenas.train import TrainConfig, fit

DEVICE = "cpu"
"""Where every run trains (``--device``)."""

CANDIDATES = {
    # The quickstart space's kind of candidates (digits, AdamW, clipping, augmentation): its
    # smallest width, then a middle one.
    "parabolic (tv), width 8": Architecture(family="parabolic", widths=(8, 8, 8), depths=(2, 2),
                                            step_size=0.5, norm="tv", in_channels=1,
                                            num_classes=10),
    "parabolic (tv)": Architecture(family="parabolic", widths=(16, 32, 32), depths=(2, 2),
                                   step_size=0.5, norm="tv", in_channels=1, num_classes=10),
    "resnet (batch)": Architecture(family="resnet", widths=(16, 32, 32), depths=(2, 2),
                                   step_size=0.5, norm="batch", in_channels=1, num_classes=10),
}


def separate(arch: Architecture, data: Any, config: TrainConfig, seeds: list[int]
             ) -> tuple[float, list[float]]:
    start = time.perf_counter()
    accuracies = []
    for seed in seeds:
        torch.manual_seed(seed)
        result = fit(build_model(arch), data, config, DEVICE, seed=seed)
        accuracies.append(result.history[-1]["val_accuracy"])
    return time.perf_counter() - start, accuracies


def fit_memory_format(arch: Architecture, data: Any, config: TrainConfig) -> str:
    """The memory format ``fit`` trains in with this config (it converts the model)."""
    model = build_model(arch)
    fit(model, data, dataclasses.replace(config, epochs=1), DEVICE)
    kernel = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    return "contiguous" if kernel.is_contiguous() else "channels-last"


def stacked(arch: Architecture, data: Any, config: TrainConfig, seeds: list[int]
            ) -> tuple[float, list[float]]:
    start = time.perf_counter()
    runs = fit_seeds(arch, data, config, DEVICE, seeds)
    seconds = time.perf_counter() - start
    return seconds, [r.result.history[-1]["val_accuracy"] for r in runs]


def agreement(arch: Architecture, data: Any, config: TrainConfig, seeds: list[int]
              ) -> dict[str, float]:
    """How far the stacked run is from the separate ones, next to how far ``fit`` is from itself
    under a change that leaves the mathematics alone (channels-last memory format): the float32
    rounding floor of these runs."""
    plain, other = [], []
    for seed in seeds:
        for runs, channels_last in ((plain, False), (other, True)):
            torch.manual_seed(seed)
            model = build_model(arch)
            result = fit(model, data, dataclasses.replace(config, channels_last=channels_last),
                         DEVICE, seed=seed)
            runs.append((model.state_dict(), result.history[-1]["val_accuracy"]))
    stacked_runs = [(r.model.state_dict(), r.result.history[-1]["val_accuracy"])
                    for r in fit_seeds(arch, data, config, DEVICE, seeds)]

    def gaps(runs: list[Any]) -> tuple[float, float]:
        weights = max((a[k] - b[0][k]).abs().max().item()
                      for (a, _), b in zip(plain, runs) for k in a if a[k].is_floating_point())
        return weights, max(abs(a - b[1]) for (_, a), b in zip(plain, runs))

    (stacked_w, stacked_a), (floor_w, floor_a) = gaps(stacked_runs), gaps(other)
    return {"stacked_weights": stacked_w, "stacked_accuracy": stacked_a,
            "floor_weights": floor_w, "floor_accuracy": floor_a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the data stays there)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    data = load_data(DataConfig(name="digits", val_fraction=0.25, train_limit=args.train_limit),
                     DEVICE)
    config = TrainConfig(epochs=args.epochs, batch_size=64, optimizer="adamw", lr=5e-3,
                         weight_decay=1e-4, clip_weights=1.0, time_smoothness=2e-4, augment=True)
    images = len(data.train.y) * args.epochs
    memory_format = fit_memory_format(CANDIDATES["parabolic (tv)"], data, config)
    load_start, began = os.getloadavg()[0], time.perf_counter()
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.machine()
    print(f"# Stacked seeds against separate runs, {DEVICE.upper()}\n\n"
          f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
          f"benchmarks/stacked_seeds.py --seeds {' '.join(map(str, args.seeds))} "
          f"--epochs {args.epochs} --repeats {args.repeats} --device {DEVICE}`, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{where}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s). Digits 8x8: {len(data.train.y)} training and "
          f"{len(data.val.y)} validation images, {args.epochs} epoch(s), batch 64, AdamW, weight "
          f"clipping, time smoothness, augmentation; 2 units of 2 steps. The separate runs are "
          f"`fit` as it is (its default memory format: {memory_format}); the stacked run is "
          f"contiguous. "
          f"Load average (1 min) at the start: {load_start:.2f}.\n")
    print("| candidate | S | separate s | stacked s | separate img/s | stacked img/s | "
          "speed-up | lowest – highest | max abs Δ val acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, arch in CANDIDATES.items():
        separate(arch, data, config, [0])  # warm-up of both paths: allocator, kernels, vmap
        stacked(arch, data, config, [0, 1])
        for s in args.seeds:
            seeds = list(range(s))
            times, gap = [], 0.0
            for _ in range(args.repeats):  # one after the other, so a load spike hits both alike
                t_sep, acc_sep = separate(arch, data, config, seeds)
                t_stk, acc_stk = stacked(arch, data, config, seeds)
                times.append((t_sep, t_stk, t_sep / t_stk))
                gap = max(gap, *(abs(a - b) for a, b in zip(acc_sep, acc_stk)))
            t_sep, t_stk, ratio = (statistics.median(t[i] for t in times) for i in range(3))
            low, high = min(t[2] for t in times), max(t[2] for t in times)
            print(f"| {name} | {s} | {t_sep:.2f} | {t_stk:.2f} | {s * images / t_sep:.0f} | "
                  f"{s * images / t_stk:.0f} | {ratio:.2f} | {low:.2f} – {high:.2f} | {gap:.4f} |",
                  flush=True)
    print("\nAgreement, float32, seeds 0-3: largest differences from the separate `fit` runs, of "
          "the stacked run and of `fit` with channels-last memory format (the same mathematics, "
          "another rounding):\n")
    print("| candidate | stacked: max abs Δ weight | stacked: max abs Δ val acc | "
          "fit channels-last: max abs Δ weight | fit channels-last: max abs Δ val acc |")
    print("|---|---:|---:|---:|---:|")
    for name, arch in CANDIDATES.items():
        a = agreement(arch, data, config, [0, 1, 2, 3])
        print(f"| {name} | {a['stacked_weights']:.1e} | {a['stacked_accuracy']:.4f} | "
              f"{a['floor_weights']:.1e} | {a['floor_accuracy']:.4f} |", flush=True)
    print(f"\nLoad average (1 min) at the end: {os.getloadavg()[0]:.2f}; the whole benchmark took "
          f"{time.perf_counter() - began:.0f} s.")


if __name__ == "__main__":
    main()
