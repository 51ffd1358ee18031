"""Tests for pdenas.compare and pdenas.plots: the family table, importances, the report and plots,
and the retraining comparison on a real (tiny) search run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from test_results import EPOCHS, FRONT, SPEC, make_synthetic_run

from pdenas.cli import main
from pdenas.compare import family_importances, family_table, format_family_table
from pdenas.compare._estimand import estimand_text
from pdenas.results import hypervolume_2d, load_run, load_trials
from pdenas.runs import RunFolder, TrialRecord, TrialStatus

PLOTS = ("pareto.png", "accuracy_vs_step_size.png", "accuracy_vs_depth.png", "training_curves.png",
         "history.png")

TINY_SPACE = """\
families: [parabolic, hamiltonian]
num_units: 2
depth: {low: 1, high: 2}
width: {base: [4, 8], growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
norm: tv
"""

TINY_STUDY = """\
name: tiny
data: {name: digits, train_limit: 300}
space: tiny_space.yaml
train: {epochs: 2, batch_size: 64, optimizer: adamw, lr: 0.02, clip_weights: 1.0,
        time_smoothness: 0.0, augment: false}
objectives: [val_accuracy, flops]
sampler: {name: random}
early_stop: {rule: none}
n_trials: 4
device: cpu
seed: 0
"""


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and do not stall a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("compare") / "run")


@pytest.fixture(scope="module")
def compared(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`pdenas compare` on the synthetic run: (output folder, what it printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("compare_out")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["compare", str(synthetic), "--out", str(out)]) == 0
    return out, buffer.getvalue()


def _row(table: pd.DataFrame, family: str) -> pd.Series:
    return table.set_index("family").loc[family]


def test_family_table_counts_statuses_per_family(synthetic: Path) -> None:
    table = family_table(load_trials(synthetic), "flops")
    assert list(table["family"]) == ["parabolic", "hamiltonian", "second_order", "resnet"]
    counts = table.set_index("family")[["trials", "finished", "stopped", "diverged", "failed"]]
    assert counts.loc["parabolic"].tolist() == [6, 6, 0, 0, 0]
    assert counts.loc["hamiltonian"].tolist() == [5, 3, 1, 1, 0]
    assert counts.loc["second_order"].tolist() == [3, 1, 1, 0, 1]  # infeasible counts as stopped
    assert counts.loc["resnet"].tolist() == [1, 0, 1, 0, 0]  # early-stopped; the running one is left out


def test_family_table_accuracy_budget_and_front(synthetic: Path) -> None:
    table = family_table(load_trials(synthetic), "flops")
    assert table.attrs["budget"] == pytest.approx(3.5e5)  # median FLOPs of the 10 finished trials
    parabolic = _row(table, "parabolic")
    assert parabolic["best_accuracy"] == pytest.approx(0.95)
    assert parabolic["median_accuracy"] == pytest.approx((0.75 + 0.83) / 2)
    assert parabolic["best_within_budget"] == pytest.approx(0.83)  # 0.90 and 0.95 cost more
    assert _row(table, "hamiltonian")["best_within_budget"] == pytest.approx(0.97)
    assert math.isnan(_row(table, "resnet")["best_accuracy"])  # 0.99 after 1 of 3 epochs is not ranked
    assert table.attrs["front_size"] == len(FRONT)
    assert table.set_index("family")["front_points"].tolist() == [2, 1, 1, 0]
    assert table["front_share"].iloc[:3].tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_hypervolume_contribution_is_what_the_front_loses_without_the_family(synthetic: Path) -> None:
    trials = load_trials(synthetic)
    table = family_table(trials, "flops")
    done = trials[trials["comparable"]]
    points = np.column_stack([-done["val_accuracy"], np.log10(done["flops"])])
    worst, best = points.max(axis=0), points.min(axis=0)
    reference = worst + 0.1 * (worst - best)
    total = hypervolume_2d(points, reference)
    assert table.attrs["hypervolume"] == pytest.approx(total)
    for family in ("parabolic", "hamiltonian", "second_order"):
        keep = (done["family"] != family).to_numpy()
        expected = total - hypervolume_2d(points[keep], reference)
        assert expected > 0
        assert _row(table, family)["hv_contribution"] == pytest.approx(expected)
    assert _row(table, "resnet")["hv_contribution"] == 0.0
    assert table["hv_share"].iloc[:3].sum() <= 1.0


def test_importance_needs_enough_trials_and_finds_the_step_size(synthetic: Path) -> None:
    table = family_importances(load_trials(synthetic)).set_index("family")
    parabolic = table.loc["parabolic"]
    assert parabolic[["h", "depth", "width"]].sum() == pytest.approx(1.0)
    assert parabolic["h"] > max(parabolic["depth"], parabolic["width"])  # accuracy rises with h
    assert table.loc["hamiltonian", "note"] == "n/a: 3 finished trials, needs 5"
    assert table.loc["second_order", "note"] == "n/a: 1 finished trial, needs 5"
    assert np.isnan(table.loc["resnet", "h"])


def test_compare_prints_the_tables_and_writes_csv_report_and_plots(compared: tuple[Path, str]) -> None:
    out, printed = compared
    lines = printed.splitlines()
    parabolic = next(line for line in lines if line.strip().startswith("parabolic"))
    assert parabolic.split()[:6] == ["parabolic", "6", "6", "0", "0", "0"]
    assert "95.0%" in parabolic and "2/4 (50.0%)" in parabolic
    assert "Equal cost budget: flops ≤ 0.35M" in printed
    assert "n/a: 3 finished trials, needs 5" in printed
    families = pd.read_csv(out / "families.csv")
    assert families["finished"].tolist() == [6, 3, 1, 0]
    assert pd.read_csv(out / "importance.csv")["family"].tolist()[0] == "parabolic"
    assert len(pd.read_parquet(out / "trials.parquet")) == len(SPEC)
    report = (out / "report.md").read_text()
    assert "| parabolic | 6 | 6 |" in report and "## Importance of h, depth and width" in report
    assert "The search did not balance the families (balance_families: false)" in report
    for name in PLOTS:
        assert f"]({name})" in report
        image = imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # drawn, not blank


@pytest.mark.parametrize(("value", "said"), [
    (True, "counted in trials (a count"),  # run.json files before the units
    ("trials", "counted in trials (a count"),
    ("flop_epochs", "counted in FLOP-epochs (FLOPs per image times epochs"),
    ("seconds", "counted in device seconds"),
])
def test_the_estimand_says_how_the_search_balanced_the_families(synthetic: Path, value: object,
                                                               said: str) -> None:
    info = load_run(synthetic)
    config = {**info["config"], "balance_families": value}
    text = estimand_text(load_trials(synthetic), {**info, "config": config})
    assert said in text and f"(balance_families: {'trials' if value is True else value})" in text
    assert "did not balance" not in text


def test_draws_skipped_as_too_long_are_not_trials_of_any_family(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = make_synthetic_run(tmp_path / "run")
    assert main(["compare", str(run), "--out", str(tmp_path / "before")]) == 0
    before = capsys.readouterr().out.splitlines()[0]
    folder = RunFolder(run)
    first = folder.trial(0).read_record()
    for number in (len(SPEC), len(SPEC) + 1):  # as TrialRunner.record_skipped writes them
        folder.trial(number).write_record(TrialRecord(
            number=number, status=TrialStatus.SKIPPED, architecture=first.architecture,
            train=first.train, failure_reason="predicted 900 s; 60 s left", epochs_planned=EPOCHS))
    assert main(["compare", str(run), "--out", str(tmp_path / "out")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == before.replace("), ", "), 2 draws skipped as too long for the time left, ", 1)
    assert header.startswith(f"study synthetic: {len(SPEC)} trials (")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "families.csv"),
                                  pd.read_csv(tmp_path / "before" / "families.csv"))
    assert f"Here B is this run: {len(SPEC)} trials" in (tmp_path / "out" / "report.md").read_text()


def test_compare_refuses_bad_input_with_one_line(tmp_path: Path, synthetic: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "not a pdenas run folder" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["compare", str(synthetic), "--seeds", "0", "--retrain-top", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--seeds: must be >= 1" in error
    assert not out.exists()  # nothing written


def test_formatted_family_table_shows_percentages(synthetic: Path) -> None:
    shown = format_family_table(family_table(load_trials(synthetic), "flops")).set_index("family")
    assert shown.loc["hamiltonian", "best acc"] == "97.0%"
    assert shown.loc["resnet", "best acc"] == "-" and shown.loc["resnet", "Pareto front"] == "0/4 (0.0%)"


def make_tiny_run(folder: Path) -> Path:
    """A real search in ``folder``: 4 trials of tiny parabolic/hamiltonian nets, 2 epochs on 300
    digits; returns the run folder."""
    (folder / "tiny_space.yaml").write_text(TINY_SPACE)
    (folder / "tiny.yaml").write_text(TINY_STUDY)
    run = folder / "run"
    assert main(["search", str(folder / "tiny.yaml"), "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def test_retrain_reports_mean_and_std_per_family(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    out = tiny_run / "cmp"
    code = main(["compare", str(tiny_run), "--out", str(out), "--retrain-top", "1", "--seeds", "2",
                 "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    trials = load_trials(tiny_run)
    families = sorted(trials.loc[trials["comparable"], "family"].unique())
    runs = pd.read_csv(out / "retrain_runs.csv")
    assert sorted(runs["family"].unique()) == families
    assert runs.groupby("family")["seed"].apply(list).tolist() == [[0, 1]] * len(families)
    assert runs["epochs"].eq(2).all() and runs["test_accuracy"].between(0, 1).all()
    summary = pd.read_csv(out / "retrain.csv").set_index("family")
    for family in families:
        mine = runs[runs["family"] == family]
        assert summary.loc[family, "runs"] == 2
        assert summary.loc[family, "test_mean"] == pytest.approx(mine["test_accuracy"].mean())
        assert summary.loc[family, "test_std"] == pytest.approx(mine["test_accuracy"].std())
        line = next(x for x in printed.splitlines() if x.strip().startswith(family) and "±" in x)
        assert f"{100 * summary.loc[family, 'test_mean']:.2f} ±" in line
    report = (out / "report.md").read_text()
    assert "## Retrained at the full budget" in report and "](retrain.png)" in report
    assert imread(out / "retrain.png")[..., :3].std() > 0.05
