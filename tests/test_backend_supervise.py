"""``backends._supervise``: how many worker processes a study's ``workers`` starts (a container's
CPU quota included), the one progress bar that follows them, and the signals the supervisor
passes on to them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pdenas.backends import _cpus, _supervise
from pdenas.backends._cpus import cgroup_cpu_quota
from pdenas.backends._supervise import RecordFollower, worker_count, worker_threads
from pdenas.runs import RunFolder, TrialRecord


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_supervise, "_cpu_cores", lambda: 4)


@pytest.mark.parametrize(("threads", "expected"), [(1, 4), (2, 2), (3, 1), (8, 1), (None, 1)])
def test_auto_is_one_worker_per_threads_cores_on_a_cpu(four_cores: None, threads: int | None,
                                                       expected: int) -> None:
    assert worker_count("auto", "cpu", threads, "optuna") == expected


def test_auto_on_a_gpu_is_one_worker(four_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_count("auto", "cuda", 1, "optuna") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_count("auto", "auto", 1, "optuna") == 1  # "auto" finds the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_count("auto", "auto", 1, "optuna") == 4  # and the CPU where there is none


@pytest.mark.parametrize(("workers", "device", "threads", "expected"), [
    (2, "cpu", None, 2), (3, "cpu", None, 1), (8, "cpu", None, 1),  # the cores shared
    (1, "cpu", None, None),  # one worker: torch's default, every core
    (2, "cpu", 3, 3),  # the study's own setting stands
    (2, "cuda", None, None)])
def test_workers_on_a_cpu_share_its_cores(four_cores: None, workers: int, device: str,
                                          threads: int | None, expected: int | None) -> None:
    assert worker_threads(workers, device, threads) == expected


def test_a_count_is_taken_as_it_is(four_cores: None) -> None:
    assert worker_count(3, "cuda", None, "optuna") == 3
    assert worker_count(1, "cpu", 1, "optuna") == 1


def test_ray_gets_one(four_cores: None) -> None:
    assert worker_count("auto", "cpu", 1, "ray") == 1
    assert worker_count(3, "cpu", 1, "ray") == 1


class _Bar:
    def __init__(self) -> None:
        self.started: tuple | None = None
        self.updates: list[tuple[int, str]] = []

    def start(self, done: int, total: int, best: float | None) -> None:
        self.started = (done, total, best)

    def update(self, record: TrialRecord) -> None:
        self.updates.append((record.number, str(record.status)))


def test_the_follower_reports_each_finished_trial_once(tmp_path) -> None:
    """One bar for several workers: trials finished before it started count as done, then each
    trial that reaches a final status that uses the budget is reported once; running and lost
    trials are not."""
    run = RunFolder(tmp_path)

    def write(number: int, status: str, accuracy: float | None = None) -> None:
        run.trial(number).write_record(TrialRecord(number=number, status=status,
                                                   val_accuracy=accuracy))

    write(0, "completed", 0.8)
    write(1, "stopped", 0.5)
    write(2, "running")
    bar = _Bar()
    follower = RecordFollower(run, bar, total=6, interval=3600)
    assert bar.started == (2, 6, 0.8)
    write(2, "completed", 0.9)
    write(3, "lost")
    write(4, "infeasible")
    follower()  # within the interval: nothing read
    assert bar.updates == []
    run.trial(5).path.mkdir(parents=True)
    run.trial(5).record_path.write_text("{not json")  # unreadable: skipped, read again later
    follower(force=True)
    assert bar.updates == [(2, "completed"), (4, "infeasible")]
    assert 3 in follower.seen  # over without using the budget: not read again
    write(5, "timeout", 0.7)
    follower(force=True)
    assert bar.updates == [(2, "completed"), (4, "infeasible"), (5, "timeout")]
    follower(force=True)
    assert len(bar.updates) == 3


# --- a container's CPU quota -------------------------------------------------------------------


def _cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "membership").write_text(membership)
    return root, tmp_path / "membership"


def test_the_quota_of_cgroup_v2_is_the_smallest_up_to_the_mount(tmp_path: Path) -> None:
    root, membership = _cgroups(tmp_path, "0::/job/step\n", {
        "job/cpu.max": "250000 100000\n", "job/step/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, membership) == 2.5  # the step has none; its job allows 2.5
    (root / "job/step/cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root, membership) == 1.5


def test_the_quota_of_cgroup_v1_and_a_container_that_sees_only_its_own(tmp_path: Path) -> None:
    # Docker on cgroup v1: the membership names the host's path, the mount is the container's.
    root, membership = _cgroups(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root, membership) == 2.0
    (root / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cgroup_cpu_quota(root, membership) is None


def test_no_quota_where_there_are_no_cgroups(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "no-membership") is None
    root, membership = _cgroups(tmp_path, "0::/\n", {"cpu.max": "not numbers\n"})
    assert cgroup_cpu_quota(root, membership) is None


@pytest.mark.parametrize(("quota", "expected"), [(None, 4), (2.0, 2), (1.5, 1), (0.5, 1), (64.0, 4)])
def test_auto_takes_the_quota_where_it_allows_fewer_cores(monkeypatch: pytest.MonkeyPatch,
                                                          quota: float | None, expected: int) -> None:
    monkeypatch.setattr(_cpus.os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: quota)
    assert worker_count("auto", "cpu", 1, "optuna") == expected


# --- signals: the supervisor passes them on to its workers, once ----------------------------------

_WORKER = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
sys.stderr = open(out / f"{os.getpid()}.stderr", "w", buffering=1)  # shown if a test fails
def record(what):
    with (out / f"{os.getpid()}.signals").open("a") as handle:
        handle.write(what + "\\n")
if sys.argv[2] == "raw":  # records every SIGINT it gets
    def interrupted(signum, frame):
        record("INT")
        time.sleep(0.5)  # a second SIGINT would come in here
        sys.exit(130)
    signal.signal(signal.SIGINT, interrupted)
    (out / f"{os.getpid()}.ready").write_text("")
    while True:
        time.sleep(0.05)
else:  # as a pdenas worker: follows its supervisor, stops as a search does
    from pdenas._interrupt import catch_interrupts
    from pdenas.backends._supervise import follow_supervisor
    follow_supervisor(int(sys.argv[sys.argv.index("--supervisor") + 1]))
    with catch_interrupts():
        try:
            (out / f"{os.getpid()}.ready").write_text("")
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            record("STOP")
            time.sleep(0.5)  # giving its trial back: another interrupt here would cut it short
            record("GAVE-BACK")
            sys.exit(130)
"""

