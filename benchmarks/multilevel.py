"""Coarse-to-fine against from-scratch training on Fashion-MNIST, per PDE family.

For each PDE family (parabolic, hamiltonian, second_order) one network at a fixed final depth
(3 units of 8 steps, widths 8-16-32-32, h = 0.25, TV norm, ReLU) is trained

* from scratch at the final depth for all epochs, and
* coarse-to-fine (``TrainConfig.multilevel``: 3 levels, factor 2, so 2 -> 4 -> 8 steps per unit
  at h = 1 -> 0.5 -> 0.25, each unit over the same time T = 2), with the same epochs, the same
  cosine schedule over all of them and the same initialisation (the coarse start takes every
  fourth step's weights),

with 3 seeds each (the seed sets the initialisation and the batch order; the data subset is
fixed). The default epoch shares of the levels are 50 / 25 / 25 % (``--shares``; none given:
equal). Reported: test accuracy (on the first ``--test-limit`` test images) of the
best-validation weights at the final depth, and the training seconds (``FitResult.seconds``:
every epoch with its validation pass, and the resampling between levels; the final test
evaluation is not counted). Runs are interleaved, family by family and seed by seed, so both
methods see the same load on a shared machine; with ``--jobs 2`` two runs at a time, each on
one thread, in task order (so every run but the last shares the machine with one other run).

The target (issue 15): coarse-to-fine reaches the from-scratch final accuracy (mean within one
standard deviation over seeds of the from-scratch mean) in at most 70 % of the from-scratch
time, for at least two of the three families.

Run from the repository root: ``OMP_NUM_THREADS=1 python benchmarks/multilevel.py --jobs 2``
(about 20 minutes on 2 cores); it prints the tables and writes them to
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

__all__ = ["FAMILIES", "run_one", "main"]

FAMILIES = ("parabolic", "hamiltonian", "second_order")
METHODS = ("scratch", "coarse-to-fine")


def run_one(family: str, method: str, seed: int, data: Any, args: argparse.Namespace) -> dict:
    """Trains one network; returns its test accuracy, seconds and validation curve."""
    torch.manual_seed(seed)
    arch = Architecture(
        family=family, widths=tuple(args.widths), depths=(args.depth,) * (len(args.widths) - 1),
        step_size=args.time / args.depth, in_channels=data.in_channels,
        num_classes=data.num_classes,
    )
    model = build_model(arch)
    train = {"epochs": args.epochs, "batch_size": 64, "lr": 0.05, "schedule": "cosine",
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
    family, method, seed = task
    return run_one(family, method, seed, _WORKER["data"], _WORKER["args"])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace, total: float) -> str:
    """The Markdown page: the accuracy/time table, the target's verdict and the curves."""
    tested = ("the full 10,000-image test set" if args.test_limit >= 10000
              else f"the first {args.test_limit:,} test images")
    lines = [
        "# Coarse-to-fine against from-scratch training (Fashion-MNIST)",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
        f"benchmarks/multilevel.py {' '.join(args.argv)}` (torch {torch.__version__}, one "
        f"thread per run, {args.jobs} run(s) at a time, {os.cpu_count()} cores, "
        f"{platform.machine()} CPU, float32).",
        "",
        f"Data: Fashion-MNIST 28x28, a fixed subset of {args.train_limit} training images "
        f"(80 % train, 20 % validation), {tested}. Network: "
        f"{len(args.widths) - 1} units of {args.depth} steps, widths "
        f"{'-'.join(map(str, args.widths))}, h = {args.time / args.depth:g} "
        f"(T = {args.time:g} per unit), TV norm, ReLU. Training: SGD lr 0.05 momentum 0.9, "
        f"batch 64, cosine over {args.epochs} epochs, weight clipping 1, time smoothness 2e-4, "
        f"no augmentation. Coarse-to-fine: {args.levels} levels, factor 2, epoch shares "
        f"{args.shares or 'equal'}. Seeds: {', '.join(map(str, args.seeds))}.",
        "",
        "Test accuracy of the best-validation weights at the final depth (mean ± std over "
        "seeds); seconds: training time (all epochs with their validation passes, and the "
        "resampling between levels). Reaches: the coarse-to-fine mean is at least the "
        "from-scratch mean minus one from-scratch std.",
        "",
        "| family | method | test accuracy | seconds | time / scratch | reaches | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    met = 0
    for family in FAMILIES:
        base_acc, base_std = _mean_std([r["test_accuracy"] for r in runs[family, "scratch"]])
        base_sec = statistics.fmean(r["seconds"] for r in runs[family, "scratch"])
        for method in METHODS:
            acc, std = _mean_std([r["test_accuracy"] for r in runs[family, method]])
            sec = statistics.fmean(r["seconds"] for r in runs[family, method])
            if method == "scratch":
                lines.append(f"| {family} | {method} | {100 * acc:.1f} ± {100 * std:.1f} % | "
                             f"{sec:.0f} | 1.00 | | |")
                continue
            reaches = acc >= base_acc - base_std
            ok = reaches and sec <= 0.7 * base_sec
            met += ok
            lines.append(
                f"| {family} | {method} | {100 * acc:.1f} ± {100 * std:.1f} % | {sec:.0f} | "
                f"{sec / base_sec:.2f} | {'yes' if reaches else 'no'} | "
                f"{'yes' if ok else 'no'} |"
            )
    lines += [
        "",
        f"Target (at least two of three families): **{'met' if met >= 2 else 'not met'}** "
        f"({met} of 3).",
        "",
        "## Validation accuracy against training seconds",
        "",
        "Mean over seeds after each epoch: cumulative seconds / validation accuracy (%). The "
        "coarse-to-fine curve's early epochs are the coarse levels.",
        "",
        "| family | method | " + " | ".join(f"epoch {e}" for e in range(1, args.epochs + 1)) + " |",
        "|---|---|" + "---|" * args.epochs,
    ]
    for family in FAMILIES:
        for method in METHODS:
            curves = [r["curve"] for r in runs[family, method]]
            cells = []
            for epoch in range(args.epochs):
                sec = statistics.fmean(c[epoch][0] for c in curves)
                acc = statistics.fmean(c[epoch][1] for c in curves)
                cells.append(f"{sec:.0f} s / {100 * acc:.1f}")
            lines.append(f"| {family} | {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Total time {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--test-limit", type=int, default=10000)
    parser.add_argument("--depth", type=int, default=8, help="final steps per unit")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 32],
                        help="channels of the opening and after each unit (units: one fewer)")
    parser.add_argument("--time", type=float, default=2.0, help="T = depth * h per unit")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--shares", type=float, nargs="*", default=[0.5, 0.25, 0.25],
                        help="epoch share per level, coarsest first (none given: equal)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.shares = args.shares or None
    start = time.perf_counter()
    tasks = [(f, m, s) for s in args.seeds for f in FAMILIES for m in METHODS]
    runs: dict[tuple[str, str], list[dict]] = {(f, m): [] for f in FAMILIES for m in METHODS}
    with concurrent.futures.ProcessPoolExecutor(
        args.jobs, initializer=_start_worker, initargs=(args,)
    ) as pool:
        # map keeps the order of tasks, so each list of runs is in seed order.
        for (family, method, seed), run in zip(tasks, pool.map(_run_task, tasks)):
            runs[family, method].append(run)
            print(f"seed {seed} {family:13s} {method:15s} test {run['test_accuracy']:.3f} "
                  f"{run['seconds']:.0f} s", flush=True)
    text = report(runs, args, time.perf_counter() - start)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
