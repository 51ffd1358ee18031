"""Calibration of ``pdenas compare --verdict``: how often it declares a difference where there is
none (null rate), and how often it finds a family that is worse on purpose (power).

The task: scikit-learn's 8x8 digits (1,150 train, 288 validation, 359 test images), small
networks: 2 units, widths from ``--widths`` (default 4 or 8), 1-2 steps per unit, h in [0.2, 1],
AdamW, 3 epochs, random crops. One run is what a user does: a search (each family trains 3
architectures drawn from the space by its own random stream, with the run's seed, and keeps the
best on validation), then the verdict on their candidates (``run_verdict``: by default all 3
trials of each family, so the bootstrap redraws the search too; paired seeds, each look's seeds
of a candidate trained as one stacked model; looks at ``look_schedule(--seeds, --max-seeds)``,
alpha 0.05 split over the looks and Holm over the pairs, margin 0.5 points). A run "declares a
difference" when any pair is declared different.

- null: ``parabolic`` against ``parabolic_twin``, the same unit class registered a second time
  under another name; the two families' searches draw their architectures independently, as two
  families would.
- power: ``parabolic`` against ``parabolic_half``, the same unit registered again, whose
  candidates are handicapped: half the width (``--handicap half``, the default) or a fixed tiny
  step (``--handicap tiny_step``: h = 0.02). Its draws are the twin's of the same run, handicapped.

Prints one line per run and a summary (rates with Wilson 95 % intervals); the output is
``verdict.md``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/verdict.py --runs 40 [--power-runs 20]
        [--kind null|power|both] [--candidates K] [--search-trials N] [--widths 4,8]
        [--seeds 3] [--max-seeds 4] [--handicap half|tiny_step] [--first-run R]
    python benchmarks/verdict.py --summarise OUTPUT [OUTPUT ...]   # runs split over processes
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

import numpy as np
import torch

from pdenas.architecture import Architecture
from pdenas.compare import Candidate, VerdictOptions, run_verdict
from pdenas.compare._verdict import look_schedule
from pdenas.data import DataConfig, load_data
from pdenas.families import register_family
from pdenas.families.parabolic import ParabolicUnit
from pdenas.network import build_model
from pdenas.train import TrainConfig, fit

TRAIN = TrainConfig(epochs=3, batch_size=64, optimizer="adamw", lr=0.01, weight_decay=1e-4,
                    time_smoothness=0.0, augment=True, clip_weights=1.0)
SEARCH_TRIALS = 3
OPTIONS = VerdictOptions(min_seeds=3, max_seeds=4, n_boot=1000)


TINY_STEP = 0.02
"""The handicapped family's fixed step size with ``--handicap tiny_step`` (the space's: 0.2-1)."""


def draw(rng: np.random.Generator, family: str, handicap: str | None,
         widths: tuple[int, ...] = (4, 8)) -> Architecture:
    """One architecture from the small space (the handicapped family: half the width, or a
    fixed tiny step). The same draws from ``rng`` whatever the handicap."""
    width = int(rng.choice(widths)) // (2 if handicap == "half" else 1)
    depths = tuple(int(d) for d in rng.integers(1, 3, 2))
    step = float(np.exp(rng.uniform(np.log(0.2), np.log(1.0))))
    return Architecture(family=family, widths=(width, width, width), depths=depths,
                        step_size=TINY_STEP if handicap == "tiny_step" else step,
                        in_channels=1, num_classes=10)


def search(family: str, run: int, stream: int, data, keep: int, handicap: str | None = None,
           trials: int = SEARCH_TRIALS, widths: tuple[int, ...] = (4, 8)) -> list[Candidate]:
    """The family's search: ``trials`` architectures, each trained once; its ``keep`` best on
    validation are its candidates."""
    rng = np.random.default_rng([run, stream])
    found = []
    for t in range(trials):
        arch = draw(rng, family, handicap, widths)
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


_LINE = re.compile(r"^(null|power) run +(\d+): \S+ - parabolic = ([+-][\d.]+) points, "
                   r"p_holm [\d.]+, (DIFFERENT|same), (\d+) seeds \((\w+)\), (\d+) s$")


def summary_line(kind: str, declared: int, runs: int, seeds: list[int], stops: dict[str, int],
                 seconds: list[float]) -> str:
    """The summary of one kind's runs, with the rate's Wilson interval."""
    low, high = wilson(declared, runs)
    what = ("declared different (false positives)" if kind == "null"
            else "found the handicapped family worse")
    return (f"{kind}: {declared}/{runs} runs {what} = {100 * declared / runs:.1f} % "
            f"(Wilson 95 %: {100 * low:.1f}-{100 * high:.1f} %); seeds per run: mean "
            f"{np.mean(seeds):.1f}; stopped: {stops}; {np.mean(seconds):.0f} s per run")


def summarise(paths: list[str]) -> None:
    """The summary of the run lines in the printed output of several invocations (runs split
    over processes with ``--first-run``); a run number seen twice counts once."""
    runs: dict[tuple[str, int], re.Match[str]] = {}
    for path in paths:
        for line in open(path, encoding="utf-8"):
            match = _LINE.match(line.strip())
            if match:
                runs.setdefault((match[1], int(match[2])), match)
    for kind in ("null", "power"):
        mine = [m for (k, _), m in sorted(runs.items()) if k == kind]
        if not mine:
            continue
        different = [m[4] == "DIFFERENT" for m in mine]
        declared = (sum(different) if kind == "null"
                    else sum(d and float(m[3]) < 0 for d, m in zip(different, mine)))
        stops: dict[str, int] = {}
        for m in mine:
            stops[m[6]] = stops.get(m[6], 0) + 1
        numbers = [int(m[2]) for m in mine]
        print(f"{kind} runs {min(numbers)}-{max(numbers)} ({len(mine)} runs)")
        print(summary_line(kind, declared, len(mine), [int(m[5]) for m in mine], stops,
                           [float(m[7]) for m in mine]))


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
    parser.add_argument("--seeds", type=int, default=OPTIONS.min_seeds,
                        help="seeds of the verdict's first look")
    parser.add_argument("--max-seeds", type=int, default=OPTIONS.max_seeds,
                        help="the verdict's budget in seeds")
    parser.add_argument("--widths", default="4,8",
                        help="the space's widths, comma-separated (the handicapped family: half)")
    parser.add_argument("--handicap", choices=("half", "tiny_step"), default="half",
                        help="the power's handicap: half the width, or a fixed step of "
                             f"{TINY_STEP}")
    parser.add_argument("--first-run", type=int, default=0,
                        help="the first run's number (runs are seeded by their numbers)")
    parser.add_argument("--summarise", nargs="+", metavar="OUTPUT",
                        help="print the summary of the run lines in these saved outputs "
                             "(runs split over processes) and exit")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    args.candidates = args.candidates or args.search_trials
    widths = tuple(int(w) for w in args.widths.split(","))
    torch.set_num_threads(1)
    register_family("parabolic_twin")(type("TwinUnit", (ParabolicUnit,), {}))
    register_family("parabolic_half")(type("HalfUnit", (ParabolicUnit,), {}))
    options = VerdictOptions(candidates=args.candidates, min_seeds=args.seeds,
                             max_seeds=args.max_seeds, n_boot=OPTIONS.n_boot)
    data = load_data(DataConfig(name="digits", val_fraction=0.2), device="cpu")
    handicap = ("half the width" if args.handicap == "half"
                else f"a fixed step of {TINY_STEP}")
    print(f"digits: {len(data.train.y)} train, {len(data.val.y)} validation, "
          f"{len(data.test.y)} test; widths {'/'.join(map(str, widths))}; "
          f"{args.search_trials} search trials per family, "
          f"{TRAIN.epochs} epochs; {args.candidates} candidate(s) per family; verdict seeds "
          f"{args.seeds}..{args.max_seeds} (looks at "
          f"{', '.join(map(str, look_schedule(args.seeds, args.max_seeds)))}), stacked; alpha "
          f"{OPTIONS.alpha}, margin {100 * OPTIONS.margin:g} points; power's handicap: {handicap}",
          flush=True)
    kinds = ("null", "power") if args.kind == "both" else (args.kind,)
    summary = []
    for kind in kinds:
        other = "parabolic_twin" if kind == "null" else "parabolic_half"
        declared, seeds, seconds, stops = 0, [], [], {}
        runs = args.runs if kind == "null" else args.power_runs or args.runs
        for run in range(args.first_run, args.first_run + runs):
            start = time.perf_counter()
            candidates = (search("parabolic", run, 0, data, args.candidates,
                                 trials=args.search_trials, widths=widths)
                          + search(other, run, 1, data, args.candidates,
                                   handicap=args.handicap if kind == "power" else None,
                                   trials=args.search_trials, widths=widths))
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
                  f"{100 * (means[other] - means['parabolic']):+.2f} points, "
                  f"p_holm {pair['p_holm']:.3f}, {'DIFFERENT' if different else 'same'}, "
                  f"{verdict.seeds} seeds ({verdict.stopped}), "
                  f"{seconds[-1]:.0f} s", flush=True)
        summary.append(summary_line(kind, declared, runs, seeds, stops, seconds))
    print()
    print("\n".join(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
