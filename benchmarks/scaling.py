"""Trials per hour of the quickstart study with each way of running it on one machine.

Runs ``pdenas search studies/quickstart.yaml`` as a user would (a fresh process each, so start-up
counts) with a small budget, then reads the run folder:

1. the Optuna backend, one worker (SQLite in the run folder), on 2 torch threads and on 1;
2. the Ray Tune backend on a local Ray runtime the command starts (ASHA, 1 CPU per trial,
   2 trials at a time);
3. two Optuna workers sharing one study on PostgreSQL (a throwaway server on 127.0.0.1, see
   tests/pg_server.py), one torch thread each;

and the start-up time of a local Ray runtime on its own.

Each row runs a copy of the study (in a temporary folder) that sets what the row measures: the
study option ``threads`` (torch.set_num_threads in an Optuna worker) and the ``ray:`` section, so
a row does not silently change when studies/quickstart.yaml does. The copies keep everything
else; ``space: quickstart`` names a packaged space, so it resolves from any folder. Each
PostgreSQL run gets its own study name: the server outlives the repeats, and a second run of a
study whose budget is spent would train nothing. Usage::

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


def _study_copy(folder: Path, tag: str, ray: dict | None = None, **changes) -> Path:
    """Writes studies/quickstart.yaml with ``changes`` (top-level keys) and ``ray`` (merged into
    its ``ray:`` section) to ``folder``; returns the copy's path."""
    import yaml

    study = yaml.safe_load(STUDY.read_text())
    study.update(changes)
    if ray:
        study["ray"] = {**(study.get("ray") or {}), **ray}
    path = folder / f"quickstart-{tag}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _search(study: Path, run_dir: Path, n_trials: int, *extra: str,
            env: dict[str, str] | None = None, workers: int = 1) -> float:
    """Runs ``workers`` search processes at once; returns the wall time until all finished."""
    command = [sys.executable, "-m", "pdenas.cli", "search", str(study), "--n-trials",
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

    from pdenas.study import StudyConfig

    config = StudyConfig.load(STUDY)
    n = args.n_trials
    load_before = _load()
    one_min_before = os.getloadavg()[0]
    # (label, key, study changes, extra arguments, workers); "URL" is the PostgreSQL server's.
    runs = [
        ("Optuna, 1 worker (SQLite), 2 threads", "optuna2", {"threads": 2}, (), 1),
        ("Optuna, 1 worker (SQLite), 1 thread", "optuna1", {"threads": 1}, (), 1),
        ("Ray Tune, local runtime (ASHA, 2 trials x 1 CPU)", "ray",
         {"ray": {"cpus_per_trial": 1}}, ("--backend", "ray"), 1),
        ("Optuna, 2 workers on PostgreSQL, 1 thread each", "postgres", {"threads": 1},
         ("--storage", "URL"), 2),
    ]
    rows = []
    startups = []
    with tempfile.TemporaryDirectory(prefix="pdenas-scaling-") as tmp, PostgresServer() as server:
        folder = Path(tmp)
        for name, key, changes, extra, workers in runs:
            extra = tuple(server.url if e == "URL" else e for e in extra)
            walls, summary = [], None
            for repeat in range(args.repeats):
                if key == "ray":
                    startups.append(_ray_startup())
                tag = f"{key}-{repeat}"
                study = _study_copy(folder, tag, **changes,
                                    **({"name": f"quickstart-{tag}"} if key == "postgres" else {}))
                run_dir = folder / tag
                walls.append(_search(study, run_dir, n, *extra, workers=workers))
                summary = _summary(run_dir)
                if summary[0] != n:
                    raise RuntimeError(f"{name}: {summary[0]} trials in {run_dir}, expected {n}")
                shutil.rmtree(run_dir, ignore_errors=True)
            rows.append((name, walls, *summary))
    load_after = _load()

    epochs = int(config.train.epochs)
    early = config.early_stop
    rungs, rung = [], early.min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= early.reduction
    rung_text = ", ".join(map(str, rungs[:-1])) + (" or " if len(rungs) > 1 else "") + str(rungs[-1])
    if one_min_before < 0.5 * (os.cpu_count() or 1):
        machine = ("Nothing else heavy ran on it meanwhile (load average 1/5/15 min: "
                   f"{load_before} before, {load_after} after; the latter is this benchmark's own)")
    else:
        machine = ("**The CPU was shared with other work while this ran** (load average 1/5/15 "
                   f"min: {load_before} before, {load_after} after), so absolute numbers are "
                   "noisy; compare rows of the same run")

    lines = [
        "# Scaling out: trials per hour of the quickstart on this machine",
        "",
        f"`python benchmarks/scaling.py --n-trials {n} --repeats {args.repeats}`: "
        f"`pdenas search studies/quickstart.yaml --n-trials {n}` (8x8 digits, {epochs} epochs, "
        "all four families; a copy of the study per row sets its `threads` and `ray:` settings), "
        "each a fresh command, so "
        "process start-up, data loading and (for Ray) starting the Ray runtime are included.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}. "
        f"{machine}.",
        "",
        f"| how | wall s ({args.repeats} runs) | trials/hour (best run) | mean s per trial "
        "(record, last run) | statuses (last run) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, walls, count, statuses, mean in rows:
        lines.append(f"| {name} | {' / '.join(f'{w:.1f}' for w in walls)} | "
                     f"{3600 * count / min(walls):.0f} | {mean:.1f} | {statuses} |")
    by_key = {key: row for (_, key, *_), row in zip(runs, rows)}
    _, walls2, _, _, mean2 = by_key["optuna2"]
    _, _, _, _, mean1 = by_key["optuna1"]
    walls_pg = by_key["postgres"][1]
    lines += [
        "",
        "Start-up of a local Ray runtime (`ray.init(include_dashboard=False)`, fresh process): "
        + " / ".join(f"{s:.1f}" for s in startups) + " s.",
        "",
        "Notes: the statuses differ between rows because trials finish in another order: the "
        f"study's early-stop rule ({early.rule}, the same on both backends) stops weak trials "
        f"after {rung_text} of {epochs} epochs. "
        "Each Ray trial starts a fresh worker process (imports, data loading: a few seconds "
        "here), which dominates trials of a few seconds. "
        f"Here one worker trained {'faster' if mean2 < mean1 else 'slower'} on 2 threads than on "
        f"1 ({mean2:.1f} against {mean1:.1f} s per trial), and two 1-thread workers on "
        f"PostgreSQL finished the budget {min(walls2) / min(walls_pg):.2f}x as fast as one "
        "2-thread worker. On a busy CPU multi-threaded trials can stall in OpenMP, so one thread "
        "per trial is the safer default. More workers pay off with more GPUs or machines, not "
        "on this 2-core box.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