_SUPERVISOR = """
import sys, threading, time
from pdenas.backends._supervise import run_workers
for _ in range(int(sys.argv[1])):  # idle threads, as a real supervisor has (tqdm's, torch's)
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
try:
    run_workers([sys.executable, *sys.argv[2:]], 2, None)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[list[int]]:
    """Process ids to kill after the test, whatever it asserted (no worker outlives it); only
    those still running this test's scripts, never a process that reused an id."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            if str(tmp_path) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


def _foreground_signals() -> None:
    """The signal dispositions of a terminal's foreground command, also when the suite itself
    was started with SIGHUP ignored (``nohup``), which its children would inherit."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _supervisor(tmp_path: Path, leftovers: list[int], worker: str = "raw", threads: int = 0
                ) -> tuple[subprocess.Popen, list[int]]:
    """A process running ``run_workers`` over two workers, once both are ready: "raw" ones
    record each SIGINT they get, "pdenas" ones stop as a search does and record it. The
    supervisor is the leader of a process group of its own, as a command that a shell runs in
    the foreground is (the group the terminal's Ctrl-C and Ctrl-Z go to)."""
    (tmp_path / "worker.py").write_text(_WORKER)
    (tmp_path / "supervisor.py").write_text(_SUPERVISOR)
    command = [sys.executable, str(tmp_path / "supervisor.py"), str(threads),
               str(tmp_path / "worker.py"), str(tmp_path), worker]
    supervisor = subprocess.Popen(command, process_group=0, preexec_fn=_foreground_signals)
    leftovers.append(supervisor.pid)
    deadline = time.monotonic() + 120
    while len(ready := list(tmp_path.glob("*.ready"))) < 2:
        assert time.monotonic() < deadline and supervisor.poll() is None, "workers never started"
        time.sleep(0.05)
    workers = [int(path.stem) for path in ready]
    leftovers.extend(workers)
    return supervisor, workers


def _signals(tmp_path: Path, pid: int) -> list[str]:
    path = tmp_path / f"{pid}.signals"
    return path.read_text().split() if path.exists() else []


def _story(tmp_path: Path, workers: list[int]) -> str:
    """What each worker wrote on stderr (for a failing assertion's message)."""
    return "; ".join(f"{pid}: {(tmp_path / f'{pid}.stderr').read_text()!r}" for pid in workers)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["ctrl-c", "kill -INT", "kill -TERM", "kill -HUP"])
