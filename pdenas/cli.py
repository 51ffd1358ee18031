"""The ``pdenas`` command (also ``python -m pdenas``): search, studies, leaderboard, compare,
export; a thin layer over the Python API (``pdenas.api``).

Bad input (an unknown key, a bad value, a missing file, data that is not there with downloads
off) exits with status 2 and one line naming the problem, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pdenas._log import configure as configure_logging
from pdenas.errors import InputError

__all__ = ["main"]

EXIT_BAD_INPUT = 2
_INTERRUPTED = "interrupted: finished trials are stored; run the same command to resume"

_EXAMPLES = """\
examples:
  pdenas studies                                   # the shipped studies
  pdenas search quickstart                         # a shipped study, into runs/quickstart
  pdenas search my_study.yaml --n-trials 40 --set train.epochs=5 --set data.train_limit=2000
  pdenas search quickstart --track tensorboard     # per-epoch metrics to runs/quickstart/tensorboard
  pdenas leaderboard runs/quickstart --csv board.csv
  pdenas compare runs/quickstart                   # the PDE families side by side
  pdenas compare runs/space_a runs/space_b         # several runs: fronts, hypervolume, families
  pdenas export runs/quickstart --trial best       # model.pt, model.pt2, safetensors, ONNX, card

study keys (any of them with --set KEY=VALUE, dotted, values read as YAML):
{keys}

environment:
  PDENAS_LOG                 log level (default WARNING; INFO shows every epoch)
  PDENAS_HEARTBEAT_INTERVAL  seconds between a running trial's heartbeats (RDB storages; 10)
  PDENAS_GRACE_PERIOD        seconds without a heartbeat before a trial is retried (40)
  PDENAS_HUNG_GRACE          seconds past trial_timeout before a hung trial's worker is ended
  PDENAS_LATENCY_REPEATS     timed forward passes per latency measurement (10)
  PDENAS_COMPILE=1           train through torch.compile (pays for long GPU runs)
  RAY_AUTH_MODE=disabled     silences the warning Ray prints at every start (ray backend)
  MLFLOW_TRACKING_URI        where MLflow tracking writes when the study names no tracking_uri
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise InputError(f"{self.prog}: {message}", key=None)


def _int_or_word(text: str) -> int | str:
    """An argparse type: an integer where the text is one, else the text (the study checks it)."""
    try:
        return int(text)
    except ValueError:
        return text


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
        raise InputError(f"PDENAS_LOG: got {os.environ['PDENAS_LOG']!r}; allowed: "
                         f"{', '.join(allowed)}")
    return level


def _epilog() -> str:
    """The examples, the study keys (from the configuration classes, so never out of date) and
    the environment variables."""
    import textwrap

    from pdenas._config import key_summary
    from pdenas.study import StudyConfig

    keys = key_summary(StudyConfig, sections=_backend_sections())
    return _EXAMPLES.format(keys=textwrap.fill(keys, width=96, initial_indent="  ",
                                               subsequent_indent="  ", break_on_hyphens=False,
                                               break_long_words=False))


def _backend_sections() -> dict[str, type]:
    """Study sections that a backend checks (``ray``), where its options load without it."""
    from pdenas.backends._ray_options import RayOptions

    return {"ray": RayOptions}


