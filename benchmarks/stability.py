"""Does a stability measure predict which candidates diverge or fail to learn? The gain against
the one-step radius and the old ||K|| bound.

Random candidates from the shipped ``all_families`` space (RandomSampler), on a small
Fashion-MNIST subset, each: initialised (seed = candidate number), measured before training by
``stability_report(model, images)`` at 4 real training images, then trained for 2 epochs with
``pdenas.train.fit`` and the candidate's own training settings. Two outcomes: *diverged*, when
``fit`` raised ``Diverged`` (a non-finite training or validation loss); and *failed*, diverged or
a best validation accuracy of at most 15 % (chance is 10 %). Three measures, each as a screen
with a threshold fixed before the run, and as a score (ROC AUC: the chance that a candidate with
the outcome scores higher than one without; 0.5 is no information):

- gain: the largest over the units of ``gain``, the largest singular value of
  d(unit output)/d(unit input) at the unit's real inputs; screen ``gain <= 10``;
- radius: the largest spectral radius of one linearised time step (the diagnostic that the
  study's ``stability.radius`` screen uses); screen ``radius <= 1.05``;
- old: ``h <= max_stable_step``, the ``||K||`` bound that ignores the normalisation's Jacobian;
  score ``h / max_stable_step``.

To finish in minutes on one CPU thread, the space is capped (widths base 8 or 16, at most 3 units).
The shipped settings hardly ever diverge (a first run of 100 candidates at h <= 4, SGD lr <= 0.3
and weights clipped to [-1, 1] had none), which leaves a screen's recall unmeasurable. So by
default (``--regime harsh``) the candidates are pushed to where divergence happens: up to 6 steps
per unit, h drawn from [0.05, 8] (log), no weight clipping, and the SGD learning rate drawn from
[0.01, 3] (log) instead of the space's. ``--regime shipped`` keeps the space's lr, clipping and
at most 3 steps with h in [0.05, 4]. Everything else is the shipped space (families, activations,
norms, weight decay, label smoothing, reversible).

Run: OMP_NUM_THREADS=1 python benchmarks/stability.py [--candidates 60] [--regime harsh|shipped] | tee benchmarks/stability.md
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


GAIN_SCREEN = 10.0
"""The gain screen's threshold, fixed before the run: a unit that can amplify a perturbation of
its input more than 10-fold is called unstable."""
RADIUS_SCREEN = 1.05
"""The radius screen's threshold: the study's ``stability.radius`` default."""
FAILED_ACCURACY = 0.15


def _screen_table(rows: list[dict], key: str, outcome: str) -> str:
    """One row: ``key`` False means flagged (would be refused)."""
    tp = sum(1 for r in rows if not r[key] and r[outcome])
    fp = sum(1 for r in rows if not r[key] and not r[outcome])
    fn = sum(1 for r in rows if r[key] and r[outcome])
    tn = sum(1 for r in rows if r[key] and not r[outcome])
    positives, negatives = tp + fn, fp + tn
    flagged = tp + fp

    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.0f} % ({a}/{b})" if b else "n/a (0/0)"

    return (f"| {key} | {flagged} | {pct(tp, positives)} | {pct(tp, flagged)} | {pct(fp, negatives)} |"
            f" {pct(tp + tn, len(rows))} |")


def _auc(rows: list[dict], score: str, outcome: str) -> str:
    """ROC AUC of ``score`` for ``outcome`` (ties count one half; non-finite scores rank highest)."""
    def value(r: dict) -> float:
        return r[score] if math.isfinite(r[score]) else math.inf

    pos = [value(r) for r in rows if r[outcome]]
    neg = [value(r) for r in rows if not r[outcome]]
    if not pos or not neg:
        return "n/a"
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return f"{wins / (len(pos) * len(neg)):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=60)
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
    began = time.perf_counter()
    print("# Stability measures against divergence: Fashion-MNIST, random all_families candidates\n")
    print(f"{args.candidates} candidates; {len(data.train)} training / {len(data.val)} validation "
          f"images (28x28); {args.epochs} epochs each; 1 CPU thread; torch {torch.__version__}.")
    if harsh:
        print("Regime harsh: all_families capped to widths base 8/16, 2-3 units, 1-6 steps; h in "
              "[0.05, 8] (log); no weight clipping; SGD lr in [0.01, 3] (log).\n")
    else:
        print("Regime shipped: all_families capped to widths base 8/16, 2-3 units, 1-3 steps; h in "
              "[0.05, 4] (log; the shipped space stops at 1.5).\n")
    print("| # | family | norm | act | h | lr | gain (max over units) | radius (max over units) |"
          " old bound h_max | outcome | val acc | measure s | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
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
        measure_s = time.perf_counter() - start
        gain = max(r["gain"] for r in report)
        radius = max(r["spectral_radius"] for r in report)
        bound = min(unit.max_stable_step() for unit in model.units)
        row = {"family": arch.family, "norm": arch.norm, "h": arch.step_size, "gain": gain,
               "radius": radius, "bound_ratio": arch.step_size / bound,
               "gain_ok": gain <= GAIN_SCREEN, "radius_ok": radius <= RADIUS_SCREEN,
               "bound_ok": arch.step_size <= bound}
        start = time.perf_counter()
        try:
            result = fit(model, data, train, "cpu", seed=number)
            accuracy = result.best_val_accuracy
            row["diverged"], outcome, acc = False, "trained", f"{accuracy:.3f}"
        except Diverged as failure:
            accuracy = math.nan
            row["diverged"], outcome, acc = True, failure.reason.replace("|", "/"), "-"
        row["failed"] = row["diverged"] or accuracy <= FAILED_ACCURACY
        train_s = time.perf_counter() - start
        study.tell(trial, 0.0)
        rows.append(row)
        print(f"| {number} | {arch.family} | {arch.norm} | {arch.activation} | {arch.step_size:.3g} |"
              f" {train.lr:.2g} | {gain:.3g} | {radius:.3g} | {bound:.3g} | {outcome} | {acc} |"
              f" {measure_s:.1f} | {train_s:.1f} |", flush=True)

    diverged = sum(r["diverged"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    print(f"\n{diverged} of {len(rows)} candidates diverged; {failed} failed (diverged, or best "
          f"validation accuracy <= {FAILED_ACCURACY:.0%}).\n")
    names = {"gain_ok": f"gain <= {GAIN_SCREEN:g}", "radius_ok": f"radius <= {RADIUS_SCREEN:g}",
             "bound_ok": "old: h <= max_stable_step"}
    for outcome, words in (("diverged", "diverged"), ("failed", "failed")):
        print(f"## How well each screen predicts that a candidate {words}\n")
        print("'flagged' = the screen calls the candidate unstable (it would be refused). Recall: "
              f"of the candidates that {words}, how many were flagged; precision: of the flagged, "
              f"how many {words}; false refusals: of the others, how many were flagged.\n")
        print("| screen | flagged | recall | precision | false refusals | accuracy |")
        print("|---|---|---|---|---|---|")
        for key, name in names.items():
            print(_screen_table(rows, key, outcome).replace(f"| {key} |", f"| {name} |", 1))
        print(f"\nAs scores (ROC AUC for '{words}'; 0.5 = no information): gain "
              f"{_auc(rows, 'gain', outcome)}, radius {_auc(rows, 'radius', outcome)}, "
              f"h / max_stable_step {_auc(rows, 'bound_ratio', outcome)}.\n")
    print("Other gain thresholds, for reference only (not a validated screen):\n")
    print("| screen | flagged | recall (failed) | precision | false refusals | accuracy |")
    print("|---|---|---|---|---|---|")
    for threshold in (3.0, 30.0, 100.0, 1000.0):
        for r in rows:
            r["below"] = r["gain"] <= threshold
        print(_screen_table(rows, "below", "failed").replace("| below |",
                                                              f"| gain <= {threshold:g} |"))
    print("\n## By family (diverged / failed / candidates; flagged by gain / radius / old)\n")
    print("| family | diverged | failed | candidates | gain flags | radius flags | old flags |")
    print("|---|---|---|---|---|---|---|")
    for family in sorted(Counter(r["family"] for r in rows)):
        sub = [r for r in rows if r["family"] == family]
        print(f"| {family} | {sum(r['diverged'] for r in sub)} | {sum(r['failed'] for r in sub)} |"
              f" {len(sub)} | {sum(not r['gain_ok'] for r in sub)} |"
              f" {sum(not r['radius_ok'] for r in sub)} | {sum(not r['bound_ok'] for r in sub)} |")
    for key in ("gain", "radius"):
        finite = [r[key] for r in rows if math.isfinite(r[key])]
        print(f"\n{key} range over the candidates: {min(finite):.3g} .. {max(finite):.3g}.", end="")
    print(f"\n\nTotal time {(time.perf_counter() - began) / 60:.1f} min.")


if __name__ == "__main__":
    main()
