"""The ``pdenas`` command: search, leaderboard, compare, export.

Bad input (an unknown key, a bad value, a missing file, data that is not there with downloads
off) exits with status 2 and one line naming the problem, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

EXIT_BAD_INPUT = 2
_INTERRUPTED = "interrupted: finished trials are stored; run the same command to resume"


class UsageError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= 1")
    return value


def _log_level() -> str:
    """The logging level ``PDENAS_LOG`` names (default WARNING); a bad one is one line."""
    level = os.environ.get("PDENAS_LOG", "WARNING").strip().upper() or "WARNING"
    allowed = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if level not in allowed:
        raise UsageError(f"PDENAS_LOG: got {os.environ['PDENAS_LOG']!r}; allowed: "
                         f"{', '.join(allowed)}")
    return level


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pdenas", description="Architecture search over PDE-motivated ResNets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="run or resume a study")
    s.add_argument("study", help="study file (YAML), e.g. studies/quickstart.yaml")
    s.add_argument("--n-trials", type=int, help="total trials of the study (a rerun tops up to it)")
    s.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    s.add_argument("--backend", default="optuna", help="optuna (default) or ray")
    s.add_argument("--address", help="Ray cluster address (ray backend): auto or HOST:PORT")
    s.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run folder)")
    s.add_argument("--out", help="run folder (default: runs/<study name>)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"))
    s.add_argument("--seed", type=int)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="optuna backend: run N worker processes on this machine that share the "
                        "study (several small trials on one GPU, or one per CPU core)")

    b = sub.add_parser("leaderboard", help="ranked trials of a run")
    b.add_argument("run", help="run folder, e.g. runs/quickstart")
    b.add_argument("--top", type=_positive_int, help="show only the first K rows")
    b.add_argument("--all", action="store_true", help="list every trial, failed ones included")
    b.add_argument("--csv", help="also write the table as CSV")
    b.add_argument("--parquet", help="also write the table as Parquet")

    c = sub.add_parser("compare", help="the PDE families side by side, with plots")
    c.add_argument("run", help="run folder")
    c.add_argument("--out", help="folder for the report and plots (default: RUN/compare)")
    c.add_argument("--retrain-top", type=int, default=0, metavar="K",
                   help="retrain each family's top K architectures at the full budget")
    c.add_argument("--seeds", type=int, default=3, metavar="S", help="seeds per retrained architecture")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    e = sub.add_parser("export", help="export a trial's model")
    e.add_argument("run", help="run folder")
    e.add_argument("--trial", default="best", help="best, a trial number, or pareto:K")
    e.add_argument("--format", default="pt,torchscript,onnx", help="comma list of pt, torchscript, onnx")
    e.add_argument("--retrain-epochs", type=int, help="retrain from scratch on train + validation")
    e.add_argument("--out", help="export folder (default: RUN/export/trial-N)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def _search(args: argparse.Namespace) -> int:
    from pdenas.backends import run_search
    from pdenas.study import StudyConfig

    config = StudyConfig.load(args.study)
    changes = {k: v for k, v in (("n_trials", args.n_trials), ("timeout", args.timeout),
                                  ("storage", args.storage), ("device", args.device),
                                  ("seed", args.seed)) if v is not None}
    if changes:
        try:
            config = config.replace(**changes)
        except ValueError as error:
            raise UsageError(str(error).replace("n_trials", "--n-trials")) from None
    if args.workers > 1:
        return _workers(args, config)
    progress = _Progress(config, quiet=args.quiet)
    try:
        run = run_search(config, backend=args.backend, out=args.out, address=args.address,
                         quiet=args.quiet, progress=progress)
    except KeyboardInterrupt:
        progress.close()
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    progress.close()
    return _print_board(run.path)


def _workers(args: argparse.Namespace, config) -> int:
    """``--workers N``: creates the study and the run folder once (workers that create a new
    study at the same moment race on the storage's schema), then runs N ``pdenas search``
    processes on it, which share the budget, and prints the leaderboard."""
    import subprocess

    from pdenas.backends import run_search

    if args.workers < 1 or args.workers > 64:
        raise UsageError(f"--workers: got {args.workers}; allowed: 1 to 64")
    if args.backend != "optuna":
        raise UsageError("--workers: is for the optuna backend; Ray runs trials side by side "
                         "itself (ray.max_concurrent, fractional gpus_per_trial)")
    run = run_search(config, backend=args.backend, out=args.out, quiet=True, prepare_only=True)
    command = [sys.executable, "-m", "pdenas.cli", "search", str(args.study), "--out",
               str(run.path), "--quiet"]
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout),
                        ("--storage", args.storage), ("--device", args.device),
                        ("--seed", args.seed)):
        if value is not None:
            command += [flag, str(value)]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(args.workers)]
    try:
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C and give their trials back
        for worker in workers:
            worker.wait()
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    failed = [code for code in codes if code != 0]
    if failed:
        print(f"pdenas: error: {len(failed)} of {args.workers} workers failed (exit status "
              f"{failed[0]}); finished trials are stored", file=sys.stderr)
        return failed[0]
    return _print_board(run.path)


class _Progress:
    """A tqdm bar: trials done, best accuracy so far, time left."""

    def __init__(self, config, quiet: bool) -> None:
        self.config, self.quiet, self.bar, self.best = config, quiet, None, None
        self.start_time = time.monotonic()

    def start(self, done: int, total: int, best: float | None) -> None:
        if self.quiet:
            return
        from tqdm.auto import tqdm

        self.best = best
        self.bar = tqdm(total=total, initial=done, desc=f"search {self.config.name}",
                        unit="trial", file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def update(self, record) -> None:
        if record.status == "completed" and record.val_accuracy is not None:
            self.best = max(self.best or 0.0, record.val_accuracy)
        if self.bar is not None:
            self.bar.update(1)
            self._postfix(last=f"#{record.number} {record.architecture.get('family')} {record.status}")

    def _postfix(self, last: str | None = None) -> None:
        parts = {"best": "-" if self.best is None else f"{100 * self.best:.1f}%"}
        if self.config.timeout:
            left = self.config.timeout - (time.monotonic() - self.start_time)
            parts["left"] = f"{max(0, left):.0f}s"
        if last:
            parts["last"] = last
        self.bar.set_postfix(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_board(run_dir: Path, top: int | None = None, show_all: bool = False,
                 csv: str | None = None, parquet: str | None = None) -> int:
    from pdenas.results import (format_leaderboard, format_predictions, leaderboard, load_run,
                                load_trials)

    info = load_run(run_dir)
    trials = load_trials(run_dir)
    board = leaderboard(trials, info.objectives)
    print(f"study {info['study_name']}: {len(trials)} trials, {len(board)} ranked "
          f"(objectives: {', '.join(info.objectives)})")
    print(format_leaderboard(board, top))
    if show_all:
        other = trials[~trials["number"].isin(board["number"])] if not board.empty else trials
        if not other.empty:
            print("\nnot ranked:")
            cols = ["number", "family", "status", "epochs_trained", "failure_reason"]
            print(other[cols].to_string(index=False))
        print("\n" + format_predictions(trials))
    for path, write in ((csv, board.to_csv), (parquet, board.to_parquet)):
        if path:
            write(path, index=False)
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    return _print_board(Path(args.run), args.top, args.all, args.csv, args.parquet)


def _compare(args: argparse.Namespace) -> int:
    from pdenas.compare import run_compare

    return run_compare(args)


def _export(args: argparse.Namespace) -> int:
    from pdenas.export import run_export

    return run_export(args)


COMMANDS = {"search": _search, "leaderboard": _leaderboard, "compare": _compare, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pdenas`` console script; returns the exit status."""
    try:
        logging.basicConfig(level=_log_level())
        args = _build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not message.startswith("pdenas"):
            message = f"pdenas: error: {message}"
        print(message, file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
