"""What a search shows: a bar where someone watches, lines where the output is kept (a pipe, a
file), with the time, each finished trial and a heartbeat of the running ones; log lines with
the time and the trial number."""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

from pdenas._progress import LineProgress, TqdmProgress, make_progress
from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import StudyConfig

STAMP = r"\d\d:\d\d:\d\d "


def test_a_pipe_gets_lines_a_terminal_a_bar_and_quiet_nothing(tmp_path: Path) -> None:
    config = StudyConfig(name="lines")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_progress(config, tmp_path, stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress(config, tmp_path, stream=Terminal()), TqdmProgress)
    quiet = make_progress(config, tmp_path, quiet=True, stream=io.StringIO())
    assert isinstance(quiet, TqdmProgress) and quiet.quiet


def test_lines_name_each_finished_trial_and_beat_for_running_ones(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    running = TrialRecord(number=4, status=TrialStatus.RUNNING, epochs_planned=8,
                          epochs_trained=3, val_accuracy=0.912, seconds=42.0,
                          architecture={"family": "parabolic"})
    run.trial(4).write_record(running)
    out = io.StringIO()
    progress = LineProgress(StudyConfig(name="lines"), tmp_path, out, interval=0.05)
    progress.start(2, 10, 0.9)
    deadline = time.monotonic() + 10
    while "running" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    done = TrialRecord(number=4, status=TrialStatus.COMPLETED, epochs_planned=8,
                       epochs_trained=8, val_accuracy=0.955, seconds=61.5,
                       architecture={"family": "parabolic"})
    progress.update(done)
    progress.close()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(STAMP + r"search lines: 2 of 10 trials done, best 90.00 %", lines[0])
    assert any(re.fullmatch(STAMP + r"trial 4 parabolic running: epoch 3 of 8, val 91.20 % so "
                                    r"far, 42 s", line) for line in lines)
    assert re.fullmatch(STAMP + r"trial 4 parabolic completed: val 95.50 %, 8 of 8 epochs, "
                                r"61.5 s \[3/10\]", lines[-1])
    assert progress.best == 0.955


def test_log_lines_carry_the_time_and_the_trial(capsys) -> None:
    from pdenas._log import TRIAL, configure

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        configure("INFO")
        token = TRIAL.set(7)
        logging.getLogger("pdenas.train").info("epoch 1")
        TRIAL.reset(token)
        logging.getLogger("pdenas").info("between trials")
    finally:
        root.handlers, root.level = handlers, level
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(STAMP + r"INFO trial 7 pdenas.train: epoch 1", err[0])
    assert re.fullmatch(STAMP + r"INFO trial - pdenas: between trials", err[1])
