"""The README's notebook use, run headless as Jupyter would run it (nbclient and ipykernel): a
search in a notebook shows one progress widget with ipywidgets (the ``notebook`` extra), and
without ipywidgets readable lines, one per finished trial, with no TqdmWarning and no widget."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(name) is None
                           for name in ("nbclient", "nbformat", "ipykernel", "ipywidgets")),
                       reason="needs nbclient, nbformat, ipykernel, ipywidgets (the dev extra)"),
]

WIDGET = "application/vnd.jupyter.widget-view+json"
CELL_SECONDS = 600
"""nbclient's limit for one cell (the search trains two small candidates in well under it)."""


def _run_notebook(folder: Path, monkeypatch: pytest.MonkeyPatch, *, widgets: bool) -> list:
    """Executes the notebook in a fresh kernel of this interpreter; returns its cells."""
    import nbformat
    from nbclient import NotebookClient

    kernels = folder / "jupyter" / "kernels" / "pdenas-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pdenas test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(folder / "jupyter"))  # this kernel, no other
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cells = [] if widgets else [nbformat.v4.new_code_cell(
        'import sys\nsys.modules["ipywidgets"] = None  # as if not installed')]
    cells += [
        nbformat.v4.new_code_cell(  # the README's search, with two trials of two epochs
            "import pdenas\n"
            'run = pdenas.search("quickstart", n_trials=2, out="runs/nb", train={"epochs": 2})'),
        nbformat.v4.new_code_cell('print(sorted(run.trials()["status"]), run.best())'),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(notebook, timeout=CELL_SECONDS, kernel_name="pdenas-test",
                   resources={"metadata": {"path": str(folder)}}).execute()
    return notebook.cells[-2:]


def _text(output: dict) -> str:
    return output.get("text") or "".join(str(v) for v in output.get("data", {}).values())


def test_a_notebook_with_ipywidgets_shows_one_widget(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    search, result = _run_notebook(tmp_path, monkeypatch, widgets=True)
    widgets = [o for o in search.outputs if WIDGET in o.get("data", {})]
    assert len(widgets) == 1, search.outputs
    assert "search quickstart" in widgets[0]["data"]["text/plain"]
    assert not any("Warning" in _text(o) for o in search.outputs), search.outputs
    assert not any(o["output_type"] == "stream" for o in search.outputs), search.outputs
    assert "['completed', 'completed']" in _text(result.outputs[0])


def test_a_notebook_without_ipywidgets_gets_readable_lines(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    search, result = _run_notebook(tmp_path, monkeypatch, widgets=False)
    assert not any(WIDGET in o.get("data", {}) for o in search.outputs), search.outputs
    text = "".join(_text(o) for o in search.outputs)
    assert "Warning" not in text and "IProgress" not in text and "\r" not in text, text
    lines = text.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d search quickstart: 0 of 2 trials done", lines[0]), text
    for number in (0, 1):
        assert any(re.fullmatch(rf"\d\d:\d\d:\d\d trial {number} \w+ completed: val [\d.]+ %, "
                                rf"2 of 2 epochs, [\d.]+ s \[{number + 1}/2\]", line)
                   for line in lines), text
    assert "['completed', 'completed']" in _text(result.outputs[0])
