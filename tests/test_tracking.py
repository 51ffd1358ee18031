"""Experiment tracking with the real libraries: a search sends every trial's params, per-epoch
metrics and costs to MLflow (a local SQLite store) and to TensorBoard (event files read back
with TensorBoard's EventAccumulator)."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import pytest

import pdenas
from pdenas.cli import main

from test_api import api_study

needs = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("tensorboard") is None,
    reason="needs pdenas[mlflow,tensorboard] (the dev extra installs them)")


@needs
def test_search_tracks_to_mlflow_and_tensorboard(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = pdenas.search(api_study(tmp_path), out=tmp_path / "run", n_trials=2, progress=False,
                        tracking={"mlflow": {"tracking_uri": uri},
                                  "tensorboard": {}})
    trials = run.trials().set_index("number")
    assert run.info["config"]["tracking"]["mlflow"]["tracking_uri"] == uri

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny_api")  # the study's name
    runs = {int(r.data.tags["pdenas.trial"]): r
            for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [0, 1]
    for number, logged in runs.items():
        row = trials.loc[number]
        assert logged.info.run_name == f"trial-{number}" and logged.info.status == "FINISHED"
        assert logged.data.tags["pdenas.status"] == row["status"] == "completed"
        assert logged.data.tags["pdenas.family"] == row["family"]
        assert logged.data.params["family"] == row["family"]
        assert logged.data.params["arch.depths"] == "[1, 1]"
        history = client.get_metric_history(logged.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [h["val_accuracy"] for h in row["history"]])
        assert logged.data.metrics["cost/params"] == row["params"]
        assert logged.data.metrics["cost/flops"] == row["flops"]
        assert logged.data.metrics["best_val_accuracy"] == pytest.approx(row["val_accuracy"])

    for number in (0, 1):
        events = EventAccumulator(str(run.path / "tensorboard" / f"trial-{number}"))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert {"val_accuracy", "train_loss", "cost/params", "best_val_accuracy"} <= set(tags)
        values = events.Scalars("val_accuracy")
        assert [e.step for e in values] == [1, 2]
        assert [e.value for e in values] == pytest.approx(
            [h["val_accuracy"] for h in trials.loc[number, "history"]], abs=1e-6)
        assert events.Scalars("cost/params")[0].value == trials.loc[number, "params"]


@needs
def test_track_flag_and_a_broken_tracker_never_fails_a_trial(tmp_path: Path, caplog) -> None:
    import yaml

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(api_study(tmp_path, n_trials=1)))
    out = tmp_path / "run"
    # --track names the tracker; its settings come from --set (a store MLflow cannot open)
    with caplog.at_level(logging.WARNING, logger="pdenas.tracking"):
        code = main(["search", str(study), "--out", str(out), "--quiet", "--track", "tensorboard",
                     "--track", "mlflow",
                     "--set", "tracking.mlflow.tracking_uri=nosuchscheme://nowhere"])
    assert code == 0
    record = pdenas.open_run(out).trials().iloc[0]
    assert record["status"] == "completed"  # the broken MLflow store only warned
    assert "MlflowObserver failed" in caplog.text
    assert (out / "tensorboard" / "trial-0").is_dir()


def test_a_tracker_without_its_package_is_bad_input(tmp_path: Path, monkeypatch, capsys) -> None:
    import pdenas.tracking as tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    assert main(["search", "quickstart", "--out", str(out), "--track", "mlflow"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("pdenas: error: --track mlflow: the mlflow package is not installed")
    assert not out.exists()
    with pytest.raises(ValueError, match=r"quickstart.yaml: tracking\.tensorboard\.logdir: unknown key; allowed: no keys"):
        pdenas.load_study("quickstart", {"tracking": {"tensorboard": {"logdir": "x"}}})
    with pytest.raises(ValueError, match=r"tracking\.tensorboard\.log_dir: removed; the event files go to RUN/tensorboard"):
        pdenas.load_study("quickstart", {"tracking": {"tensorboard": {"log_dir": "x"}}})


def test_a_tracking_server_that_is_down_costs_seconds_and_one_warning(tmp_path: Path, caplog) -> None:
    """MLflow's client retries each call for minutes: a server that does not answer is checked
    once (a few seconds), warned about once, and the trials run without it."""
    import socket

    from pdenas import tracking

    with socket.socket() as sock:  # a port on this machine where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    tracking._answers.pop(uri, None)
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="pdenas"):
        run = pdenas.search(api_study(tmp_path), out=tmp_path / "run", n_trials=2, progress=False,
                            tracking={"mlflow": {"tracking_uri": uri}})
    assert set(run.trials()["status"]) == {"completed"}
    assert time.monotonic() - start < 120  # not minutes per call
    warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0].getMessage()


def _in_a_terminal(args: list[str], env: dict[str, str], cwd: Path,
                   timeout: float = 300) -> str:
    """Runs ``args`` with stderr and stdout on a pseudo-terminal of 120 columns (so tqdm draws
    its bar as on a person's screen); returns all that the terminal got."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env=env, cwd=cwd, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, b"".join(chunks)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


@needs
@pytest.mark.slow
def test_mlflow_lines_never_land_on_the_progress_bar(tmp_path: Path) -> None:
    """A search tracked to MLflow on a terminal: MLflow's INFO lines ("Creating initial MLflow
    database tables...") are not shown by default; with ``PDENAS_LOG=INFO`` they are, with the
    time and the trial number, each on a line of its own above the bar."""
    import os
    import re
    import sys

    import yaml

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(api_study(tmp_path, n_trials=1)))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PDENAS_LOG"))} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pdenas", "search", str(study), "--track", "mlflow"]
    for level, out in (("WARNING", "quiet"), ("INFO", "told")):
        uri = f"sqlite:///{tmp_path / out}.db"  # a fresh store: MLflow creates its tables
        screen = _in_a_terminal(command + ["--out", str(tmp_path / out), "--set",
                                           f"tracking.mlflow.tracking_uri={uri}"],
                                env | {"PDENAS_LOG": level}, tmp_path)
        pieces = [p for p in re.split(r"[\r\n]+", screen) if p.strip()]
        assert any("search tiny_api: 100%" in p for p in pieces), screen  # the bar was drawn
        for piece in pieces:  # nothing of MLflow's on the bar's line
            assert not ("search tiny_api" in piece and "mlflow" in piece.lower()), piece
        told = [p for p in pieces if "mlflow" in p.lower()]
        if level == "WARNING":
            assert told == [], told
        else:
            assert any(re.fullmatch(r"\d\d:\d\d:\d\d INFO trial 0 mlflow\.store\.db\.utils: "
                                    r"Creating initial MLflow database tables\.\.\.", p.strip())
                       for p in told), told


@needs
def test_mlflow_view_run_lines_are_log_lines(tmp_path: Path, capsys) -> None:
    """The "🏃 View run" lines MLflow prints to stdout for a tracking server become INFO lines
    of the ``mlflow`` logger (shown with ``PDENAS_LOG=INFO``), not a print across the bar."""
    from pdenas.runs import TrialRecord, TrialStatus
    from pdenas.tracking import MlflowObserver, MlflowTracking

    class Client:
        def log_batch(self, *args, **kwargs) -> None:
            pass

        def set_terminated(self, run_id: str, status: str) -> None:
            print(f"🏃 View run trial-3 at: http://127.0.0.1:5000/#/experiments/1/runs/{run_id}")

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.levelname} {record.getMessage()}")

    observer = MlflowObserver(MlflowTracking(), "tiny", tmp_path)
    observer.client, observer.run_id = Client(), "abc"
    logger, lines = logging.getLogger("mlflow.tracking"), Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        observer.trial_finished(TrialRecord(number=3, status=TrialStatus.COMPLETED))
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert capsys.readouterr().out == ""
    assert lines.lines == [
        "INFO 🏃 View run trial-3 at: http://127.0.0.1:5000/#/experiments/1/runs/abc"]
