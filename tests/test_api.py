"""The Python API (pdenas.search, open_run, Run), several runs compared, the command's new
surface (--version, python -m pdenas, studies, --set, --help), and the shipped package data."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import pdenas
from pdenas.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY_SPACE = """
description: tiny, for tests
families: [parabolic, resnet]
num_units: 2
depth: 1
width: {base: 8, growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
activation: relu
norm: tv
reversible: false
"""


def api_study(folder: Path, **changes) -> dict:
    (folder / "tiny_space.yaml").write_text(TINY_SPACE)
    study = {"name": "tiny_api", "data": {"name": "digits", "train_limit": 200},
             "space": str(folder / "tiny_space.yaml"),
             "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05},
             "objectives": ["val_accuracy", "params"], "sampler": "random", "n_trials": 2,
             "device": "cpu", "seed": 0}
    return {**study, **changes}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pdenas.Run, pdenas.Run]:
    folder = tmp_path_factory.mktemp("api")
    a = pdenas.search(api_study(folder), out=folder / "a", n_trials=3, train={"epochs": 1},
                      progress=False)
    b = pdenas.search(api_study(folder, name="tiny_other"), out=folder / "b", seed=5,
                      progress=False)
    return a, b


def test_search_applies_overrides_and_reads_back(two_runs: tuple[pdenas.Run, pdenas.Run]) -> None:
    run, other = two_runs
    trials = run.trials()
    assert isinstance(trials, pd.DataFrame) and list(trials["number"]) == [0, 1, 2]
    assert (trials["epochs_planned"] == 1).all()  # train={"epochs": 1} merged into the study
    assert run.config.n_trials == 3 and run.config.train.lr == 0.05  # the rest kept
    assert (other.trials()["epochs_planned"] == 2).all() and other.config.seed == 5

    best = run.best()
    done = trials[trials["status"] == "completed"]
    top = done.sort_values(["val_accuracy", "params", "number"], ascending=[False, True, True])
    assert best == int(top.iloc[0]["number"])
    front = run.pareto()
    assert int(front.iloc[0]["number"]) == best and (front["pareto_rank"] == 1).all()
    assert set(front["number"]) <= set(run.leaderboard()["number"])

    again = pdenas.open_run(run.path)
    pd.testing.assert_frame_equal(again.trials(), trials)
    assert repr(again) == f"Run({str(run.path)!r})"


def test_export_from_python_loads_with_torch_export(two_runs, tmp_path: Path) -> None:
    run, _ = two_runs
    folder = run.export(formats=["pt", "pt2"], out=tmp_path / "export", device="cpu")
    assert folder == tmp_path / "export"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "card.md", "model.pt", "model.pt2"]
    assert run.last_card["source"]["trial"] == run.best()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = pdenas.load_model(folder)(x)
        got = torch.export.load(str(folder / "model.pt2")).module()(x)
    assert torch.allclose(got, want, atol=1e-5)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"^train\.epochs: got 'x'; allowed: an integer$"):
        pdenas.search(api_study(tmp_path), out=out, train={"epochs": "x"}, progress=False)
    with pytest.raises(ValueError, match=r"train\.epoch: unknown key; allowed: epochs"):
        pdenas.search(api_study(tmp_path), out=out, train={"epoch": 3}, progress=False)
    with pytest.raises(ValueError, match="no such study file or shipped study; shipped: .*quickstart"):
        pdenas.search("no_such_study", out=out)
    assert not out.exists()
    with pytest.raises(ValueError, match="not a pdenas run"):
        pdenas.open_run(tmp_path)


def test_load_study_from_a_shipped_name_with_overrides() -> None:
    config = pdenas.load_study("quickstart", {"train": {"epochs": 3}, "n_trials": 4})
    assert config.name == "quickstart" and config.train.epochs == 3 and config.n_trials == 4
    assert config.train.batch_size == 64  # the file's other keys stay
    assert Path(config.path).name == "quickstart.yaml"


def test_compare_several_runs(two_runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = two_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(a.path), str(b.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_api" in printed and "tiny_other" in printed
    assert {p.name for p in out.iterdir()} == {"report.md", "runs.csv", "families.csv",
                                               "hypervolume.csv", "fronts.png", "hypervolume.png"}
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["run"]) == ["tiny_api", "tiny_other"] and list(runs["trials"]) == [3, 2]
    families = pd.read_csv(out / "families.csv").set_index("family")
    for run, label in ((a, "tiny_api"), (b, "tiny_other")):
        done = run.trials().query("status == 'completed'")
        for family, rows in done.groupby("family"):
            assert families.loc[family, label] == pytest.approx(rows["val_accuracy"].max())
    curves = pd.read_csv(out / "hypervolume.csv")
    for label, group in curves.groupby("run"):
        assert list(group["trials"]) == list(range(1, len(group) + 1))
        assert group["hypervolume"].is_monotonic_increasing and (group["wall_seconds"] >= 0).all()
        assert group["wall_seconds"].is_monotonic_increasing
    assert set(curves["run"]) == {"tiny_api", "tiny_other"}
    # The same through the API, with the tables as DataFrames
    comparison = a.compare(b, out=tmp_path / "cmp2")
    assert comparison.report.is_file() and set(comparison.tables) == {"runs", "families", "hypervolume"}
    # bad input: one run twice, or --retrain-top with several runs
    assert main(["compare", str(a.path), str(a.path)]) == 2
    assert "named twice" in capsys.readouterr().err
    assert main(["compare", str(a.path), str(b.path), "--retrain-top", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_hypervolume_curve_follows_finish_times() -> None:
    from pdenas.compare._runs import hypervolume_curve

    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    trials = pd.DataFrame({
        "number": [0, 1, 2], "status": ["completed", "completed", "failed"],
        "val_accuracy": [0.5, 0.9, None], "flops": [100.0, 1000.0, None],
        "epochs_trained": [2, 2, 0], "epochs_planned": [2, 2, 2], "comparable": [True, True, False],
        "datetime_start": [t0, t0, t0],
        "datetime_complete": [t0 + pd.Timedelta(seconds=30), t0 + pd.Timedelta(seconds=10),
                              t0 + pd.Timedelta(seconds=20)]})
    curve = hypervolume_curve(trials, "flops", reference=(0.0, 4.0))
    assert list(curve["number"]) == [1, 2, 0] and list(curve["wall_seconds"]) == [10.0, 20.0, 30.0]
    # trial 1 alone: 0.9 x (4 - 3) decades; with trial 0 also: + 0.5 x (3 - 2)
    assert list(curve["hypervolume"]) == pytest.approx([0.9, 0.9, 0.9 + 0.5])


# --- the command -------------------------------------------------------------------------------
def _pdenas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "pdenas", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_python_m_pdenas_version_and_help(tmp_path: Path) -> None:
    done = _pdenas("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"pdenas {pdenas.__version__}"
    assert pdenas.__version__ == importlib.metadata.version("pdenas")
    text = _pdenas("--help", cwd=tmp_path).stdout
    for word in ("examples:", "pdenas search quickstart", "--set", "PDENAS_HEARTBEAT_INTERVAL",
                 "PDENAS_GRACE_PERIOD", "PDENAS_LOG", "RAY_AUTH_MODE", "tracking"):
        assert word in text, word
    assert "--set KEY=VALUE" in _pdenas("search", "--help", cwd=tmp_path).stdout


def test_studies_lists_shipped_studies_with_descriptions(capsys: pytest.CaptureFixture) -> None:
    assert main(["studies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split()[0]: line for line in lines if line and not line.startswith("run one")}
    assert {"quickstart", "cifar10", "fashion_mnist", "stl10_paper", "ray_cluster"} <= set(names)
    assert "8x8 digits" in names["quickstart"]


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epochs=abc"], "train.epochs: got 'abc'; allowed: an integer"),
    (["--set", "train.nope=1"], "train.nope: unknown key; allowed: epochs"),
    (["--set", "epochs"], "--set 'epochs': expected KEY=VALUE"),
    (["--set", "objectives=[val_accuracy, colour]"], "objectives: got ['val_accuracy', 'colour']"),
    (["--n-trials", "0"], "--n-trials: got 0; allowed: an integer from 1 to 1000000"),
    (["--track", "wandb"], "--track: unknown tracker 'wandb'; allowed: mlflow, tensorboard"),
])
def test_search_bad_overrides_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["search", "quickstart", "--out", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error
    assert not out.exists()


def test_set_types_values_by_the_schema() -> None:
    from pdenas.study import parse_assignments

    values = parse_assignments(["train.lr=1e-3", "train.epochs=3", "timeout=null",
                                "constraints.max_params=5000", "data.name=digits",
                                "sampler=tpe"])
    config = pdenas.load_study("quickstart", values)
    assert config.train.lr == 0.001 and config.train.epochs == 3 and config.timeout is None
    assert config.constraints.max_params == 5000 and config.sampler == "tpe"


def test_leaderboard_csv_holds_json(two_runs, tmp_path: Path) -> None:
    run, _ = two_runs
    path = tmp_path / "board.csv"
    assert main(["leaderboard", str(run.path), "--csv", str(path)]) == 0
    board = pd.read_csv(path)
    for column in ("depths", "widths"):
        values = [json.loads(v) for v in board[column]]
        assert all(isinstance(v, list) for v in values), board[column]
    assert "(" not in path.read_text()  # no Python tuple reprs


def test_cmaes_is_refused_for_several_objectives() -> None:
    from pdenas.backends._sampling import check_names

    config = pdenas.load_study("quickstart", {"sampler": "cmaes"})
    with pytest.raises(ValueError, match=r"^sampler: cmaes optimises one objective.*allowed"):
        check_names(config)
    from pdenas.study import EarlyStop

    one = config.replace(objectives=("val_accuracy",), early_stop=EarlyStop(rule="asha"))
    check_names(one)  # one objective: fine (MO-ASHA, the quickstart's rule, needs a cost)


# --- package data ------------------------------------------------------------------------------
def test_shipped_files_are_package_data_and_top_level_paths_are_the_same_files() -> None:
    from pdenas._resources import shipped_file, shipped_names

    for kind in ("studies", "search_spaces"):
        top, package = ROOT / kind, ROOT / "pdenas" / kind
        # the top-level folder is a link to the package's, so the two can never drift apart
        assert top.is_symlink() and top.resolve() == package.resolve()
        names = shipped_names(kind)
        assert names == sorted(p.stem for p in package.glob("*.yaml")) and names
        for name in names:
            assert shipped_file(kind, name).read_bytes() == (top / f"{name}.yaml").read_bytes()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"studies/*.yaml", "search_spaces/*.yaml"' in pyproject and "py.typed" in pyproject
    assert (ROOT / "pdenas" / "py.typed").is_file()
    # every shipped study loads, and its space is a shipped one
    from pdenas.space import available_spaces

    for name in shipped_names("studies"):
        config = pdenas.load_study(name)
        assert config.description and config.space in available_spaces()


def test_the_cards_search_command_reproduces_the_overrides(tmp_path: Path) -> None:
    import shlex

    from pdenas.export._card import _commands
    from pdenas.study import parse_assignments

    config = pdenas.load_study("quickstart", {"train": {"epochs": 3}, "n_trials": 4,
                                              "objectives": ["val_accuracy", "params"]})
    info = {"config": config.to_dict(), "study_file": config.path, "backend": "optuna"}
    command = _commands(info, tmp_path, 3, ["pt"], None)["search"]
    words = shlex.split(command)
    assert words[:3] == ["pdenas", "search", "quickstart"] and "--n-trials" in words
    sets = [w.removeprefix("--set=") for w in words if w.startswith("--set=")]
    assert sorted(sets) == ['objectives=["val_accuracy", "params"]', "train.epochs=3"]
    again = pdenas.load_study("quickstart", {**parse_assignments(sets), "n_trials": 4})
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("keys", [{"trial_timeout": 120}, {"workers": 2}],
                         ids=["trial_timeout", "workers"])
def test_a_study_with_a_trial_timeout_or_workers_runs_in_supervised_workers(
        tiny_study, tmp_path: Path, monkeypatch, keys: dict) -> None:
    """``pdenas.search`` of a study file with ``trial_timeout`` trains in a worker process (which
    its watchdog may end for a hung trial, and which is then replaced), one with ``workers: 2``
    in two that share the budget; overrides passed on."""
    from pdenas.backends import _orchestrate

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    counts: list[int] = []
    real = _orchestrate.run_workers
    monkeypatch.setattr(_orchestrate, "run_workers", lambda command, workers, *rest, **kw: (
        counts.append(workers) or real(command, workers, *rest, **kw)))
    study = tiny_study(n_trials=3, **keys)
    run = pdenas.search(study, out=tmp_path / "run", n_trials=2, progress=False,
                        train={"epochs": 1})
    records = [json.loads(p.read_text()) for p in sorted((run.path / "trials").glob("*/record.json"))]
    assert len(records) == 2 and {r["status"] for r in records} <= {"completed", "stopped"}
    assert all(r["epochs_planned"] == 1 for r in records)  # the override reached the worker
    assert {r["worker"].rsplit(":", 1)[1] for r in records} != {str(os.getpid())}
    assert counts == [keys.get("workers", 1)]


def test_a_run_refuses_a_study_that_changed_what_its_trials_are(tmp_path: Path) -> None:
    """Resuming with another training budget (or data, space, objectives, seed...) would rank
    trials trained under both together: refused with one line naming the key and both values,
    before anything is written; a larger n_trials (or another timeout, device, workers) tops up."""
    out = tmp_path / "run"
    pdenas.search(api_study(tmp_path, n_trials=1), out=out, progress=False, train={"epochs": 1})
    before = (out / "run.json").read_text()
    with pytest.raises(pdenas.InputError) as refused:
        pdenas.search(api_study(tmp_path, n_trials=2), out=out, progress=False,
                      train={"epochs": 2})
    assert refused.value.key == "train.epochs"
    assert str(refused.value).startswith("train.epochs: the run in ")
    assert "was started with 1, this search asks for 2" in str(refused.value)
    assert (out / "run.json").read_text() == before and len(list(out.glob("trials/*"))) == 1
    run = pdenas.search(api_study(tmp_path, n_trials=2), out=out, progress=False,
                        train={"epochs": 1}, device="cpu", timeout=600)
    assert len(run.trials()) == 2


def test_the_lazy_names_are_listed() -> None:
    """``dir(pdenas)`` lists the names loaded on first use, as tab completion needs."""
    assert {"search", "open_run", "load_model", "Run", "load_study", "InputError"} <= set(dir(pdenas))


def test_a_trial_that_could_not_be_saved_goes_back_to_the_queue(tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """A full disk while a trial's weights are written is not the candidate's failure: the
    command exits 2 with one line naming the path and the cause, the trial is recorded as
    interrupted (it does not use the budget), and the next run trains it again."""
    import errno

    from pdenas.cli import main
    from pdenas.runs import _folder

    real = _folder.TrialFolder.write_weights

    def full(self, state):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.weights_path))

    study = tmp_path / "study.yaml"
    import yaml

    study.write_text(yaml.safe_dump(api_study(tmp_path, n_trials=2)))
    out = tmp_path / "run"
    monkeypatch.setattr(_folder.TrialFolder, "write_weights", full)
    assert main(["search", str(study), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pdenas: error: {out / 'trials' / '0' / 'model.pt'}: No space left on device"]
    record = json.loads((out / "trials" / "0" / "record.json").read_text())
    assert record["status"] == "interrupted" and "OSError" in record["failure_reason"]
    monkeypatch.setattr(_folder.TrialFolder, "write_weights", real)  # space freed
    assert main(["search", str(study), "--out", str(out), "--quiet"]) == 0
    statuses = [json.loads(p.read_text())["status"] for p in sorted(out.glob("trials/*/record.json"))]
    assert statuses.count("completed") == 2  # trial 0's candidate trained again


def test_a_study_given_as_a_mapping_runs_in_workers_too(tmp_path: Path, monkeypatch) -> None:
    """One road whatever the study was given as: a mapping with ``workers: 2`` runs in two
    ``pdenas worker`` processes, which read it from run.json (it has no file to reread)."""
    from pdenas.backends import _orchestrate

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    counts: list[int] = []
    real = _orchestrate.run_workers
    monkeypatch.setattr(_orchestrate, "run_workers", lambda command, workers, *rest, **kw: (
        counts.append(workers) or real(command, workers, *rest, **kw)))
    run = pdenas.search(api_study(tmp_path, n_trials=2, workers=2), out=tmp_path / "run",
                        progress=False, train={"epochs": 1})
    records = [json.loads(p.read_text()) for p in sorted((run.path / "trials").glob("*/record.json"))]
    assert counts == [2] and len(records) == 2
    assert all(r["epochs_planned"] == 1 for r in records)  # the override reached the workers
    assert {r["worker"].rsplit(":", 1)[1] for r in records}.isdisjoint({str(os.getpid())})
