"""Hostile and damaged inputs (issue 31, families 1 and 3): files that grow when read (an alias
bomb, 100,000 nested brackets, a 50 MB sparse file) and damaged run folders (a record of the
wrong types, ``trials/`` a file, ``record.json`` a folder, a stray ``trials/01``). Each is one
line and exit status 2 through ``pdenas.cli.main``, and nothing on disk changes."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path

import pytest
from test_runs import finished_run  # noqa: F401 - the fixture: a real 3-trial run

from pdenas._bounded import MAX_DEPTH, MAX_YAML_BYTES, short_repr
from pdenas._config import FieldKind, coerce
from pdenas.cli import main
from pdenas.errors import InputError
from pdenas.runs import RunFolder, TrialRecord
from pdenas.study import StudyConfig, parse_assignments

pytestmark = pytest.mark.usefixtures("one_thread")

DEEP = 100_000


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): ("dir" if p.is_dir() else
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


def _one_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    for word in words:
        assert word in lines[0], lines[0]
    assert len(lines[0]) < 600
    return lines[0]


def _bomb(levels: int = 9) -> str:
    """A billion laughs: each level 9 aliases of the one before (9**9 leaves when walked)."""
    names = [f"l{i}" for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# -- family 1: inputs that grow when read --------------------------------------------------


def test_an_alias_bomb_under_a_section_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "bomb.yaml"  # (6 levels, 9**6 leaves: a regression stays affordable)
    nested = "".join(f"  {line}\n" for line in _bomb(6).splitlines())
    study.write_text("name: bomb\ndata: {name: digits}\ntrain:\n" + nested)
    out = tmp_path / "out"
    started = time.monotonic()
    assert main(["search", str(study), "--out", str(out), "--quiet"]) == 2
    assert time.monotonic() - started < 10
    _one_line(capsys, str(study), "aliases", "not allowed")
    assert not out.exists()


def test_a_billion_laughs_is_refused_by_every_loader() -> None:
    from pdenas._bounded import load_yaml
    from pdenas.space._files import _Loader as SpaceLoader
    from pdenas.study import _Loader as StudyLoader

    for loader in (StudyLoader, SpaceLoader):
        with pytest.raises(InputError, match=r"aliases \(\*l0\) are not allowed"):
            load_yaml(_bomb(9), loader, "bomb.yaml")


@pytest.mark.parametrize("text", [
    "name: deep\nspace: " + "[" * DEEP + "]" * DEEP + "\n",
    "name: deep\ntrain: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n",
    "name: deep\ntrain:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(150)) + "  1\n",
], ids=["brackets", "braces", "indented"])
def test_deeply_nested_study_is_one_line(tmp_path: Path, text: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "deep.yaml"
    study.write_text(text)
    out = tmp_path / "out"
    assert main(["search", str(study), "--out", str(out), "--quiet"]) == 2
    _one_line(capsys, str(study), f"limit of {MAX_DEPTH} levels")
    assert not out.exists()


def test_a_huge_sparse_study_file_is_refused_unread(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "huge.yaml"
    with open(study, "wb") as handle:
        handle.write(b"name: huge\n")
        handle.truncate(50 << 20)  # sparse: 50 MB claimed, nothing on disk
    started = time.monotonic()
    assert main(["search", str(study), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert time.monotonic() - started < 5
    _one_line(capsys, str(study), "50 MiB", "limit of 1 MiB")


def test_a_space_file_that_grows_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big_space.yaml"
    with open(big, "wb") as handle:
        handle.truncate(MAX_YAML_BYTES + 1)
    bomb = tmp_path / "bomb_space.yaml"
    bomb.write_text(_bomb())
    deep = tmp_path / "deep_space.yaml"
    deep.write_text("families: " + "[" * DEEP + "]" * DEEP + "\n")
    for space, words in ((big, ["larger than the limit of 1 MiB"]), (bomb, ["aliases"]),
                         (deep, [f"limit of {MAX_DEPTH} levels"])):
        study = tmp_path / f"study_{space.stem}.yaml"
        study.write_text(f"name: s\ndata: {{name: digits}}\nspace: {space.name}\n")
        assert main(["search", str(study), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        _one_line(capsys, str(space), *words)
        assert not (tmp_path / "out").exists()


def test_deep_set_values_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match=f"limit of {MAX_DEPTH} levels") as caught:
        parse_assignments(["train.lr=" + "[" * DEEP])
    assert len(str(caught.value)) < 300 and caught.value.key == "--set"
    with pytest.raises(InputError, match="aliases"):
        parse_assignments(["train.lr=[&a [1], *a]"])
    assert parse_assignments(["train.lr=1e-3", "objectives=[val_accuracy, flops]"]) == {
        "train": {"lr": 0.001}, "objectives": ["val_accuracy", "flops"]}


def test_error_messages_show_a_bounded_value() -> None:
    huge = list(range(10**6))
    with pytest.raises(InputError) as caught:
        coerce("train.lr", huge, FieldKind("float"))
    assert len(str(caught.value)) < 200 and "..." in str(caught.value)
    with pytest.raises(InputError) as caught:
        StudyConfig.from_dict({"name": "x" * 10**6, "n_trials": "many" * 10**5})
    assert len(str(caught.value)) < 300
    assert len(short_repr("x" * 10**6)) <= 80 and len(short_repr(10**4000)) <= 80


def test_a_valid_value_is_never_rendered() -> None:
    class Loud(int):
        def __repr__(self) -> str:
            raise AssertionError("a valid value was rendered")

    assert coerce("train.epochs", Loud(3), FieldKind("int")) == 3


def test_a_model_config_that_grows_is_refused(tmp_path: Path) -> None:
    from pdenas.export import load_safetensors

    config = tmp_path / "config.json"
    config.write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(InputError, match=f"limit of {MAX_DEPTH} levels") as caught:
        load_safetensors(tmp_path)
    assert str(config) in str(caught.value) and "\n" not in str(caught.value)
    with open(config, "wb") as handle:
        handle.truncate(50 << 20)
    with pytest.raises(InputError, match="larger than the limit of 4 MiB"):
        load_safetensors(tmp_path)


def test_a_damaged_safetensors_file_is_one_input_error(tmp_path: Path) -> None:
    from pdenas import Architecture
    from pdenas.export import load_safetensors
    from pdenas.export._weights import CONFIG_FORMAT

    arch = Architecture.from_dict({"family": "resnet", "widths": [4, 4], "depths": [1],
                                   "step_size": 1.0, "in_channels": 1, "num_classes": 2})
    (tmp_path / "config.json").write_text(json.dumps(
        {"format": CONFIG_FORMAT, "architecture": arch.to_dict()}))
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)  # a header length of 2**64 - 1
    with pytest.raises(InputError, match="cannot load the safetensors export") as caught:
        load_safetensors(tmp_path)
    assert "\n" not in str(caught.value)


# -- a real run folder for the readers ------------------------------------------------------


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:  # noqa: F811 - the imported fixture
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _refused(run: Path, capsys: pytest.CaptureFixture[str], *words: str,
             commands: tuple[str, ...] = ("leaderboard",)) -> None:
    before = _digests(run)
    for command in commands:
        args = {"leaderboard": ["leaderboard", str(run), "--all"],
                "export": ["export", str(run), "--trial", "0", "--format", "pt",
                           "--out", str(run.parent / "export")],
                "compare": ["compare", str(run), "--out", str(run.parent / "compare")]}[command]
        assert main(args) == 2, command
        _one_line(capsys, *words)
        assert _digests(run) == before
        assert not (run.parent / "export").exists() and not (run.parent / "compare").exists()


def test_deep_and_huge_record_and_run_json_are_one_line(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = run / "trials" / "0" / "record.json"
    saved = record.read_bytes()
    record.write_text("[" * DEEP + "]" * DEEP)
    _refused(run, capsys, str(record), f"limit of {MAX_DEPTH} levels")
    with open(record, "wb") as handle:
        handle.truncate(50 << 20)
    _refused(run, capsys, str(record), "larger than the limit of 4 MiB")
    record.write_bytes(saved)
    info = run / "run.json"
    info.write_text('{"a": ' * DEEP + "1" + "}" * DEEP)
    _refused(run, capsys, str(info), f"limit of {MAX_DEPTH} levels")


# -- family 3: damaged run folders ----------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("cost", "x"), ("cost", {"flops": "many"}), ("architecture", [1, 2]), ("history", {"a": 1}),
    ("history", [1, 2]), ("history", [{"val_accuracy": "high"}]), ("params", 3),
    ("val_accuracy", float("nan")), ("val_accuracy", "0.9"), ("number", "0"), ("number", -1),
    ("epochs_trained", 1.5), ("seconds", None), ("constraints", "none"), ("stability", []),
    ("warm_start", 7), ("train", "fast"), ("worker", 3), ("status", ["completed"]),
])
def test_a_record_of_the_wrong_type_is_one_line(run: Path, field: str, value: object,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    record = run / "trials" / "0" / "record.json"
    data = json.loads(record.read_text())
    data[field] = value
    record.write_text(json.dumps(data))
    _refused(run, capsys, str(record), field)


def test_every_reader_refuses_a_damaged_record(run: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    record = run / "trials" / "0" / "record.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "cost": "x"}))
    _refused(run, capsys, str(record), "record.cost", "a mapping",
             commands=("leaderboard", "export", "compare"))
    with pytest.raises(InputError) as caught:
        RunFolder(run).records()
    assert caught.value.key == "record.cost"


def test_a_stored_record_reads_back(run: Path) -> None:
    for number in RunFolder(run).trial_numbers():
        path = RunFolder(run).trial(number).record_path
        data = json.loads(path.read_text())
        assert TrialRecord.from_dict(data).to_dict() == data


def test_trials_as_a_file_is_not_zero_trials(run: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(run / "trials")
    (run / "trials").write_text("")
    _refused(run, capsys, str(run / "trials"), "not a folder",
             commands=("leaderboard", "export"))


def test_a_record_json_that_is_a_folder_does_not_hide_the_trial(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = run / "trials" / "1" / "record.json"
    record.unlink()
    record.mkdir()
    _refused(run, capsys, str(record), "not a file (a folder)")


def test_a_stray_trials_01_does_not_list_trial_1_twice(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(run / "trials" / "1", run / "trials" / "01")
    _refused(run, capsys, str(run / "trials" / "01"), "not a trial folder's name")


def test_a_trial_folder_that_is_a_file_or_holds_another_trial(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "trials" / "7").write_text("")
    _refused(run, capsys, str(run / "trials" / "7"), "not a folder")
    (run / "trials" / "7").unlink()
    shutil.copytree(run / "trials" / "1", run / "trials" / "5")
    _refused(run, capsys, str(run / "trials" / "5" / "record.json"), "record.number", "trial 5")


@pytest.mark.parametrize(("change", "words"), [
    ({"backend": 3}, ["backend", "allowed: text"]),
    ({"storage": ["x"]}, ["storage", "text or null"]),
    ({"version": "2"}, ["version", "run format version"]),
    ({"config": "x"}, ["not a pdenas run file"]),
])
def test_a_damaged_run_json_is_one_line(run: Path, change: dict, words: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    info = run / "run.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), **change}))
    _refused(run, capsys, str(info), *words)


def test_a_folder_that_is_not_a_run_is_never_an_empty_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(empty, capsys, "not a pdenas run folder", commands=("leaderboard", "export"))
    (empty / "run.json").mkdir()
    _refused(empty, capsys, str(empty / "run.json"), "not a file")
