"""Coarse-to-fine against from-scratch training on Fashion-MNIST, per PDE family, with paired
intervals; and the second-order family's half-step start.

Layout and protocol, fixed before the run (issue 30; the previous run's layout was chosen after
a pilot, so it is not reused): for each variant, parabolic, hamiltonian, second_order (leapfrog
from rest, ``Y_{-1} = Y_0``) and second_order_half (the same with ``start="half_step"``), one
network at a final depth of 3 units of 4 steps, widths 8-16-32-32, T = 1 per unit (h = 0.25),
TV norm, ReLU, trained on a fixed subset of 3,000 Fashion-MNIST training images (80 % train,
20 % validation) and tested on the first 5,000 test images, with 5 seeds (the seed sets the
initialisation and the batch order), by three methods:

* ``scratch``: at the final depth for all 8 epochs;
* ``coarse-to-fine``: ``TrainConfig.multilevel`` with 3 levels, factor 2 (1 -> 2 -> 4 steps,
  h = 1 -> 0.5 -> 0.25, each unit over the same T) and epoch shares 50 / 25 / 25 %, the same
  cosine schedule over all epochs and the same initialisation;
* ``scratch-short``: at the final depth for 4 epochs with its own cosine schedule: the same
  amount of computation as coarse-to-fine (4 epochs at a quarter of the steps, 2 at half, 2 at
  the full depth: 0.5 x 8 = 4 full-depth epochs), so about the same wall time (both measured).

(second_order_half runs scratch and coarse-to-fine only.) Reported: test accuracy of the
best-validation weights at the final depth, training seconds (every epoch with its validation
pass and the resampling between levels), and per seed the paired differences with their 95 %
t-intervals (5 seeds: mean ± 2.776 · std / sqrt(5)). An interval that contains 0 shows no
difference at this size; it does not show equality.

Run from the repository root: ``OMP_NUM_THREADS=1 python benchmarks/multilevel.py``
(about 25 minutes on one free core); it prints the tables and writes them to
``benchmarks/multilevel.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdenas import Architecture, build_model  # noqa: E402
from pdenas.data import DataConfig, load_data  # noqa: E402
from pdenas.train import TrainConfig, evaluate, fit  # noqa: E402

__all__ = ["VARIANTS", "run_one", "main"]

VARIANTS = ("parabolic", "hamiltonian", "second_order", "second_order_half")
METHODS = ("scratch", "coarse-to-fine", "scratch-short")
HALF = "second_order_half"
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 10: 2.262}
"""Student's t quantile 0.975 by sample size (n - 1 degrees of freedom)."""


def methods(variant: str) -> tuple[str, ...]:
    return METHODS[:2] if variant == HALF else METHODS


def run_one(variant: str, method: str, seed: int, data: Any, args: argparse.Namespace) -> dict:
    """Trains one network; returns its test accuracy, seconds and validation curve."""
    torch.manual_seed(seed)
    family = "second_order" if variant == HALF else variant
    arch = Architecture(
        family=family, widths=tuple(args.widths), depths=(args.depth,) * (len(args.widths) - 1),
        step_size=args.time / args.depth, in_channels=data.in_channels,
        num_classes=data.num_classes,
    )
    model = build_model(arch)
    if variant == HALF:  # an option of the unit (Architecture does not carry it)
        for unit in model.units:
            unit.start = "half_step"
    epochs = args.epochs // 2 if method == "scratch-short" else args.epochs
    train = {"epochs": epochs, "batch_size": 64, "lr": 0.05, "schedule": "cosine",
             "augment": False}
    if method == "coarse-to-fine":
        train["multilevel"] = {"levels": args.levels, "factor": 2, "shares": args.shares}
    result = fit(model, data, TrainConfig.from_dict(train), "cpu", seed=seed)
    test = type(data.test)(data.test.x[: args.test_limit], data.test.y[: args.test_limit])
    _, test_accuracy = evaluate(model, test, "cpu")
    elapsed = 0.0
    curve = []
    for entry in result.history:
        elapsed += entry["seconds"]
        curve.append((elapsed, entry["val_accuracy"]))
    return {"test_accuracy": test_accuracy, "seconds": result.seconds, "curve": curve}


_WORKER: dict[str, Any] = {}


def _start_worker(args: argparse.Namespace) -> None:
    """One thread per run; each worker loads the data subset once."""
    torch.set_num_threads(1)
    _WORKER["args"] = args
    _WORKER["data"] = load_data(
        DataConfig.from_dict({"name": "fashion_mnist", "train_limit": args.train_limit}), "cpu"
    )