def test_a_stop_signal_reaches_each_worker_once(tmp_path: Path, leftovers: list[int],
                                                how: str) -> None:
    """Ctrl-C in a terminal goes to the supervisor's process group; ``kill``, a scheduler or a
    closed terminal signal the supervisor alone. Either way each worker gets exactly one
    SIGINT (it gives its trial back), and the supervisor waits for them and exits as
    interrupted."""
    supervisor, workers = _supervisor(tmp_path, leftovers)
    # The terminal's signals reach the supervisor's group, not the workers: it passes them on
    # (had they both, a worker would get its Ctrl-C twice, the second in its giving back).
    assert all(os.getpgid(pid) not in (os.getpgid(supervisor.pid), os.getpgid(0))
               for pid in workers)
    if how == "ctrl-c":
        os.killpg(supervisor.pid, signal.SIGINT)
    else:
        os.kill(supervisor.pid, getattr(signal, "SIG" + how.split("-")[-1]))
    assert supervisor.wait(timeout=60) == 130
    for pid in workers:
        assert _signals(tmp_path, pid) == ["INT"], (how, _story(tmp_path, workers))
        assert _state(pid) == "gone"


def test_ctrl_z_stops_the_workers_with_the_supervisor_and_fg_resumes_them(
        tmp_path: Path, leftovers: list[int]) -> None:
    supervisor, workers = _supervisor(tmp_path, leftovers)
    os.killpg(supervisor.pid, signal.SIGTSTP)
    _wait_for(lambda: all(_state(pid) == "T" for pid in [supervisor.pid, *workers]))
    os.killpg(supervisor.pid, signal.SIGCONT)
    _wait_for(lambda: all(_state(pid) in "RS" for pid in [supervisor.pid, *workers]))
    os.kill(supervisor.pid, signal.SIGINT)
    assert supervisor.wait(timeout=60) == 130
    assert [_signals(tmp_path, pid) for pid in workers] == [["INT"], ["INT"]], _story(tmp_path,
                                                                                      workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("threads", [0, 8])
def test_workers_stop_when_their_supervisor_is_killed_outright(tmp_path: Path, leftovers: list[int],
                                                              threads: int) -> None:
    """``kill -9`` passes nothing on: Linux tells each worker (``follow_supervisor``), which
    gives its trial back whole, though it may be told once per thread of the supervisor."""
    supervisor, workers = _supervisor(tmp_path, leftovers, worker="pdenas", threads=threads)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    _wait_for(lambda: all(_state(pid) in ("gone", "Z") for pid in workers))
    assert [_signals(tmp_path, pid) for pid in workers] == [["STOP", "GAVE-BACK"]] * 2, _story(
        tmp_path, workers)
