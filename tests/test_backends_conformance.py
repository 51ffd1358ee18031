"""The backend contract, run over every registered backend: the same tiny study through each
gives the same record schema and statuses, and the leaderboard, the comparison and the export
work on its run folder the same way (as timm tests every registered model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pdenas.backends import get_backend, list_backends, run_search
from pdenas.cli import main
from pdenas.results import leaderboard, load_run, load_trials
from pdenas.runs import RunFolder, TrialRecord, TrialStatus
from pdenas.study import StudyConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BACKENDS = [pytest.param(name, marks=[pytest.mark.ray] if name == "ray" else [])
            for name in list_backends()]
RECORD_KEYS = {f.name for f in dataclasses.fields(TrialRecord)}


@pytest.fixture(params=BACKENDS)
def searched(request, tiny_study, tmp_path) -> tuple[str, Path, StudyConfig]:
    backend = request.param
    if backend == "ray":
        request.getfixturevalue("ray_address")  # a local Ray runtime for the session
    config = StudyConfig.load(tiny_study(
        n_trials=3, ray={"cpus_per_trial": 1},
        start_with=[{"family": "resnet", "step_size": 0.5}]))
    run = run_search(config, backend=backend, out=tmp_path / "run", quiet=True)
    return backend, run.path, config


def test_the_registry_names_every_backend() -> None:
    assert {"optuna", "ray"} <= set(list_backends())
    for name in list_backends():
        assert get_backend(name).name == name
    with pytest.raises(ValueError, match="backend: unknown 'nope'; allowed: optuna, ray"):
        get_backend("nope")


def test_a_search_writes_the_same_records_through_every_backend(searched) -> None:
    backend, run, config = searched
    info = load_run(run)
    assert info["backend"] == backend and info["study_name"] == config.name
    records = sorted((run / "trials").glob("*/record.json"))
    assert len(records) == 3
    for path in records:
        data = json.loads(path.read_text())
        assert set(data) == RECORD_KEYS  # one schema for every backend
        record = TrialRecord.from_dict(data)
        assert record.status.final and record.status.uses_budget
        assert record.params["family"] == record.architecture["family"]
        assert record.worker and record.started_at and record.finished_at
        if record.status is TrialStatus.COMPLETED:
            assert len(record.history) == record.epochs_trained == config.train.epochs
            assert (path.parent / "model.pt").is_file()
            assert json.loads((path.parent / "architecture.json").read_text()) == record.architecture
    trials = load_trials(run)
    assert sorted(trials["family"].unique()) == ["parabolic", "resnet"]  # cover_families first
    first = TrialRecord.from_dict(json.loads((run / "trials" / "0" / "record.json").read_text()))
    assert first.params["family"] == "resnet" and first.params["step_size"] == 0.5  # start_with
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}


def test_leaderboard_compare_and_export_read_every_backend(searched, tmp_path, capsys) -> None:
    backend, run, config = searched
    board = leaderboard(load_trials(run), config.objectives)
    assert len(board) >= 1
    assert main(["leaderboard", str(run), "--all"]) == 0
    assert f"study {config.name}: 3 trials" in capsys.readouterr().out
    assert main(["compare", str(run), "--out", str(tmp_path / "compare")]) == 0
    assert (tmp_path / "compare" / "report.md").is_file()
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "pt", "--out", str(out), "--device", "cpu"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["source"]["trial"] == int(board.sort_values(
        ["val_accuracy", "flops", "number"], ascending=[False, True, True]).iloc[0]["number"])


# One process on Optuna: test_backend_optuna's sampler test (a sampler proposing only what
# cannot fit); here every other road.
@pytest.mark.parametrize("case", [
    *(p for p in BACKENDS if p.values[0] != "optuna"),
    pytest.param("optuna-2-workers", id="optuna-2-workers")])
def test_every_backend_spends_the_time_left_on_candidates_that_fit(case, request, tiny_study,
                                                                   tmp_path) -> None:
    """With 30 s (Ray: 60 s, which its start uses a part of) for a space where half the draws
    need 4,000 epochs (minutes) and half 2 (a few seconds): the long ones are skipped (predicted
    before building, after the first is measured), never trained and not counted; the short
    ones train until the study's time is spent, on every backend and with two workers sharing
    the time."""
    import time

    import pdenas

    backend = "ray" if case == "ray" else "optuna"
    if backend == "ray":
        request.getfixturevalue("ray_address")
    path = tiny_study(n_trials=100, ray={"cpus_per_trial": 1},
                      workers=2 if case == "optuna-2-workers" else 1)
    space = tmp_path / "tiny_space.yaml"  # the epochs become a dimension of the space
    space.write_text(space.read_text().replace("  optimizer: adamw",
                                               "  optimizer: adamw\n  epochs: [2, 4000]"))
    timeout = 60 if backend == "ray" else 30
    start = time.monotonic()
    run = pdenas.search(path, out=tmp_path / "run", backend=backend, progress=False,
                        timeout=timeout)
    elapsed = time.monotonic() - start
    records = [TrialRecord.from_dict(json.loads(p.read_text()))
               for p in (run.path / "trials").glob("*/record.json")]
    long = [r for r in records if r.train["epochs"] == 4000]
    trained = [r for r in records if r.status is TrialStatus.COMPLETED]
    if case == "optuna-2-workers":  # the workers share the cores (no threads in the study)
        from pdenas.backends._cpus import cpu_cores

        assert RunFolder(run.path).read_info()["config"]["threads"] == max(1, cpu_cores() // 2)
    assert long and all(r.status is TrialStatus.SKIPPED and not r.history for r in long), records
    assert len(trained) >= 2 and {r.train["epochs"] for r in trained} == {2}, records
    assert elapsed >= 0.6 * timeout, elapsed  # it went on while short candidates still fitted