def _run_task(task: tuple[str, str, int]) -> dict:
    variant, method, seed = task
    return run_one(variant, method, seed, _WORKER["data"], _WORKER["args"])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paired(a: list[dict], b: list[dict]) -> str:
    """Mean of the per-seed differences a - b in test points, with its 95 % t-interval."""
    diffs = [100 * (x["test_accuracy"] - y["test_accuracy"]) for x, y in zip(a, b)]
    mean, std = _mean_std(diffs)
    half = T_975.get(len(diffs), 1.96) * std / len(diffs) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def report(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace, total: float) -> str:
    """The Markdown page: accuracy and time per method, the paired differences, the curves."""
    tested = ("the full 10,000-image test set" if args.test_limit >= 10000
              else f"the first {args.test_limit:,} test images")
    lines = [
        "# Coarse-to-fine against from-scratch training (Fashion-MNIST), paired over seeds",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
        f"benchmarks/multilevel.py {' '.join(args.argv)}` (torch {torch.__version__}, one "
        f"thread per run, {args.jobs} run(s) at a time, {os.cpu_count()} cores shared with "
        f"other work, {platform.machine()} CPU, float32).",
        "",
        f"Data: Fashion-MNIST 28x28, a fixed subset of {args.train_limit} training images "
        f"(80 % train, 20 % validation), {tested}. Network: "
        f"{len(args.widths) - 1} units of {args.depth} steps, widths "
        f"{'-'.join(map(str, args.widths))}, h = {args.time / args.depth:g} "
        f"(T = {args.time:g} per unit), TV norm, ReLU. Training: SGD lr 0.05 momentum 0.9, "
        f"batch 64, cosine over the run's epochs ({args.epochs}; scratch-short "
        f"{args.epochs // 2}), weight clipping 1, time smoothness 2e-4 (its default, "
        f"h-consistent form), no augmentation. Coarse-to-fine: {args.levels} levels, factor 2, "
        f"epoch shares {args.shares or 'equal'}. Seeds: {', '.join(map(str, args.seeds))}. "
        "Layout, seeds and methods fixed before the run (the module docstring).",
        "",
        "Test accuracy of the best-validation weights at the final depth (mean ± std over "
        "seeds); seconds: training time (mean over seeds).",
        "",
        "| variant | method | test accuracy | seconds | time / scratch |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        base_sec = statistics.fmean(r["seconds"] for r in runs[variant, "scratch"])
        for method in methods(variant):
            acc, std = _mean_std([r["test_accuracy"] for r in runs[variant, method]])
            sec = statistics.fmean(r["seconds"] for r in runs[variant, method])
            lines.append(f"| {variant} | {method} | {100 * acc:.1f} ± {100 * std:.1f} % | "
                         f"{sec:.0f} | {sec / base_sec:.2f} |")
    lines += [
        "",
        "## Paired differences (test points, mean over seeds [95 % t-interval])",
        "",
        "| variant | coarse-to-fine - scratch | coarse-to-fine - scratch-short (same computation) |",
        "|---|---|---|",
    ]
    for variant in VARIANTS:
        c2f = runs[variant, "coarse-to-fine"]
        short = (_paired(c2f, runs[variant, "scratch-short"])
                 if (variant, "scratch-short") in runs else "not run")
        lines.append(f"| {variant} | {_paired(c2f, runs[variant, 'scratch'])} | {short} |")
    lines += [
        "",
        "## The half-step start (second_order_half - second_order, same seeds)",
        "",
        "| method | test points [95 % t-interval] |",
        "|---|---|",
    ]
    for method in METHODS[:2]:
        lines.append(f"| {method} | {_paired(runs[HALF, method], runs['second_order', method])} |")
    lines += [
        "",
        "## Validation accuracy against training seconds",
        "",
        "Mean over seeds after each epoch: cumulative seconds / validation accuracy (%). The "
        "coarse-to-fine curve's early epochs are the coarse levels.",
        "",
        "| variant | method | " + " | ".join(f"epoch {e}" for e in range(1, args.epochs + 1)) + " |",
        "|---|---|" + "---|" * args.epochs,
    ]
    for variant in VARIANTS:
        for method in methods(variant):
            curves = [r["curve"] for r in runs[variant, method]]
            cells = []
            for epoch in range(args.epochs):
                if epoch >= len(curves[0]):
                    cells.append("")
                    continue
                sec = statistics.fmean(c[epoch][0] for c in curves)
                acc = statistics.fmean(c[epoch][1] for c in curves)
                cells.append(f"{sec:.0f} s / {100 * acc:.1f}")
            lines.append(f"| {variant} | {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Total time {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--test-limit", type=int, default=5000)
    parser.add_argument("--depth", type=int, default=4, help="final steps per unit")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 32],
                        help="channels of the opening and after each unit (units: one fewer)")
    parser.add_argument("--time", type=float, default=1.0, help="T = depth * h per unit")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--shares", type=float, nargs="*", default=[0.5, 0.25, 0.25],
                        help="epoch share per level, coarsest first (none given: equal)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.shares = args.shares or None
    start = time.perf_counter()
    tasks = [(v, m, s) for s in args.seeds for v in VARIANTS for m in methods(v)]
    runs: dict[tuple[str, str], list[dict]] = {(v, m): [] for v in VARIANTS for m in methods(v)}
    with concurrent.futures.ProcessPoolExecutor(
        args.jobs, initializer=_start_worker, initargs=(args,)
    ) as pool:
        # map keeps the order of tasks, so each list of runs is in seed order.
        for (variant, method, seed), run in zip(tasks, pool.map(_run_task, tasks)):
            runs[variant, method].append(run)
            print(f"seed {seed} {variant:17s} {method:15s} test {run['test_accuracy']:.3f} "
                  f"{run['seconds']:.0f} s", flush=True)
    text = report(runs, args, time.perf_counter() - start)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
