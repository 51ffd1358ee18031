"""Does a stability screen predict which candidates diverge? The new estimate against the old bound.

Random candidates from the shipped ``all_families`` space (RandomSampler), on a small
Fashion-MNIST subset, each: initialised (seed = candidate number), screened before training by
``stability_report(model, images)`` at 4 real training images, then trained for 2 epochs with
``pdenas.train.fit`` and the candidate's own training settings. A candidate *diverged* when
``fit`` raised ``Diverged`` (a non-finite training or validation loss). Two screens:

- new: the spectral radius of every unit's linearised time steps at its real inputs
  (``stable``: all radii <= 1 + RADIUS_TOLERANCE);
- old: ``h <= max_stable_step``, the ``||K||`` bound that ignores the normalisation's Jacobian
  (``bound_stable``).

To finish in minutes on one CPU thread, the space is capped (widths base 8 or 16, at most 3 units).
The shipped settings hardly ever diverge (a first run of 100 candidates at h <= 4, SGD lr <= 0.3
and weights clipped to [-1, 1] had none), which leaves the screens' recall unmeasurable. So by
default (``--regime harsh``) the candidates are pushed to where divergence happens: up to 6 steps
per unit, h drawn from [0.05, 8] (log), no weight clipping, and the SGD learning rate drawn from
[0.01, 3] (log) instead of the space's. ``--regime shipped`` keeps the space's lr, clipping and
at most 3 steps with h in [0.05, 4]. Everything else is the shipped space (families, activations,
norms, weight decay, label smoothing, reversible).

Run: OMP_NUM_THREADS=1 python benchmarks/stability.py [--candidates 64] [--regime harsh|shipped] | tee benchmarks/stability.md
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import optuna
import torch

from pdenas import build_model
from pdenas.data import DataConfig, load_data
from pdenas.families import stability_report
from pdenas.space import SearchSpace
from pdenas.train import Diverged, TrainConfig, fit


def _space(harsh: bool) -> SearchSpace:
    data = SearchSpace.load("all_families").to_dict()
    data["width"] = {**data["width"], "base": [8, 16]}
    data["num_units"] = {"low": 2, "high": 3}
    data["depth"] = {"low": 1, "high": 6 if harsh else 3}
    data["step_size"] = {"low": 0.05, "high": 8.0 if harsh else 4.0, "log": True}
    return SearchSpace.from_dict(data, name="all_families_capped")


def _screen_table(rows: list[dict], key: str) -> list[str]:
    tp = sum(1 for r in rows if not r[key] and r["diverged"])
    fp = sum(1 for r in rows if not r[key] and not r["diverged"])
    fn = sum(1 for r in rows if r[key] and r["diverged"])
    tn = sum(1 for r in rows if r[key] and not r["diverged"])
    diverged, trained = tp + fn, fp + tn
    flagged = tp + fp

    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.0f} % ({a}/{b})" if b else "n/a (0/0)"

    return [f"| {key} | {flagged} | {pct(tp, diverged)} | {pct(tp, flagged)} | {pct(fp, trained)} |"
            f" {pct(tp + tn, len(rows))} |"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=1250)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--regime", choices=("harsh", "shipped"), default="harsh")
    args = parser.parse_args()
    harsh = args.regime == "harsh"
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_data(DataConfig(name="fashion_mnist", train_limit=args.train_limit, seed=0), "cpu")
    space = _space(harsh)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    images = data.train.x[:4]
    print("# Stability screens against divergence: Fashion-MNIST, random all_families candidates\n")
    print(f"{args.candidates} candidates; {len(data.train)} training / {len(data.val)} validation "
          f"images (28x28); {args.epochs} epochs each; 1 CPU thread; torch {torch.__version__}.")
    if harsh:
        print("Regime harsh: all_families capped to widths base 8/16, 2-3 units, 1-6 steps; h in "
              "[0.05, 8] (log); no weight clipping; SGD lr in [0.01, 3] (log).\n")
    else:
        print("Regime shipped: all_families capped to widths base 8/16, 2-3 units, 1-3 steps; h in "
              "[0.05, 4] (log; the shipped space stops at 1.5).\n")
    print("| # | family | norm | act | h | lr | radius (max over units) | old bound h_max |"
          " new stable | old stable | outcome | val acc | screen s | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for number in range(args.candidates):
        trial = study.ask()
        arch, train = space.suggest(trial, in_channels=data.in_channels,
                                    num_classes=data.num_classes, image_size=28)
        harsh_settings = ({"lr": trial.suggest_float("harsh_lr", 0.01, 3.0, log=True),
                           "clip_weights": None} if harsh else {})
        train = TrainConfig.from_dict({**train.to_dict(), "epochs": args.epochs, "batch_size": 64,
                                       **harsh_settings})
        torch.manual_seed(number)
        model = build_model(arch)
        start = time.perf_counter()
        report = stability_report(model, images)
        screen_s = time.perf_counter() - start
        radius = max(r["spectral_radius"] for r in report)
        bound = min(r["max_stable_step"] for r in report)
        row = {
            "family": arch.family, "norm": arch.norm, "h": arch.step_size,
            "stable": all(r["stable"] for r in report),
            "bound_stable": all(r["bound_stable"] for r in report),
            "radius": radius,
        }
        start = time.perf_counter()
        try:
            result = fit(model, data, train, "cpu", seed=number)
            row["diverged"], outcome, acc = False, "trained", f"{result.best_val_accuracy:.3f}"
        except Diverged as failure:
            row["diverged"], outcome, acc = True, failure.reason.replace("|", "/"), "-"
        train_s = time.perf_counter() - start
        study.tell(trial, 0.0)
        rows.append(row)
        print(f"| {number} | {arch.family} | {arch.norm} | {arch.activation} | {arch.step_size:.3g} |"
              f" {train.lr:.2g} | {radius:.3g} | {bound:.3g} | {row['stable']} |"
              f" {row['bound_stable']} | {outcome} | {acc} | {screen_s:.1f} | {train_s:.1f} |",
              flush=True)

    diverged = sum(r["diverged"] for r in rows)
    print(f"\n{diverged} of {len(rows)} candidates diverged.\n")
    print("## How well each screen predicts divergence\n")
    print("'flagged' = the screen calls the candidate unstable (it would be refused). Recall: of "
          "the candidates that diverged, how many were flagged; precision: of the flagged, how "
          "many diverged; false refusals: of the candidates that trained, how many were flagged.\n")
    print("| screen | flagged | recall (diverged and flagged) | precision | false refusals |"
          " accuracy |")
    print("|---|---|---|---|---|---|")
    for line in (_screen_table(rows, "stable") + _screen_table(rows, "bound_stable")):
        print(line.replace("| stable |", "| new: radius <= 1.05 |")
              .replace("| bound_stable |", "| old: h <= max_stable_step |"))
    print("\nOther radius thresholds, for reference only (chosen after seeing these results, so "
          "not a validated screen):\n")
    print("| screen | flagged | recall (diverged and flagged) | precision | false refusals |"
          " accuracy |")
    print("|---|---|---|---|---|---|")
    for threshold in (2.0, 5.0, 10.0, 30.0, 100.0):
        for r in rows:
            r["below"] = r["radius"] <= threshold
        print(_screen_table(rows, "below")[0].replace("| below |", f"| radius <= {threshold:g} |"))
    print("\n## By family (diverged / candidates; flagged by new / old)\n")
    print("| family | diverged | new flags | old flags |")
    print("|---|---|---|---|")
    for family in sorted(Counter(r["family"] for r in rows)):
        sub = [r for r in rows if r["family"] == family]
        print(f"| {family} | {sum(r['diverged'] for r in sub)} / {len(sub)} |"
              f" {sum(not r['stable'] for r in sub)} | {sum(not r['bound_stable'] for r in sub)} |")
    finite = [r["radius"] for r in rows if math.isfinite(r["radius"])]
    print(f"\nRadius range over the candidates: {min(finite):.3g} .. {max(finite):.3g}.")


if __name__ == "__main__":
    main()
