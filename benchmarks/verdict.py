"""Calibration of ``pdenas compare --verdict``: how often it declares a difference where there is
none (null rate), and how often it finds a family that is worse on purpose (power).

The task: scikit-learn's 8x8 digits (1,150 train, 287 validation, 360 test images), small
networks: 2 units, widths 4 or 8, 1-2 steps per unit, h in [0.2, 1], AdamW, 3 epochs, random
crops. One run is what a user does: a search (each family trains 3 architectures drawn from the
space by its own random stream, with the run's seed, and keeps the best on validation), then the
verdict on their candidates (``run_verdict``: by default all 3 trials of each family, so the
bootstrap redraws the search too; paired seeds, looks at 3 and then 4 seeds,
alpha 0.05 split over the looks and Holm over the pairs, margin 0.5 points). A run "declares a
difference" when any pair is declared different.

- null: ``parabolic`` against ``parabolic_twin``, the same unit class registered a second time
  under another name; the two families' searches draw their architectures independently, as two
  families would.
- power: ``parabolic`` against ``parabolic_half``, the same unit registered again, whose
  candidates get half the width (widths 2 or 4).

Prints one line per run and a summary (rates with Wilson 95 % intervals); the output is
``verdict.md``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/verdict.py --runs 40 [--power-runs 20] [--kind null|power|both]
        [--candidates K] [--search-trials N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from pdenas.architecture import Architecture
from pdenas.compare import Candidate, VerdictOptions, run_verdict
from pdenas.data import DataConfig, load_data
from pdenas.families import register_family
from pdenas.families.parabolic import ParabolicUnit
from pdenas.network import build_model
from pdenas.train import TrainConfig, fit

TRAIN = TrainConfig(epochs=3, batch_size=64, optimizer="adamw", lr=0.01, weight_decay=1e-4,
                    time_smoothness=0.0, augment=True, clip_weights=1.0)
SEARCH_TRIALS = 3
OPTIONS = VerdictOptions(min_seeds=3, max_seeds=4, n_boot=1000)


def draw(rng: np.random.Generator, family: str, half: bool) -> Architecture:
    """One architecture from the small space (half the width for the handicapped family)."""
    width = int(rng.choice([4, 8])) // (2 if half else 1)
    return Architecture(family=family, widths=(width, width, width),
                        depths=tuple(int(d) for d in rng.integers(1, 3, 2)),
                        step_size=float(np.exp(rng.uniform(np.log(0.2), np.log(1.0)))),
                        in_channels=1, num_classes=10)


def search(family: str, run: int, stream: int, data, keep: int, half: bool = False,
           trials: int = SEARCH_TRIALS) -> list[Candidate]:
    """The family's search: ``trials`` architectures, each trained once; its ``keep`` best on
    validation are its candidates."""
    rng = np.random.default_rng([run, stream])
    found = []
    for t in range(trials):
        arch = draw(rng, family, half)
        seed = 1000 * run + 10 * stream + t
        torch.manual_seed(seed)
        result = fit(build_model(arch), data, TRAIN, "cpu", seed=seed)
        found.append(Candidate(family=family, trial=t, architecture=arch, train=TRAIN,
                               search_val=float(result.best_val_accuracy)))
    return sorted(found, key=lambda c: -c.search_val)[:keep]


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a rate k / n."""
    z = 1.959964
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs of the null")
    parser.add_argument("--power-runs", type=int, help="runs of the power (default: --runs)")
    parser.add_argument("--kind", choices=("null", "power", "both"), default="both")
    parser.add_argument("--search-trials", type=int, default=SEARCH_TRIALS,
                        help="architectures each family's search trains")
    parser.add_argument("--candidates", type=int,
                        help="candidates per family (default: every search trial, so the "
                             "verdict redraws the whole search; 1: only the selected network)")
    args = parser.parse_args()
    args.candidates = args.candidates or args.search_trials
    torch.set_num_threads(1)
    register_family("parabolic_twin")(type("TwinUnit", (ParabolicUnit,), {}))
    register_family("parabolic_half")(type("HalfUnit", (ParabolicUnit,), {}))
    options = VerdictOptions(candidates=args.candidates, min_seeds=OPTIONS.min_seeds,
                             max_seeds=OPTIONS.max_seeds, n_boot=OPTIONS.n_boot)
    data = load_data(DataConfig(name="digits", val_fraction=0.2), device="cpu")
    print(f"digits: {len(data.train.y)} train, {len(data.val.y)} validation, {len(data.test.y)} test; "
          f"{args.search_trials} search trials per family, {TRAIN.epochs} epochs; {args.candidates} "
          f"candidate(s) per family; verdict seeds "
          f"{OPTIONS.min_seeds}..{OPTIONS.max_seeds}, alpha {OPTIONS.alpha}, margin "
          f"{100 * OPTIONS.margin:g} points", flush=True)
    kinds = ("null", "power") if args.kind == "both" else (args.kind,)
    summary = []
    for kind in kinds:
        other = "parabolic_twin" if kind == "null" else "parabolic_half"
        declared, seeds, seconds, stops = 0, [], [], {}
        runs = args.runs if kind == "null" else args.power_runs or args.runs
        for run in range(runs):
            start = time.perf_counter()
            candidates = (search("parabolic", run, 0, data, args.candidates, trials=args.search_trials)
                          + search(other, run, 1, data, args.candidates, half=kind == "power",
                                   trials=args.search_trials))
            verdict = run_verdict(candidates, data, "cpu", options)
            pair = verdict.pairs.iloc[0]
            different = bool(verdict.pairs["different"].any())
            worse = different and (pair["a"] == other) == (pair["diff"] < 0)
            declared += different if kind == "null" else worse
            seeds.append(verdict.seeds)
            seconds.append(time.perf_counter() - start)
            stops[verdict.stopped] = stops.get(verdict.stopped, 0) + 1
            means = verdict.families.set_index("family")["mean"]
            print(f"{kind} run {run + 1:2d}: {other} - parabolic = "
                  f"{100 * (means[other] - means['parabolic']):+.2f} points, p_holm {pair['p_holm']:.3f}, "
                  f"{'DIFFERENT' if different else 'same'}, {verdict.seeds} seeds ({verdict.stopped}), "
                  f"{seconds[-1]:.0f} s", flush=True)
        low, high = wilson(declared, runs)
        what = "declared different (false positives)" if kind == "null" else "found the handicapped family worse"
        summary.append(f"{kind}: {declared}/{runs} runs {what} = {100 * declared / runs:.1f} % "
                       f"(Wilson 95 %: {100 * low:.1f}-{100 * high:.1f} %); seeds per run: mean "
                       f"{np.mean(seeds):.1f}; stopped: {stops}; {np.mean(seconds):.0f} s per run")
    print()
    print("\n".join(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
