"""Trials per hour of the quickstart study with each way of running it on one machine.

Runs ``pdenas search studies/quickstart.yaml`` as a user would (a fresh process each, so start-up
counts) with a small budget, then reads the run folder:

1. the Optuna backend, one worker (SQLite in the run folder), on torch's 2 threads and on 1;
2. the Ray Tune backend on a local Ray runtime the command starts (ASHA, 1 CPU per trial,
   2 trials at a time: the study's defaults);
3. two Optuna workers sharing one study on PostgreSQL (a throwaway server on 127.0.0.1, see
   tests/pg_server.py), one torch thread each;

and the start-up time of a local Ray runtime on its own. Usage::

    python benchmarks/scaling.py [--n-trials 6] [--repeats 2] [--out benchmarks/scaling.md]
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
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--out", help="also write the report (Markdown) here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import PostgresServer

    n = args.n_trials
    load_before = _load()
    runs = [
        ("Optuna, 1 worker (SQLite), 2 threads", "optuna", (), {}, 1),
        ("Optuna, 1 worker (SQLite), 1 thread", "optuna1", (), {"OMP_NUM_THREADS": "1"}, 1),
        ("Ray Tune, local runtime (ASHA, 2 trials x 1 CPU)", "ray", ("--backend", "ray"), {}, 1),
        ("Optuna, 2 workers on PostgreSQL, 1 thread each", "postgres", ("--storage", "URL"),
         {"OMP_NUM_THREADS": "1"}, 2),
    ]
    rows = []
    startups = []
    with tempfile.TemporaryDirectory(prefix="pdenas-scaling-") as tmp, PostgresServer() as server:
        folder = Path(tmp)
        for name, key, extra, env, workers in runs:
            extra = tuple(server.url if e == "URL" else e for e in extra)
            walls, summary = [], None
            for repeat in range(args.repeats):
                if key == "ray":
                    startups.append(_ray_startup())
                run_dir = folder / f"{key}-{repeat}"
                walls.append(_search(run_dir, n, *extra, env=env, workers=workers))
                summary = _summary(run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
            rows.append((name, walls, *summary))
    load_after = _load()

    lines = [
        "# Scaling out: trials per hour of the quickstart on this machine",
        "",
        f"`python benchmarks/scaling.py --n-trials {n} --repeats {args.repeats}`: "
        f"`pdenas search studies/quickstart.yaml --n-trials {n}` (8x8 digits, 6 epochs, all four "
        "families), each a fresh command, so "
        "process start-up, data loading and (for Ray) starting the Ray runtime are included.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}. "
        f"**The CPU was shared with other work while this ran** (load average 1/5/15 min: "
        f"{load_before} before, {load_after} after), so absolute numbers are noisy; compare "
        "rows of the same run.",
        "",
        f"| how | wall s ({args.repeats} runs) | trials/hour (best run) | mean s per trial "
        "(record, last run) | statuses (last run) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, walls, count, statuses, mean in rows:
        lines.append(f"| {name} | {' / '.join(f'{w:.1f}' for w in walls)} | "
                     f"{3600 * count / min(walls):.0f} | {mean:.1f} | {statuses} |")
    lines += [
        "",
        "Start-up of a local Ray runtime (`ray.init(include_dashboard=False)`, fresh process): "
        + " / ".join(f"{s:.1f}" for s in startups) + " s.",
        "",
        "Notes: the workers' statuses differ between rows: ASHA stops weak Ray trials after "
        "1, 2 or 4 of 6 epochs, pdenas's median rule stops weak Optuna trials from epoch 3 on. "
        "Each Ray trial starts a fresh worker process (imports, data loading: a few seconds "
        "here), which dominates trials of a few seconds. Two 1-thread trials at a time use two "
        "cores better than one 2-thread trial for nets this small, and avoid OpenMP stalls on a "
        "busy machine. More workers pay off with more GPUs or machines, not on this 2-core box.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
