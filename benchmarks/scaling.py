"""Trials per hour of the quickstart study with each way of running it on one machine.

Runs ``pdenas search studies/quickstart.yaml`` as a user would (a fresh process each, so start-up
counts) with a small budget, then reads the run folder:

1. the Optuna backend, one worker (SQLite in the run folder);
2. the Ray Tune backend on a local Ray runtime the command starts (ASHA, 1 CPU per trial,
   2 trials at a time: the study's defaults);
3. two Optuna workers sharing one study on PostgreSQL (a throwaway server on 127.0.0.1, see
   tests/pg_server.py), one torch thread each;

and the start-up time of a local Ray runtime on its own. Usage::

    python benchmarks/scaling.py [--n-trials 6] [--out benchmarks/scaling.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "quickstart.yaml"


def _search(run_dir: Path, n_trials: int, *extra: str, env: dict[str, str] | None = None,
            workers: int = 1) -> float:
    """Runs ``workers`` search processes at once; returns the wall time until all finished."""
    command = [sys.executable, "-m", "pdenas.cli", "search", str(STUDY), "--n-trials",
               str(n_trials), "--out", str(run_dir), "--quiet", *extra]
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    start = time.perf_counter()
    processes = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    for process in processes:
        output = process.communicate()[0]
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return time.perf_counter() - start


def _summary(run_dir: Path) -> tuple[int, str, float]:
    """(finished trials, status counts, mean seconds per trial from the records)."""
    from pdenas.results import load_trials

    trials = load_trials(run_dir)
    counts = trials["status"].value_counts()
    text = ", ".join(f"{n} {status}" for status, n in counts.items())
    return len(trials), text, float(trials["seconds"].mean())


def _ray_startup() -> float:
    code = ("import time, logging, ray; t = time.perf_counter(); "
            "ray.init(include_dashboard=False, logging_level=logging.WARNING); "
            "print(time.perf_counter() - t); ray.shutdown()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=6)
    parser.add_argument("--out", help="also write the report (Markdown) here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import PostgresServer

    n = args.n_trials
    load_before = _load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pdenas-scaling-") as tmp:
        folder = Path(tmp)
        seconds = _search(folder / "optuna", n)
        rows.append(("Optuna, 1 worker (SQLite)", seconds, *_summary(folder / "optuna")))

        startup = _ray_startup()
        seconds = _search(folder / "ray", n, "--backend", "ray")
        rows.append(("Ray Tune, local runtime (ASHA, 2 x 1 CPU)", seconds, *_summary(folder / "ray")))

        with PostgresServer() as server:
            seconds = _search(folder / "postgres", n, "--storage", server.url,
                              env={"OMP_NUM_THREADS": "1"}, workers=2)
            rows.append(("Optuna, 2 workers on PostgreSQL (1 thread each)", seconds,
                         *_summary(folder / "postgres")))
        shutil.rmtree(folder, ignore_errors=True)
    load_after = _load()

    lines = [
        "# Scaling out: trials per hour of the quickstart on this machine",
        "",
        f"`python benchmarks/scaling.py --n-trials {n}`: `pdenas search studies/quickstart.yaml "
        f"--n-trials {n}` (8x8 digits, 6 epochs, all four families), each a fresh command, so "
        "process start-up, data loading and (for Ray) starting the Ray runtime are included.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}. "
        f"**The CPU was shared with other work while this ran** (load average 1/5/15 min: "
        f"{load_before} before, {load_after} after), so absolute numbers are noisy; compare "
        "rows of the same run.",
        "",
        "| how | wall s | trials | trials/hour | mean s per trial (record) | statuses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, seconds, count, statuses, mean in rows:
        lines.append(f"| {name} | {seconds:.1f} | {count} | {3600 * count / seconds:.0f} | "
                     f"{mean:.1f} | {statuses} |")
    lines += [
        "",
        f"Start-up of a local Ray runtime (`ray.init(include_dashboard=False)`, fresh process): "
        f"{startup:.1f} s.",
        "",
        "Notes: with two cores, two trials at a time (Ray's two 1-CPU slots, or two workers) "
        "beat one process on two threads only where a small net cannot use two threads well; "
        "ASHA stops weak Ray trials after 1, 2 or 4 of 6 epochs, and pdenas's median rule stops "
        "weak Optuna trials after epoch 2, so the statuses differ between rows. The speed-up of "
        "more workers comes from more GPUs or machines, not from this 2-core box.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
