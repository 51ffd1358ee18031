"""What recording the gain of every trial costs, and how close the bounded estimate is.

With ``stability.mode: off`` (every shipped study) a trial still records the gain of its trained
weights (``pdenas.backends._stability.final_gain``: ``GAIN_IMAGES`` training images, at most
``GAIN_ITERATIONS`` Lanczos products per unit, ``GAIN_TOL``); the record holds the seconds it
took (``stability.final.seconds``). This runs the shipped ``quickstart`` study (digits, the
quickstart space) for a few trials in a temporary folder, then, per trial: its seconds, the
gain's seconds and their ratio, and the recorded gain against a converged reference at the same
images (``stability_report`` with 60 products, tol 1e-7), as the largest relative error over the
units.

Run: OMP_NUM_THREADS=1 python benchmarks/stability_gain_cost.py [--trials 8] [--seed 1] \
    | tee benchmarks/stability_gain_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pdenas import Architecture
from pdenas._resources import shipped_file
from pdenas.backends._stability import GAIN_IMAGES, GAIN_ITERATIONS, GAIN_TOL
from pdenas.data import load_data
from pdenas.export._select import saved_model
from pdenas.families import stability_report
from pdenas.study import StudyConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gain-cost-") as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "pdenas.cli", "search", "quickstart", "--out", str(run),
                   "--n-trials", str(args.trials), "--seed", str(args.seed)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       stdout=subprocess.DEVNULL)
        data = load_data(StudyConfig.load(shipped_file("studies", "quickstart")).data)
        rows = []
        for folder in sorted((run / "trials").iterdir(), key=lambda p: int(p.name)):
            record = json.loads((folder / "record.json").read_text())
            final = record.get("stability", {}).get("final", {})
            if final.get("gain") is None:
                continue
            arch = Architecture.from_dict(record["architecture"])
            model = saved_model(run, record["number"], arch)
            reference = stability_report(model, data.train.x, batch=GAIN_IMAGES, iterations=60,
                                         tol=1e-7, diagnostics=False)
            error = max(abs(unit["gain"] / ref["gain"] - 1)
                        for unit, ref in zip(final["units"], reference))
            rows.append((record["number"], arch.family, record["status"], record["seconds"],
                         final["seconds"], final["gain"], error))
    print(f"# Recording the gain per trial: cost and error (quickstart, {len(rows)} trials)\n")
    print(f"Settings: {GAIN_IMAGES} images, at most {GAIN_ITERATIONS} products per unit, "
          f"tol {GAIN_TOL:g}; seed {args.seed}; 2-core CPU, OMP_NUM_THREADS=1, load average "
          f"{os.getloadavg()[0]:.1f} at the end.\n")
    print("| trial | family | status | trial s | gain s | share | gain | error vs reference |")
    print("|---|---|---|---|---|---|---|---|")
    for number, family, status, seconds, cost, gain, error in rows:
        print(f"| {number} | {family} | {status} | {seconds:.1f} | {cost:.2f} | "
              f"{100 * cost / seconds:.1f} % | {gain:.3f} | {100 * error:.1f} % |")
    shares = [cost / seconds for _, _, _, seconds, cost, _, _ in rows]
    errors = [error for *_, error in rows]
    if rows:
        print(f"\nShare of the trial's seconds: median {100 * statistics.median(shares):.1f} %, "
              f"largest {100 * max(shares):.1f} %. Error of the recorded gain against the "
              f"converged one: median {100 * statistics.median(errors):.1f} %, largest "
              f"{100 * max(errors):.1f} %.")


if __name__ == "__main__":
    main()
