"""``pdenas compare RUN RUN`` of runs on different data: one warning line naming both data sets,
and the report and the runs table say so (the shared hypervolume reference is not silent)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from test_results import make_synthetic_run

import pdenas
from pdenas.cli import main
from pdenas.compare._runs import data_differences


def _on(run: Path, study: str, **data: object) -> Path:
    """The run, renamed ``study``, as if its study had had these data settings."""
    info = json.loads((run / "run.json").read_text())
    info["study_name"] = info["config"]["name"] = study
    info["config"]["data"].update(data)
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_runs_on_different_data_are_compared_with_one_warning_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = _on(make_synthetic_run(tmp_path / "a"), "quickstart")
    fashion = _on(make_synthetic_run(tmp_path / "b"), "fashion_mnist_cpu", name="fashion_mnist",
                  train_limit=15000, root="/usr/share/datasets/fashion-mnist")
    out = tmp_path / "cmp"
    assert main(["compare", str(digits), str(fashion), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "pdenas compare: warning: the runs are on different data (quickstart: digits "
        "(train_limit 300); fashion_mnist_cpu: fashion_mnist (train_limit 15000)): their "
        "accuracies are measured on different images, and so are their fronts and "
        "hypervolumes\n")
    assert "digits (train_limit 300)" in captured.out  # the runs table's data column
    report = (out / "report.md").read_text()
    assert "**Different data:** the runs are on different data (quickstart: digits" in report
    assert "one reference point for all runs" in report
    assert "(shared although the runs' data differ)" in report
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["data"]) == ["digits (train_limit 300)", "fashion_mnist (train_limit 15000)"]

    # From Python (no echo): the same line as a warning of the pdenas logger
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pdenas.compare")
    logger.addHandler(handler)
    try:
        comparison = pdenas.open_run(digits).compare(fashion, out=tmp_path / "cmp2")
    finally:
        logger.removeHandler(handler)
    assert [r.levelname for r in records] == ["WARNING"]
    assert "fashion_mnist_cpu: fashion_mnist (train_limit 15000)" in records[0].getMessage()
    assert capsys.readouterr().err == ""
    assert list(comparison.tables["runs"]["data"])[1] == "fashion_mnist (train_limit 15000)"


def test_runs_on_the_same_data_get_no_warning(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    a = make_synthetic_run(tmp_path / "a")
    b = _on(make_synthetic_run(tmp_path / "b"), "other", root="/elsewhere", download=True)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().err == ""
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "Different data" not in report and "data differ" not in report
    assert list(pd.read_csv(tmp_path / "cmp" / "runs.csv")["data"]) == ["digits", "digits"]


def test_data_differences_names_only_what_differs() -> None:
    digits = {"data": {"name": "digits", "val_fraction": 0.2, "train_limit": None}}
    assert data_differences([digits, digits]) is None
    assert data_differences([digits, {"data": {"name": "mnist", "val_fraction": 0.2,
                                               "train_limit": None}}]) == ["digits", "mnist"]
    split = {"data": {"name": "digits", "val_fraction": 0.3, "train_limit": None}}
    assert data_differences([digits, split]) == ["digits (val_fraction 0.2)",
                                                 "digits (val_fraction 0.3)"]
