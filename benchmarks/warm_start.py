"""A search with warm starts against the same search without, in one wall-clock budget.

Two ``pdenas search`` runs side by side, each in its own process on one torch thread, for the same
number of minutes, with the same study except ``warm_start``: Fashion-MNIST (Debian's files),
6,000 images of the official training set (4,800 train, 1,200 validation), 4 epochs a trial,
TPE with median pruning, the three PDE families at fixed widths 16-16-16 (2 units, TV norm,
ReLU) with depth 1-6 steps per unit and h in [0.1, 1] searched. Fixed widths make a deeper
candidate often match a finished shallower one (same family, widths, norm and activation), so
warm starts happen; the point is whether a deeper candidate that starts from a shallower trial's
weights, resampled in time, ends better within the same epochs.

Reported per side: trials trained, how many started warm, the best validation accuracy and when
it was first reached, and the mean final validation accuracy of the candidates of 3 or more steps
per unit (warm and cold ones separately). Usage::

    OMP_NUM_THREADS=1 python benchmarks/warm_start.py [--minutes 10] [--out benchmarks/warm_start.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "description": "PDE families at fixed widths 16-16-16, depth and h searched (warm-start benchmark)",
    "families": ["parabolic", "hamiltonian", "second_order"],
    "num_units": 2,
    "depth": {"low": 1, "high": 6},
    "width": {"base": 16, "growth": 1, "last": "same"},
    "step_size": {"low": 0.1, "high": 1.0, "log": True},
    "activation": "relu",
    "norm": "tv",
    "reversible": False,
    "train": {"optimizer": "adamw", "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
}


def _study(name: str, warm: bool) -> dict:
    return {"name": name, "data": {"name": "fashion_mnist", "train_limit": 6000, "val_fraction": 0.2},
            "space": "space.yaml", "train": {"epochs": 4, "batch_size": 128, "augment": False},
            "objectives": ["val_accuracy"], "sampler": {"name": "tpe", "n_startup_trials": 6},
            "early_stop": {"rule": "median", "min_epochs": 1},
            "warm_start": warm, "n_trials": 200, "device": "cpu", "seed": 0, "threads": 1}


def _rows(run: Path, started: float) -> list[dict]:
    rows = []
    for path in sorted((run / "trials").glob("*/record.json")):
        record = json.loads(path.read_text())
        if record["status"] not in ("completed", "stopped") or record.get("val_accuracy") is None:
            continue
        finished = datetime.datetime.fromisoformat(record["finished_at"]).timestamp()
        rows.append({"number": record["number"], "val": record["val_accuracy"],
                     "status": record["status"], "warm": bool(record.get("warm_start")),
                     "depth": min(record["architecture"]["depths"]),
                     "seconds": finished - started})
    return rows


def _mean(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} % (n={len(values)})" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
        runs = {}
        for name, warm in (("warm", True), ("cold", False)):
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(_study(f"warm_start_{name}", warm)))
        started = time.time()
        procs = {name: subprocess.Popen(
            [sys.executable, "-m", "pdenas.cli", "search", str(folder / f"{name}.yaml"), "--out",
             str(folder / name), "--timeout", str(args.minutes * 60), "--quiet"],
            env=env, stdout=subprocess.DEVNULL) for name in ("warm", "cold")}
        for proc in procs.values():
            proc.wait()
        for name in procs:
            runs[name] = _rows(folder / name, started)
    lines = ["# Warm starts in a search: the same search with and without `warm_start`", "",
             f"`python benchmarks/warm_start.py --minutes {args.minutes:g}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, both "
             "searches side by side on one torch thread each. Fashion-MNIST, 4,800 train / 1,200 "
             "validation images, 4 epochs, TPE + median pruning, PDE families at widths 16-16-16, "
             "depth 1-6 and h searched.", "",
             "| search | trials trained | warm-started | best val acc | reached at | "
             "depth >= 3: warm | depth >= 3: cold |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("warm", "cold"):
        rows = runs[name]
        if not rows:
            lines.append(f"| {name} | 0 | 0 | - | - | - | - |")
            continue
        best = max(rows, key=lambda r: (r["val"], -r["seconds"]))
        deep = [r for r in rows if r["depth"] >= 3 and r["status"] == "completed"]
        lines.append(f"| warm_start: {str(name == 'warm').lower()} | {len(rows)} | "
                     f"{sum(r['warm'] for r in rows)} | {100 * best['val']:.2f} % | "
                     f"{best['seconds'] / 60:.1f} min | "
                     f"{_mean([r['val'] for r in deep if r['warm']])} | "
                     f"{_mean([r['val'] for r in deep if not r['warm']])} |")
    lines += ["", "Depth >= 3: the mean best validation accuracy of fully trained candidates "
              "with at least 3 steps in every unit."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
