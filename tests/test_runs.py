"""The run folder: atomic writes, a moved or copied run, a second study refused, versions, and
read-only commands that create nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pdenas.cli import main
from pdenas.runs import RUN_VERSION, RunFolder, TrialRecord, TrialStatus, atomic_write, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json(path, {"number": 1, "status": "completed"})

    def dies_half_way(handle) -> None:
        handle.write('{"number": 1, "sta')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, dies_half_way)
    assert json.loads(path.read_text()) == {"number": 1, "status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary file left


def test_a_record_an_earlier_version_wrote_pruned_reads_as_stopped(tmp_path: Path) -> None:
    """One status for a trial stopped early, whichever backend stopped it: "pruned", the Optuna
    backend's word in earlier versions, loads, ranks and is written back as "stopped"."""
    from pdenas.results import load_trials

    run = RunFolder(tmp_path)
    run.write_info(study_name="old", backend="optuna", config={"name": "old"})
    folder = run.trial(3)
    folder.path.mkdir(parents=True)
    folder.record_path.write_text(json.dumps({
        "number": 3, "status": "pruned", "epochs_trained": 1, "epochs_planned": 4,
        "val_accuracy": 0.4, "history": [{"epoch": 1, "val_accuracy": 0.4}]}))
    record = folder.read_record()
    assert record.status is TrialStatus.STOPPED and record.status.stopped_early
    assert record.status.state == "PRUNED" and not record.status.trained
    assert TrialStatus.parse("pruned") is TrialStatus.STOPPED
    assert list(load_trials(tmp_path)["status"]) == ["stopped"]
    folder.write_record(record)
    assert json.loads(folder.record_path.read_text())["status"] == "stopped"


def test_records_round_trip_and_statuses_are_one_vocabulary(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path).trial(7)
    record = TrialRecord(number=7, status="stopped", params={"family": "resnet"},
                         history=[{"epoch": 1, "val_accuracy": 0.5}])
    folder.write_record(record)
    again = folder.read_record()
    assert again == record and again.status is TrialStatus.STOPPED
    assert json.loads(folder.record_path.read_text())["status"] == "stopped"
    with pytest.raises(ValueError, match="status: unknown 'outofmemory'; allowed: queued, running"):
        TrialRecord(number=1, status="outofmemory")
    # What each status means for the budget and for ranking.
    assert [s.value for s in TrialStatus if s.uses_budget and s.final] == [
        "completed", "stopped", "timeout", "infeasible", "diverged", "oom", "failed"]
    assert [s.value for s in TrialStatus if s.trained] == ["completed"]
    assert {s.value for s in TrialStatus if s.failure} == {"diverged", "oom", "failed"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_cli import write_study

    folder = tmp_path_factory.mktemp("runs")
    study = write_study(folder, n_trials=3, epochs=1)
    run = folder / "run"
    assert main(["search", str(study), "--out", str(run), "--quiet"]) == 0
    return run


def test_a_copied_run_reads_the_same_after_the_original_is_deleted(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = tmp_path / "original"
    shutil.copytree(finished_run, original)
    assert main(["leaderboard", str(original), "--all"]) == 0
    before = capsys.readouterr().out
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    assert main(["leaderboard", str(moved), "--all"]) == 0
    assert capsys.readouterr().out == before
    assert json.loads((moved / "run.json").read_text())["storage"] is None  # folder-relative
    assert RunFolder(moved).storage_url() == f"sqlite:///{(moved / 'study.db').resolve()}"


def test_a_second_study_in_one_folder_exits_2_and_changes_nothing(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _digests(run)
    other = tmp_path / "other.yaml"
    other.write_text("name: other\ndata: {name: digits}\nn_trials: 1\ndevice: cpu\n")
    assert main(["search", str(other), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds the study 'tiny'" in err and "'other'" in err
    assert len(err.strip().splitlines()) == 1
    assert _digests(run) == before


def test_read_only_commands_create_nothing(finished_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "study.db").unlink()
    before = _digests(run)
    assert main(["leaderboard", str(run)]) == 0
    assert "3 trials" in capsys.readouterr().out
    assert not (run / "study.db").exists() and _digests(run) == before
    with pytest.raises(ValueError, match="the run's storage is missing"):
        RunFolder(run).storage_url()


def test_a_newer_run_format_is_refused(finished_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    info = json.loads((run / "run.json").read_text())
    assert (info["format"], info["version"]) == ("pdenas-run", RUN_VERSION)
    (run / "run.json").write_text(json.dumps({**info, "version": RUN_VERSION + 1}))
    assert main(["leaderboard", str(run)]) == 2
    err = capsys.readouterr().err
    assert "written by a newer pdenas" in err and len(err.strip().splitlines()) == 1


def test_a_write_that_fails_is_an_os_error_naming_the_file_and_leaves_the_old_one(tmp_path) -> None:
    """torch.save's writer reports a failed write (a full disk) as a RuntimeError: it becomes
    the file-system fault it is (an OSError naming the file), and the previous file stays."""
    from pdenas.runs._folder import atomic_write

    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def failing(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(OSError) as error:
        atomic_write(path, failing, binary=True)
    assert error.value.filename == str(path) and "file write failed" in error.value.strerror
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
