"""The roads users walk, as they walk them: the installed ``pdenas`` command as a subprocess on
every backend, with the study's own sampler and early stopping (the quickstart's NSGA-II and
MO-ASHA), Ray started by the command itself or joined with ``--address``; the one road the
command and ``pdenas.search`` share (the same errors, workers for a study given as a mapping).

Each test starts from nothing of its own: no Ray runtime in the test process, no environment
variable set for pdenas; every command runs under a timeout (a test that needs Ray fails under CI
when it is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import missing_service

SPACE = """\
description: two cheap families, for tests
families: [hamiltonian, resnet]
num_units: 2
depth: 1
width: {base: 8, growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
norm: batch
"""

STUDY = """\
name: roads
data: {name: digits, train_limit: 300}
space: space.yaml
train: {epochs: 2, batch_size: 64, augment: false}
objectives: [val_accuracy, flops]
sampler: {name: nsga2, population_size: 4}
early_stop: {rule: mo_asha, min_epochs: 1}
n_trials: 2
device: cpu
seed: 0
threads: 1
ray: {cpus_per_trial: 1}
"""


def ray_or_fail() -> None:
    """Ray must be installed: skipped without it on a developer machine, failed under CI."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        missing_service("ray[tune] is not installed (pip install -e '.[ray]')")


def _pdenas() -> str:
    """The console script of the environment running the tests (as ``pip install`` made it)."""
    found = Path(sys.executable).with_name("pdenas")
    if not found.is_file():
        pytest.fail(f"no pdenas command beside {sys.executable}: install the package "
                    "(pip install -e .)", pytrace=False)
    return str(found)


def _study(folder: Path) -> Path:
    (folder / "space.yaml").write_text(SPACE)
    path = folder / "roads.yaml"
    path.write_text(STUDY)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDENAS_")}
    return {**env, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


def _run(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([_pdenas(), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _ranked(done: subprocess.CompletedProcess, run: Path, n: int) -> None:
    """The command finished, printed its leaderboard and recorded ``n`` finished trials."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"study roads: {n} trials" in done.stdout, done.stdout[-2000:]
    records = [json.loads(p.read_text()) for p in sorted(run.glob("trials/*/record.json"))]
    assert len(records) == n
    assert {r["status"] for r in records} <= {"completed", "stopped"}
    board = _run("leaderboard", str(run), cwd=run.parent)
    assert board.returncode == 0 and "rank" in board.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_search_on_ray_starts_its_own_runtime(tmp_path: Path) -> None:
    """``pdenas search STUDY --backend ray``: the command starts Ray, runs the study's NSGA-II
    sampler (whose lock once made ``tune.Tuner`` fail to pickle it), ranks the trials, with its
    bar. (``--quiet`` on a runtime of its own: ``test_backend_ray``'s hung trial; on a joined
    one: the next test.)"""
    ray_or_fail()
    study = _study(tmp_path)
    done = _run("search", str(study), "--backend", "ray", "--out", str(tmp_path / "run"),
                cwd=tmp_path)
    _ranked(done, tmp_path / "run", 2)
    assert "search roads" in done.stderr  # the bar


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_search_on_ray_joins_a_ray_start_head_runtime(tmp_path: Path) -> None:
    """``ray start --head``, then ``pdenas search --backend ray --address HOST:PORT``: the
    command joins that runtime (and leaves it running), twice, topping the study up."""
    ray_or_fail()
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # socket paths: at most 107 bytes
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", str(temp)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # the head is up once its GCS port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, head.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "ray start --head did not come up"
                time.sleep(0.5)
        study = _study(tmp_path)
        run = tmp_path / "run"
        first = _run("search", str(study), "--backend", "ray", "--address", address,
                     "--out", str(run), "--quiet", cwd=tmp_path)
        _ranked(first, run, 2)
        more = _run("search", str(study), "--backend", "ray", "--address", address,
                    "--out", str(run), "--quiet", "--n-trials", "3", cwd=tmp_path)
        _ranked(more, run, 3)
        assert head.poll() is None  # a runtime the command joined is left running
    finally:
        with_suppressed_lookup(lambda: os.killpg(head.pid, signal.SIGTERM))
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with_suppressed_lookup(lambda: os.killpg(head.pid, signal.SIGKILL))
        shutil.rmtree(temp, ignore_errors=True)


def with_suppressed_lookup(action) -> None:
    try:
        action()
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_search_with_two_workers_as_typed(tmp_path: Path) -> None:
    """``pdenas search STUDY --workers 2``: two ``pdenas worker`` processes share the budget and
    one bar follows them; the leaderboard ranks what they trained."""
    study = _study(tmp_path)
    done = _run("search", str(study), "--workers", "2", "--n-trials", "3",
                "--out", str(tmp_path / "run"), cwd=tmp_path)
    _ranked(done, tmp_path / "run", 3)
    workers = {json.loads(p.read_text())["worker"]
               for p in (tmp_path / "run").glob("trials/*/record.json")}
    assert len(workers) >= 1
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["timeout"] is None  # run.json keeps the study, not a worker's time left


def test_bad_input_is_one_line_and_a_bug_is_a_traceback(tmp_path: Path) -> None:
    """Exit 2 and one line naming what the user typed, for a flag, a ``--set`` item and a
    study file's key; nothing written. Anything else is a bug: exit 1 with its traceback."""
    study = _study(tmp_path)
    cases = [
        (["--n-trials", "0"], "pdenas: error: --n-trials: got 0"),
        (["--set", "train.epochs=0"], "pdenas: error: --set train.epochs: got 0"),
        (["--workers", "2", "--backend", "ray"], "pdenas: error: --workers: is for the optuna"),
    ]
    for flags, line in cases:
        done = _run("search", str(study), "--out", str(tmp_path / "run"), *flags, cwd=tmp_path)
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
        assert done.stderr.startswith(line), (flags, done.stderr)
    (tmp_path / "bad.yaml").write_text(STUDY.replace("n_trials: 2", "n_trials: -1"))
    done = _run("search", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert done.returncode == 2 and "bad.yaml: n_trials: got -1" in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    # A bug (here a TypeError planted in the leaderboard's formatting) is not bad input.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import pdenas.results as r\n"
        "def broken(*a, **k):\n    raise TypeError('a bug')\n"
        "r.load_run = broken\n")
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "run").mkdir()
    done = subprocess.run([_pdenas(), "leaderboard", str(tmp_path / "run")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "TypeError: a bug" in done.stderr