def _build_parser() -> argparse.ArgumentParser:
    from pdenas._resources import package_version

    parser = _Parser(prog="pdenas", description="Architecture search over PDE-motivated ResNets.",
                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"pdenas {package_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("search", help="run or resume a study", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("study", help="a study file (YAML) or a shipped study's name (pdenas studies)")
    s.add_argument("--n-trials", type=int, help="total trials of the study (a rerun tops up to it)")
    s.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    s.add_argument("--backend", default="optuna", help="optuna (default) or ray")
    s.add_argument("--address", help="Ray cluster address (ray backend): auto or HOST:PORT")
    s.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run folder)")
    s.add_argument("--out", help="run folder (default: runs/<study name>)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where trials train (default: the study's device; auto: a GPU if any)")
    s.add_argument("--seed", type=int, help="seeds the sampler, the trials' initial weights and "
                                            "data order (default: the study's seed)")
    s.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="set any study key (dotted: train.epochs=3; repeatable; YAML values)")
    s.add_argument("--track", action="append", default=[], metavar="mlflow|tensorboard",
                   help="send per-epoch metrics to MLflow or TensorBoard (repeatable)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--workers", type=_int_or_word, metavar="N",
                   help="optuna backend: run N worker processes on this machine that share the "
                        "study (several small trials on one GPU, or one per CPU core; default: "
                        "the study's workers, 1 unless it says; auto: one per core on a CPU "
                        "study with threads set)")

    w = sub.add_parser("worker", help="one worker process of a prepared run (pdenas search "
                                      "starts these for --workers N and trial_timeout)")
    w.add_argument("run", help="the run folder; the study is read from its run.json")
    w.add_argument("--timeout", type=float, help="seconds the study has left")
    w.add_argument("--supervisor", type=int, metavar="PID",
                   help="the process that started this worker: stop when it dies, and let a "
                        "hung trial end this process so that the supervisor replaces it")
    w.add_argument("--storage", help="the study's storage URL (run.json keeps no password)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("studies", help="list the shipped studies")

    b = sub.add_parser("leaderboard", help="ranked trials of a run")
    b.add_argument("run", help="run folder, e.g. runs/quickstart")
    b.add_argument("--top", type=_positive_int, help="show only the first K rows")
    b.add_argument("--all", action="store_true", help="list every trial, failed ones included")
    b.add_argument("--csv", help="also write the table as CSV (lists as JSON)")
    b.add_argument("--parquet", help="also write the table as Parquet")

    c = sub.add_parser("compare", help="one run's PDE families side by side, or several runs")
    c.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folder(s); two or more are compared with each other")
    c.add_argument("--out", help="folder for the report and plots "
                                 "(default: RUN/compare, or FIRST_RUN/compare_runs)")
    c.add_argument("--retrain-top", type=int, default=0, metavar="K",
                   help="one run: retrain each family's top K architectures at the full budget")
    c.add_argument("--seeds", type=int, default=3, metavar="S",
                   help="seeds per retrained architecture; with --verdict, the seeds of its first look")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--verdict", action="store_true",
                   help="one run: which family is best and how sure: paired retraining on seeds, "
                        "intervals, P(best), paired differences, one sentence, verdict.json")
    c.add_argument("--candidates", type=int, default=1, metavar="K",
                   help="verdict: candidates per family; more than 1 also resamples the search's luck")
    c.add_argument("--max-seeds", type=int, metavar="N", help="verdict: the budget in seeds (default 8)")
    c.add_argument("--max-seconds", type=float, metavar="S", help="verdict: the budget in seconds")
    c.add_argument("--budget", default="flop_epochs", metavar="UNIT",
                   help="verdict: equal search budget per family in flop_epochs, seconds or trials")
    c.add_argument("--alpha", type=float, default=0.05, help="verdict: error rate over pairs and looks")
    c.add_argument("--margin", type=float, default=0.5, metavar="POINTS",
                   help="verdict: differences within ± this many points count as settled (default 0.5)")
    c.add_argument("--cost-levels", metavar="C1,C2|auto",
                   help="verdict: also at these costs (the run's cost objective, e.g. 1e6 FLOPs), "
                        "or auto: the finished trials' cost terciles")

    e = sub.add_parser("export", help="export a trial's model")
    e.add_argument("run", help="run folder")
    e.add_argument("--trial", default="best", help="best, a trial number, or pareto:K")
    e.add_argument("--format", help="comma list of pt, pt2 (torch.export), safetensors, onnx "
                                    "(default: all, onnx when pdenas[onnx] is installed)")
    e.add_argument("--retrain-epochs", type=int, help="retrain from scratch on train + validation")
    e.add_argument("--out", help="export folder (default: RUN/export/trial-N)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


_FLAGS = ("n_trials", "timeout", "storage", "device", "seed", "workers")
"""Study keys that have a flag of their own (``--n-trials`` for ``n_trials``)."""


def _search(args: argparse.Namespace) -> int:
    """``pdenas search``: the flags and ``--set`` items become overrides of ``pdenas.search``."""
    from pdenas._interrupt import exit_status
    from pdenas.api import search
    from pdenas.backends import WorkersFailed
    from pdenas.study import deep_merge, parse_assignments
    from pdenas.tracking import parse_trackers

    sets = parse_assignments(args.assignments)
    tracks = parse_trackers(args.track) if args.track else {}
    overrides = deep_merge(sets, {"tracking": tracks}) if tracks else sets
    flags = {key: getattr(args, key) for key in _FLAGS if getattr(args, key) is not None}
    try:
        run = search(args.study, out=args.out, backend=args.backend, address=args.address,
                     progress=not args.quiet, **deep_merge(overrides, flags))
    except InputError as error:
        tracker = (error.key or "").removeprefix("tracking.")
        if tracker in tracks and tracker not in (sets.get("tracking") or {}):
            raise InputError(f"--track {tracker}: {error.detail}", key=error.key,
                             detail=error.detail) from None
        raise _as_typed(error, flags, sets) from None
    except KeyboardInterrupt as stop:  # Ctrl-C, kill (SIGTERM), a closed terminal (SIGHUP)
        print(_INTERRUPTED, file=sys.stderr)  # after the bar, not on its line
        return exit_status(stop)  # 130, 143, 129: as a shell reports a process that signal ended
    except WorkersFailed as error:  # each worker printed its own traceback
        print(f"pdenas: error: {error}", file=sys.stderr)
        return error.status
    return _print_board(run.path)


def _as_typed(error: InputError, flags: dict[str, object], overrides: dict[str, object]
              ) -> InputError:
    """The error naming what the user typed: ``--n-trials: ...`` for a flag, ``--set KEY: ...``
    for an item of ``--set``, else the error as it is (a study file's key names the file)."""
    key = error.key or ""
    if key in flags:
        return InputError(f"--{key.replace('_', '-')}: {error.detail}", key=key,
                          detail=error.detail)
    top, *rest = key.split(".")
    node: object = overrides
    for part in (top, *rest):
        if not isinstance(node, dict) or part not in node:
            return error
        node = node[part]
    return InputError(f"--set {key}: {error.detail}", key=key, detail=error.detail)


def _worker(args: argparse.Namespace) -> int:
    """``pdenas worker RUN``: one worker of a prepared run (started by ``pdenas search``)."""
    from pdenas.backends import run_worker
    from pdenas.backends._supervise import EXIT_INTERRUPTED

    try:
        run_worker(args.run, supervisor=args.supervisor, timeout=args.timeout,
                   storage=args.storage, progress=not args.quiet)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _studies(args: argparse.Namespace) -> int:
    from pdenas._resources import shipped_file, shipped_studies

    studies = shipped_studies()
    width = max(map(len, studies), default=0)
    for name, description in studies.items():
        print(f"{name:<{width}}  {description}")
    if studies:
        folder = shipped_file("studies", next(iter(studies))).parent
        print(f"\nrun one with `pdenas search NAME`; copy one from {folder} to change it")
    return 0


def _print_board(run_dir: Path, top: int | None = None, show_all: bool = False,
                 csv: str | None = None, parquet: str | None = None) -> int:
    from pdenas.results import (check_table_path, export_trials, format_leaderboard,
                                format_predictions, leaderboard, load_run, load_trials,
                                split_skipped)

    for path, suffix in ((csv, ".csv"), (parquet, ".parquet")):
        if path and Path(path).suffix.lower() != suffix:
            raise InputError(f"--{suffix[1:]} {path}: the file name must end in {suffix}")
        if path:
            check_table_path(path)  # before the work: Parquet needs its extra
    info = load_run(run_dir)
    trials = load_trials(run_dir)
    board = leaderboard(trials, info.objectives)
    kept, draws = split_skipped(trials)
    print(f"study {info['study_name']}: {len(kept)} trials, {len(board)} ranked"
          f"{draws} (objectives: {', '.join(info.objectives)})")
    print(format_leaderboard(board, top))
    if show_all:
        other = trials[~trials["number"].isin(board["number"])] if not board.empty else trials
        if not other.empty:
            print("\nnot ranked:")
            cols = ["number", "family", "status", "epochs_trained", "failure_reason"]
            print(other[cols].to_string(index=False))
        print("\n" + format_predictions(trials))
    for path in (csv, parquet):
        if path:
            export_trials(board, path)
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    return _print_board(Path(args.run), args.top, args.all, args.csv, args.parquet)


def _compare(args: argparse.Namespace) -> int:
    from pdenas.api import open_run

    run = open_run(args.runs[0])
    if len(args.runs) > 1 and (args.retrain_top or args.verdict):
        flag = "--retrain-top" if args.retrain_top else "--verdict"
        raise InputError(f"pdenas compare: {flag} compares the families of one run; name one RUN")
    levels: str | list[float] = (args.cost_levels or "").strip()
    if levels and levels != "auto":
        try:
            levels = [float(v) for v in str(levels).split(",")]
        except ValueError:
            raise InputError(f"--cost-levels: got {args.cost_levels!r}; allowed: auto, or numbers "
                             "separated by commas (e.g. 5e5,1e6)") from None
    verdict = {"verdict": True, "candidates": args.candidates, "max_seeds": args.max_seeds,
               "max_seconds": args.max_seconds, "budget": args.budget, "alpha": args.alpha,
               "margin": args.margin / 100, "cost_levels": levels or ()} if args.verdict else {}
    run.compare(*args.runs[1:], out=args.out, retrain_top=args.retrain_top, seeds=args.seeds,
                device=args.device, echo=print, **verdict)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pdenas.api import open_run
    from pdenas.export import summary_lines

    run = open_run(args.run)
    run.export(args.trial, formats=args.format, out=args.out, retrain_epochs=args.retrain_epochs,
               device=args.device)
    print("\n".join(summary_lines(run.last_card or {})))
    return 0


COMMANDS = {"search": _search, "worker": _worker, "studies": _studies, "leaderboard": _leaderboard,
            "compare": _compare, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pdenas`` console script; returns the exit status."""
    try:
        configure_logging(_log_level())
        parser = _build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # `pdenas` alone: what it can do, and where to read more
            parser.print_usage(sys.stderr)
            print("pdenas: a command is needed; `pdenas --help` lists them with examples",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader went away (`pdenas studies | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (InputError, OSError) as error:  # anything else is a bug: its traceback
        # OSError: a file-system or storage fault (a missing file, permission, a full disk, a
        # read-only folder): the user's to fix, named with its path; nothing was lost.
        if isinstance(error, OSError) and error.filename is not None and error.strerror:
            message = f"{error.filename}: {error.strerror}"
        else:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not message.startswith("pdenas"):
            message = f"pdenas: error: {message}"
        print(message, file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
