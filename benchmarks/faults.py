"""Faults: two workers share one study while a driver kills (SIGKILL) and pauses (SIGSTOP) them.

For each storage (SQLite in the run folder; PostgreSQL on a throwaway server on 127.0.0.1, see
tests/pg_server.py) a study of ``--trials`` tiny trials (digits, 2 epochs, widths 4-8) is created
once, then two ``pdenas search`` workers run it with ``PDENAS_HEARTBEAT_INTERVAL=1`` and
``PDENAS_GRACE_PERIOD=4``. Every 0.5-2.5 s the driver picks a live worker and either kills it with
SIGKILL (restarting it at once) or stops it with SIGSTOP for 1-9 s (longer than the grace period
in about half the pauses: the other worker then fails its trial and retries it, and the paused
worker must drop its result without a traceback), until ``--faults`` faults were made; then the
workers finish the budget. The table reports, from the records and the storage:

- asked: the budget (``n_trials``); finished: records with a final status that uses the budget;
  completed: of those, the completed ones; used: Optuna trials that use the budget (exactness);
- duplicates: parameter sets trained to completion twice (a retried trial completing twice);
- lost finished: trials Optuna holds as COMPLETE whose record is not completed, or the reverse;
- tracebacks: "Traceback" in any worker's stderr; dropped: superseded results a paused worker
  dropped (its one warning line).

``--full-disk`` runs the full-disk faults instead, on a real small file system: a 2 MiB tmpfs
mounted for each case (root only; where mounting is refused the script says so and stops),
filled with one preallocated file until the free space the case names is left. Each case runs
``pdenas`` as a user would, frees the space (deletes the filler) and runs the same command again:

- weights: the run folder on the full file system with 32 KB free (a record fits, a trial's
  88 KB ``model.pt`` does not), ``study.db`` elsewhere;
- run folder: the run folder on a file system with nothing free, ``study.db`` elsewhere;
- study.db: the SQLite storage alone on the full file system (created with one trial, then the
  file system filled and two more trials asked for);
- export: ``--out`` on a full file system (32 KB free) for a finished run.

It prints, per case and run: the exit status, stderr's line count and first line, whether a
traceback was printed, the trial records' statuses, and what was left on the full file system.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/faults.py [--trials 32] [--faults 12] [--seed 0]
    OMP_NUM_THREADS=1 python benchmarks/faults.py --full-disk
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_faults import TINY_SPACE as SPACE  # noqa: E402  (the tests' tiny space, one copy)

STUDY = """
name: {name}
data: {{name: digits, train_limit: 300}}
space: space.yaml
train: {{epochs: 2, batch_size: 64, optimizer: sgd, lr: 0.05}}
sampler: random
early_stop: none
n_trials: {trials}
device: cpu
seed: 0
threads: 1
"""

ENV = {"PDENAS_HEARTBEAT_INTERVAL": "1", "PDENAS_GRACE_PERIOD": "4", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


class Worker:
    """One ``pdenas search`` process, restartable; each incarnation logs to its own file."""

    def __init__(self, slot: int, argv: list[str], folder: Path) -> None:
        self.slot, self.argv, self.folder, self.starts = slot, argv, folder, 0
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.folder / f"worker{self.slot}-{self.starts}.err", "w")
        self.starts += 1
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log,
                                     env={**os.environ, **ENV})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_case(label: str, folder: Path, storage: str | None, trials: int, faults: int,
             rng: random.Random) -> dict[str, object]:
    import optuna

    from pdenas.backends.optuna import counts_toward_budget, open_study
    from pdenas.runs import RunFolder
    from pdenas.study import StudyConfig

    (folder / "space.yaml").write_text(SPACE)
    study_file = folder / "study.yaml"
    name = f"faults_{label}_{os.getpid()}"
    study_file.write_text(STUDY.format(name=name, trials=trials))
    run = folder / "run"
    run.mkdir()
    url = storage or f"sqlite:///{run / 'study.db'}"
    open_study(StudyConfig.load(study_file), url)  # created once: workers only load it
    argv = [sys.executable, "-m", "pdenas.cli", "search", str(study_file), "--out", str(run),
            "--quiet", *(["--storage", storage] if storage else [])]
    workers = [Worker(k, argv, folder) for k in range(2)]
    made: Counter[str] = Counter()
    start = time.monotonic()
    while sum(made.values()) < faults and any(w.alive() for w in workers):
        time.sleep(rng.uniform(0.5, 2.5))
        live = [w for w in workers if w.alive()]
        if not live:
            break
        worker = rng.choice(live)
        if rng.random() < 0.5:
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            worker.start()
            made["SIGKILL"] += 1
        else:
            pause = rng.uniform(1.0, 9.0)
            worker.proc.send_signal(signal.SIGSTOP)
            time.sleep(pause)
            worker.proc.send_signal(signal.SIGCONT)
            made["SIGSTOP > grace" if pause > 4 else "SIGSTOP < grace"] += 1
    for worker in workers:
        worker.proc.wait(timeout=900)
    seconds = time.monotonic() - start

    records = RunFolder(run).records()
    study = optuna.load_study(study_name=name, storage=url)
    stored = {t.number: t for t in study.get_trials()}
    finished = [r for r in records if r.status.final and r.status.uses_budget]
    completed = [r for r in finished if r.status.value == "completed"]
    params = Counter(json.dumps(r.params, sort_keys=True) for r in completed)
    lost = [n for n, t in stored.items()
            if (t.state.name == "COMPLETE") != any(r.number == n for r in completed)]
    logs = [p.read_text() for p in sorted(folder.glob("worker*.err"))]
    return {
        "storage": label, "asked": trials, "finished": len(finished), "completed": len(completed),
        "failed": len(finished) - len(completed),
        "used": sum(counts_toward_budget(t) for t in stored.values()),
        "duplicates": sum(c - 1 for c in params.values()), "lost finished": len(lost),
        "tracebacks": sum(text.count("Traceback") for text in logs),
        "dropped": sum(text.count("failed by another worker") for text in logs),
        "lost (retried)": sum(r.status.value == "lost" for r in records),
        "faults": dict(made), "worker starts": sum(w.starts for w in workers),
        "nonzero exits": sum(w.proc.returncode != 0 for w in workers),
        "seconds": round(seconds),
    }


FULL_SPACE = SPACE.replace("width: {base: {low: 4, high: 8, step: 4},", "width: {base: 32,")
assert FULL_SPACE != SPACE
"""Width 32: a trial's model.pt is about 88 KB, its record about 2 KB, a new study.db 112 KB."""

