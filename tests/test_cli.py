"""The `pdenas` command end to end: search, resume after kill -9, leaderboard, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdenas.cli import main

TINY_SPACE = """
description: tiny, for tests
families: [parabolic, hamiltonian, second_order, resnet]
num_units: 2
depth: {low: 1, high: 2}
width: {base: 8, growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
activation: relu
norm: tv
reversible: false
"""

TINY_STUDY = """
name: tiny
data: {{name: digits, train_limit: 240}}
space: tiny_space.yaml
train: {{epochs: {epochs}, batch_size: 64, optimizer: sgd, lr: 0.05}}
objectives: [val_accuracy, params]
sampler: random
n_trials: {n_trials}
device: cpu
seed: 0
"""


def write_study(folder: Path, n_trials: int = 4, epochs: int = 2, **extra: str) -> Path:
    (folder / "tiny_space.yaml").write_text(TINY_SPACE)
    path = folder / "tiny.yaml"
    text = TINY_STUDY.format(n_trials=n_trials, epochs=epochs)
    text += "".join(f"{k}: {v}\n" for k, v in extra.items())
    path.write_text(text)
    return path


REPO = Path(__file__).resolve().parents[1]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a `python -m pdenas.cli` child: this checkout first on its path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def pdenas(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pdenas.cli", *args], capture_output=True, text=True,
        env=child_env(env), cwd=cwd, timeout=600,
    )


def stored_trials(run: Path) -> list[dict]:
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run / 'study.db'}")
    return [{"number": t.number, "state": t.state.name, "params": t.params,
             "status": t.user_attrs.get("status")} for t in study.get_trials()]


def test_search_resume_and_leaderboard(tmp_path: Path) -> None:
    study = write_study(tmp_path, n_trials=4)
    run = tmp_path / "run"
    done = pdenas("search", str(study), "--out", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    trials = stored_trials(run)
    assert len(trials) == 4
    # one trial per family first, so every family is in the comparison
    assert sorted(t["params"]["family"] for t in trials) == sorted(
        ["parabolic", "hamiltonian", "second_order", "resnet"])
    for family in ("parabolic", "hamiltonian", "second_order", "resnet"):
        assert family in done.stdout
    for t in trials:
        assert (run / "trials" / str(t["number"]) / "record.json").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["study_name"] == "tiny" and info["backend"] == "optuna"

    # Rerunning with a larger budget tops up; finished trials are kept as they were.
    more = pdenas("search", str(study), "--out", str(run), "--n-trials", "6", "--quiet")
    assert more.returncode == 0, more.stderr
    again = stored_trials(run)
    assert len(again) == 6
    assert again[:4] == trials
    # The same budget again runs nothing new.
    same = pdenas("search", str(study), "--out", str(run), "--n-trials", "6", "--quiet")
    assert same.returncode == 0 and len(stored_trials(run)) == 6

    board = pdenas("leaderboard", str(run), "--csv", str(tmp_path / "board.csv"))
    assert board.returncode == 0, board.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "board.csv")
    records = {n: json.loads((run / "trials" / str(n) / "record.json").read_text())
               for n in range(6)}
    ranked = [n for n, r in records.items() if r["status"] == "completed"]
    assert sorted(table["number"]) == sorted(ranked) and ranked  # every ranked trial, no other
    for row in table.itertuples():
        record = records[row.number]
        assert row.val_accuracy == pytest.approx(record["val_accuracy"])
        assert row.params == record["cost"]["params"]
        assert row.family == record["architecture"]["family"]
    assert list(table["val_accuracy"]) == sorted(table["val_accuracy"], reverse=True) or (
        "pareto_rank" in table and list(table["pareto_rank"]) == sorted(table["pareto_rank"]))
    lines = board.stdout.splitlines()
    assert f"{len(records)} trials, {len(ranked)} ranked" in lines[0]
    assert len(lines) >= 2 + len(ranked)  # the header line, the table's header, one row each
    top = pdenas("leaderboard", str(run), "--top", "1")
    assert top.returncode == 0 and len(top.stdout.splitlines()) == 3, top.stdout


BLOCK_HOOK = """
import json, os, time
from pathlib import Path

import pdenas.train as _train

_real_fit = _train.fit


def _blocking_fit(model, data, config, device, callback=None, **kwargs):
    def hook(epoch, metrics):
        stop = callback(epoch, metrics) if callback is not None else False
        run, marker = Path(os.environ["PDENAS_TEST_RUN"]), Path(os.environ["PDENAS_TEST_BLOCKED"])
        done = [p for p in run.glob("trials/*/record.json")
                if json.loads(p.read_text())["status"] == "completed"]
        if len(done) >= 2 and not marker.exists():
            marker.touch()
            time.sleep(600)
        return stop

    return _real_fit(model, data, config, device, callback=hook, **kwargs)


_train.fit = _blocking_fit
"""
"""A ``sitecustomize`` for the child search of the kill -9 test: the first trial to end an epoch
once two trials have completed creates the marker file and blocks inside ``fit`` (its record
written, Optuna holding it RUNNING) until the test kills the process."""


def test_kill_9_then_resume_keeps_finished_trials(tmp_path: Path) -> None:
    """The search is killed where the test says, every time: the hook above blocks a trial once
    two have completed, and the kill comes only after its marker exists (no poll races the
    trial to its end)."""
    study = write_study(tmp_path, n_trials=5, epochs=3)
    run = tmp_path / "run"
    hooks, blocked = tmp_path / "hooks", tmp_path / "blocked"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BLOCK_HOOK)
    env = {"PDENAS_HEARTBEAT_INTERVAL": "1", "PDENAS_GRACE_PERIOD": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "pdenas.cli", "search", str(study), "--out",
                             str(run), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=child_env({**env, "PDENAS_TEST_RUN": str(run),
                                           "PDENAS_TEST_BLOCKED": str(blocked),
                                           "PYTHONPATH": f"{REPO}{os.pathsep}{hooks}"}))
    deadline = time.monotonic() + 300
    while not blocked.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert blocked.exists(), "the search ended or timed out before a trial blocked"
    before = {t["number"]: t for t in stored_trials(run) if t["state"] == "COMPLETE"}
    assert len(before) >= 2
    running = [t for t in stored_trials(run) if t["state"] == "RUNNING"]
    assert len(running) == 1  # the blocked trial, with its record written
    assert (run / "trials" / str(running[0]["number"]) / "record.json").is_file()
    killed = running

    resumed = pdenas("search", str(study), "--out", str(run), "--quiet", env=env)
    assert resumed.returncode == 0, resumed.stderr
    after = stored_trials(run)
    for number, trial in before.items():
        assert after[number] == trial  # finished trials untouched
    # A FAIL trial that says "completed" lost its worker between recording and telling Optuna.
    finished = [t for t in after if t["state"] in ("COMPLETE", "PRUNED")
                or (t["state"] == "FAIL" and t["status"] in ("diverged", "oom", "failed"))]
    assert len(finished) == 5
    assert not [t for t in after if t["state"] in ("RUNNING", "WAITING")]
    # the killed trial is "lost" and a copy with its parameters ran
    lost = json.loads((run / "trials" / str(killed[0]["number"]) / "record.json").read_text())
    assert lost["status"] == "lost"
    assert [t for t in after if t["params"] == killed[0]["params"]
            and t["number"] > killed[0]["number"] and t["state"] in ("COMPLETE", "PRUNED")]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ("colour: red\n", "colour: unknown key"),
        ("pruner: median\n", "pruner: removed; use early_stop.rule"),
        ("early_stop: sometimes\n", "early_stop.rule: got 'sometimes'"),
        ("sampler: {name: random, colour: red}\n", "sampler.colour: unknown option"),
        ("start_with: [{family: resnet}, {dpeth: 2}]\n",
         "start_with[1].dpeth: not a param of this space's candidates"),
        ("start_with: [{family: heat}]\n", "start_with[0].family: got 'heat'; allowed: "),
    ],
)
def test_bad_study_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, edit: str, needle: str,
                                                            capsys) -> None:
    study = write_study(tmp_path)
    study.write_text(study.read_text() + edit)
    run = tmp_path / "run"
    assert main(["search", str(study), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_bad_inputs_exit_2(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path)
    cases = [
        (["search", str(tmp_path / "nope.yaml")], "not found"),
        (["search", str(study), "--n-trials", "0"], "n-trials"),
        (["search", str(study), "--n-trials", "many"], "invalid int value"),
        (["search", str(study), "--storage", "not-a-url"], "storage"),
        (["search", str(study), "--backend", "ray", "--storage", "sqlite:///x.db"],
         "storage: is for the optuna backend"),
        (["search", str(study), "--backend", "hyperopt"], "backend: unknown 'hyperopt'; allowed: optuna, ray"),
        (["search", str(study), "--out", str(study)], "exists and is not a folder"),
        (["search", str(study), "--address", "auto"], "--address is for the ray backend"),
        (["search", str(study), "--workers", "0"],
         "--workers: got 0; allowed: an integer from 1 to 64, or auto"),
        (["search", str(study), "--workers", "all"], "--workers: got 'all'; allowed"),
        (["search", str(study), "--set", "workers=0"], "workers: got 0; allowed: an integer"),
        (["leaderboard", str(tmp_path)], "not a pdenas run folder"),
        (["frobnicate"], "invalid choice"),
    ]
    for argv, needle in cases:
        out = [] if "--out" in argv or argv[0] != "search" else ["--out", str(tmp_path / "run")]
        assert main([*argv, *out]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_missing_dataset_exits_2(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace(
        "data: {name: digits, train_limit: 240}", f"data: {{name: cifar10, root: {tmp_path / 'empty'}}}"))
    assert main(["search", str(study), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cifar10 not found" in err and "download" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_gives_the_trial_back_and_a_rerun_finishes_the_budget(tmp_path: Path, name: str,
                                                                     status: int) -> None:
    """Ctrl-C or ``kill`` while a trial trains: the trial is given back, the command exits as a
    shell reports that signal (130, 143), and a rerun finishes the budget."""
    study = write_study(tmp_path, n_trials=4, epochs=3)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pdenas.cli", "search", str(study), "--out",
                             str(run), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            trials = stored_trials(run)
        except Exception:  # the study is still being created
            trials = []
        done = [t for t in trials if t["state"] == "COMPLETE"]
        # a running trial with all its params suggested: it is training, not being built
        if done and any(t["state"] == "RUNNING" and len(t["params"]) >= len(done[0]["params"])
                        for t in trials):
            break
        time.sleep(0.1)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "run the same command to resume" in err
    assert "Traceback" not in err
    # given back as it was: one waiting trial (same number, same params), no failed trial and
    # no copy beside it in what optuna-dashboard and trials_dataframe() show
    given_back = [t for t in stored_trials(run) if t["state"] == "WAITING"]
    assert len(given_back) == 1 and given_back[0]["status"] == "queued", stored_trials(run)
    assert not [t for t in stored_trials(run) if t["state"] == "FAIL"]
    number, params = given_back[0]["number"], given_back[0]["params"]
    assert params
    record = run / "trials" / str(number) / "record.json"  # absent if stopped before training
    assert not record.exists() or json.loads(record.read_text())["status"] == "interrupted"

    resumed = pdenas("search", str(study), "--out", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    after = stored_trials(run)
    assert sum(t["status"] in ("completed", "stopped") for t in after) == 4
    assert [t["number"] for t in after] == [0, 1, 2, 3], after  # the trial itself ran again
    again = next(t for t in after if t["number"] == number)
    assert again["params"] == params and again["status"] in ("completed", "stopped"), again
    # and every family still had its first trial (the copy took no other family's place)
    assert {t["params"]["family"] for t in after if t["status"] in ("completed", "stopped")} == {
        "parabolic", "hamiltonian", "second_order", "resnet"}, after


def test_workers_share_one_study_on_this_machine(tmp_path: Path) -> None:
    """``--workers 2``: the study is created once, two processes share its exact budget, one
    progress bar follows them (the study's ``workers`` key takes the same path: the next test
    and tests/test_api.py)."""
    study = write_study(tmp_path, n_trials=4, epochs=3)  # trials long enough for both to start
    run = tmp_path / "run"
    done = pdenas("search", str(study), "--out", str(run), "--workers", "2",
                  env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    trials = stored_trials(run)
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    workers = {json.loads((run / "trials" / str(t["number"]) / "record.json").read_text())["worker"]
               for t in trials}
    assert len(workers) == 2  # both processes ran trials
    assert "study tiny: 4 trials" in done.stdout
    assert "4/4" in done.stderr  # one progress bar followed both
    bad = pdenas("search", str(study), "--out", str(run), "--workers", "2", "--backend", "ray")
    assert bad.returncode == 2 and "--workers: is for the optuna backend" in bad.stderr


def test_workers_flag_over_the_study_key_and_the_studys_timeout_reaches_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers`` wins over the study's ``workers`` (``--workers 1`` searches in this
    process); the workers get the study's ``timeout`` when no ``--timeout`` is given, and
    ``--workers auto`` is one per core on this CPU study with one thread."""
    from pdenas.backends import _orchestrate, _supervise

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = write_study(tmp_path, n_trials=2, epochs=1, workers=2, timeout=60, threads=1)
    started: list[tuple[int, float | None]] = []
    monkeypatch.setattr(_orchestrate, "run_workers",
                        lambda command, workers, timeout, poll=None: started.append(
                            (workers, timeout)) or [0] * workers)
    monkeypatch.setattr(_supervise, "_cpu_cores", lambda: 3)
    assert main(["search", str(study), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["search", str(study), "--out", str(tmp_path / "b"), "--quiet",
                 "--workers", "auto"]) == 0
    assert started == [(2, 60.0), (3, 60.0)]
    run = tmp_path / "c"
    assert main(["search", str(study), "--out", str(run), "--quiet", "--workers", "1"]) == 0
    assert len(started) == 2  # no workers started: this process searched
    records = [json.loads(p.read_text()) for p in (run / "trials").glob("*/record.json")]
    assert len(records) == 2 and {r["worker"].rsplit(":", 1)[1] for r in records} == {
        str(os.getpid())}


HOOKS = Path(__file__).resolve().parent / "hooks"  # sitecustomize.py: the hang


def test_a_hung_trial_is_ended_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    """A study with ``trial_timeout`` runs its trials in a supervised worker. The first trial
    blocks after one epoch (a call that never returns, installed by a ``sitecustomize`` in the
    child): its watchdog records it as ``timeout`` 1 s past the 12 s limit and ends the worker,
    a new worker trains the second trial, and the search ends normally. (12 s, not less: the
    first epoch must end inside the limit for the hang to begin, on a CI machine 1.8 times as
    slow.)"""
    study = write_study(tmp_path, n_trials=2, epochs=3, trial_timeout="12")
    run = tmp_path / "run"
    start = time.monotonic()
    done = pdenas("search", str(study), "--out", str(run),
                  env={"OMP_NUM_THREADS": "1", "PDENAS_HUNG_GRACE": "1",
                       "PDENAS_TEST_HANG_ONCE": str(tmp_path / "hung"),
                       "PYTHONPATH": f"{REPO}{os.pathsep}{HOOKS}"})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 200  # not the 600 s the hung call would take
    assert "worker 1 was restarted" in done.stderr
    records = [json.loads((run / "trials" / str(n) / "record.json").read_text()) for n in (0, 1)]
    assert records[0]["status"] == "timeout"
    assert records[0]["failure_reason"].startswith("hung: still running 1 s past the trial time limit (12 s)")
    assert records[0]["epochs_trained"] == 1 and (run / "trials" / "0" / "model.pt").is_file()
    assert records[1]["status"] in ("completed", "stopped", "timeout")
    assert records[0]["worker"] != records[1]["worker"]  # another process
    assert [t["state"] for t in stored_trials(run)] in (["PRUNED", "COMPLETE"], ["PRUNED", "PRUNED"])
    assert "study tiny: 2 trials" in done.stdout


def test_help_lists_every_study_key_from_the_config_classes(capsys) -> None:
    """The key list in ``pdenas search --help`` is generated from the configuration classes:
    every key a study file may set is named in its section, and no removed key is."""
    from pdenas._config import leaf_keys
    from pdenas.study import StudyConfig

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # the wrapped lines joined
    keys = text.split("study keys")[1].split("environment:")[0]
    for key in leaf_keys(StudyConfig):
        *sections, leaf = key.split(".")
        assert all(f"{s}.{{" in keys for s in sections) and leaf in keys, key
    for removed in StudyConfig.REMOVED:
        assert removed not in keys.replace(",", " ").split(), removed


def test_no_command_prints_usage_and_version_flags(capsys) -> None:
    """``pdenas`` alone prints its usage and where to read more (exit 2); ``-V`` its version."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pdenas") and "pdenas --help" in err
    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0 and capsys.readouterr().out.startswith("pdenas ")


def test_a_whole_number_written_as_a_float_is_an_integer(tmp_path: Path) -> None:
    """``--set constraints.max_params=1e6`` (YAML reads 1e6 as a float) sets the integer it
    names; a fraction for an integer key is refused, naming the --set item."""
    import pdenas
    from pdenas.study import parse_assignments

    config = pdenas.load_study("quickstart", parse_assignments(["constraints.max_params=1e6"]))
    assert config.constraints.max_params == 1_000_000
    assert isinstance(config.constraints.max_params, int)
    done = pdenas_cli_line(["search", "quickstart", "--set", "train.epochs=2.5",
                            "--out", str(tmp_path / "run")])
    assert done == "pdenas: error: --set train.epochs: got 2.5; allowed: an integer"
    assert not (tmp_path / "run").exists()


def pdenas_cli_line(argv: list[str]) -> str:
    """The one line ``pdenas ARGV`` prints on stderr for bad input (exit status 2)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_damaged_storage_is_one_line_naming_it(tmp_path: Path) -> None:
    """A study.db damaged in its middle: resuming is one line naming the storage and SQLite's
    cause (not SQLAlchemy's hundred-line chain), exit 2; the read commands still read the run."""
    study = write_study(tmp_path, n_trials=2, epochs=1)
    run = tmp_path / "run"
    assert main(["search", str(study), "--out", str(run), "--quiet"]) == 0
    db = run / "study.db"
    data = bytearray(db.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = b"\xff" * 4096
    db.write_bytes(bytes(data))
    line = pdenas_cli_line(["search", str(study), "--out", str(run), "--quiet", "--n-trials", "3"])
    assert line.startswith(f"pdenas: error: storage sqlite:///{db}: ")
    assert "malformed" in line or "not a database" in line
    assert main(["leaderboard", str(run)]) == 0