FULL_STUDY = STUDY.format(name="fulldisk", trials=2).replace("space.yaml", "full_space.yaml")


class SmallFileSystem:
    """A tmpfs of ``size`` mounted on ``folder`` for the block, filled on demand."""

    def __init__(self, folder: Path, size: str = "2m") -> None:
        self.folder, self.size, self.filler = folder, size, folder / "filler"

    def __enter__(self) -> SmallFileSystem:
        self.folder.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                                str(self.folder)], capture_output=True, text=True)
        if mount.returncode != 0:
            raise SystemExit(f"cannot mount a tmpfs here ({mount.stderr.strip()}); the "
                             "full-disk faults need a real small file system (run as root)")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.folder)], check=True)

    def free(self) -> int:
        info = os.statvfs(self.folder)
        return info.f_bavail * info.f_frsize

    def fill(self, keep: int) -> None:
        """Preallocates the filler until at most ``keep`` bytes are free."""
        with open(self.filler, "ab") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size
                               + max(0, self.free() - keep))

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)


def _pdenas(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "pdenas.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **ENV}, timeout=900)
    lines = done.stderr.strip().splitlines()
    return {"exit": done.returncode, "stderr lines": len(lines),
            "first line": lines[0] if lines else "", "traceback": "Traceback" in done.stderr}


def _statuses(run: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"]
            for p in sorted(run.glob("trials/*/record.json"))}


def _left(fs: SmallFileSystem) -> list[str]:
    return sorted(str(p.relative_to(fs.folder)) for p in fs.folder.rglob("*")
                  if p.is_file() and p != fs.filler)


def full_disk(folder: Path) -> list[dict[str, object]]:
    """The four full-disk cases (see the module docstring); one row per command run."""
    (folder / "full_space.yaml").write_text(FULL_SPACE)
    study = folder / "full.yaml"
    study.write_text(FULL_STUDY)
    rows: list[dict[str, object]] = []

    def row(case: str, step: str, result: dict[str, object], **more: object) -> None:
        rows.append({"case": case, "step": step, **result, **more})
        print(json.dumps(rows[-1]), flush=True)

    for case, keep in (("weights", 32 << 10), ("run folder", 0)):
        with SmallFileSystem(folder / "mnt") as fs:
            run, db = fs.folder / "run", folder / f"{case.replace(' ', '_')}.db"
            argv = ["search", str(study), "--out", str(run), "--quiet", "--storage",
                    f"sqlite:///{db}"]
            fs.fill(keep)
            row(case, f"full ({fs.free() // 1024} KB free)", _pdenas(*argv),
                records=_statuses(run))
            fs.empty()
            row(case, "space freed, same command", _pdenas(*argv), records=_statuses(run))
    with SmallFileSystem(folder / "mnt") as fs:
        run, url = folder / "run_db", f"sqlite:///{fs.folder / 'study.db'}"
        argv = ["search", str(study), "--out", str(run), "--quiet", "--storage", url]
        row("study.db", "first trial, space free", _pdenas(*argv, "--n-trials", "1"),
            records=_statuses(run))
        fs.fill(0)
        row("study.db", f"full ({fs.free() // 1024} KB free), 2 trials asked", _pdenas(*argv),
            records=_statuses(run))
        fs.empty()
        row("study.db", "space freed, same command", _pdenas(*argv), records=_statuses(run))
    with SmallFileSystem(folder / "mnt") as fs:
        out = fs.folder / "export"
        argv = ["export", str(run), "--trial", "0", "--format", "pt,safetensors", "--out",
                str(out)]
        fs.fill(32 << 10)
        row("export", f"full ({fs.free() // 1024} KB free)", _pdenas(*argv), left=_left(fs))
        fs.empty()
        row("export", "space freed, same command", _pdenas(*argv), left=_left(fs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--faults", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--full-disk", action="store_true",
                        help="the full-disk faults on a real small file system instead")
    args = parser.parse_args()
    if args.full_disk:
        with tempfile.TemporaryDirectory() as tmp:
            rows = full_disk(Path(tmp))
        keys = ["case", "step", "exit", "stderr lines", "traceback", "first line"]
        print("| " + " | ".join(keys + ["records / left"]) + " |")
        print("|" + "---|" * (len(keys) + 1))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys)
                  + f" | {r.get('records', r.get('left'))} |")
        return
    rng = random.Random(args.seed)
    rows = []
    for label in ("sqlite", "postgresql"):
        if args.only and label != args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if label == "postgresql":
                from pg_server import PostgresServer

                with PostgresServer() as server:
                    rows.append(run_case(label, Path(tmp), server.url, args.trials, args.faults, rng))
            else:
                rows.append(run_case(label, Path(tmp), None, args.trials, args.faults, rng))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["storage", "asked", "finished", "completed", "failed", "used", "duplicates",
            "lost finished", "tracebacks", "dropped", "lost (retried)", "worker starts",
            "nonzero exits", "seconds"]
    print("| " + " | ".join(keys + ["faults"]) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for row in rows:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(row["faults"].items()))
        print("| " + " | ".join(str(row[k]) for k in keys) + f" | {faults} |")


if __name__ == "__main__":
    main()
