"""Hostile and damaged inputs (issue 31): files that grow when read (an alias bomb, 100,000
nested brackets, a 50 MB sparse file); models that claim more than they hold (stride-0 views,
a config beyond the caps, a ``.pt2`` that would unpickle or grow); damaged run folders (a record
of the wrong types, ``trials/`` a file, ``record.json`` a folder, a stray ``trials/01``). Each is
one line (exit status 2 through ``pdenas.cli.main``), nothing is allocated or run for it, and
nothing on disk changes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
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


# -- family 2: models that claim more than they hold ------------------------------------------

HUGE = {"family": "resnet", "widths": [16384, 16384], "depths": [1], "step_size": 1.0,
        "in_channels": 1, "num_classes": 2}
"""Within the caps; one of its convolutions is 9.7 GB of float32."""


def _never_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, building a network from a file (not on the meta device) fails the test:
    a hostile file must be refused before anything is allocated for it."""
    from pdenas.export import _weights

    def built(*args: object) -> None:
        raise AssertionError("a network was built from a hostile file")

    monkeypatch.setattr(_weights, "_built", built)


def _tiny_export(folder: Path) -> Path:
    from pdenas import Architecture, build_model
    from pdenas.export import write_formats

    arch = Architecture.from_dict({**HUGE, "widths": [4, 4]})
    folder.mkdir(exist_ok=True)
    write_formats(build_model(arch), folder, torch.zeros(2, 1, 8, 8), ["pt", "pt2", "safetensors"],
                  mean=(0.5,), std=(0.25,), classes=("a", "b"))
    return folder


def test_a_model_pt_of_stride_0_views_is_refused_unallocated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas import Architecture, build_model
    from pdenas.export import load_model
    from pdenas.export._weights import EXPORT_FORMAT

    with torch.device("meta"):
        net = build_model(Architecture.from_dict(HUGE))
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    state = {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}
    _never_build(monkeypatch)
    file = tmp_path / "model.pt"
    torch.save({"format": EXPORT_FORMAT, "version": 1, "architecture": HUGE, "state_dict": state,
                "normalization": {"mean": [0.5], "std": [0.25]}, "classes": ["a", "b"]}, file)
    assert file.stat().st_size < 64 << 10  # a few KB that would ask for 20 GB
    with pytest.raises(InputError, match="claims .* bytes but the file holds 4 for it") as caught:
        load_model(file)
    assert str(file) in str(caught.value) and "\n" not in str(caught.value)


def test_views_sharing_one_storage_are_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas.export import load_model

    folder = _tiny_export(tmp_path / "export")
    _never_build(monkeypatch)
    payload = torch.load(folder / "model.pt", weights_only=True)
    state = payload["state_dict"]
    big = max(state, key=lambda k: state[k].numel())
    shared = torch.zeros(state[big].numel())
    payload["state_dict"] = {k: shared[:v.numel()].view(v.shape) for k, v in state.items()}
    torch.save(payload, folder / "model.pt")
    with pytest.raises(InputError, match="claims .* bytes but the file holds"):
        load_model(folder / "model.pt")


@pytest.mark.parametrize("change, words", [
    ({"widths": [10**9, 10**9]}, ["architecture.widths: got 1000000000", "at most 16384"]),
    ({"depths": [10**7]}, ["architecture.depths: got 10000000", "at most 10000"]),
], ids=["widths_1e9", "depth_1e7"])
def test_a_safetensors_config_beyond_the_caps_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, words: list[str]) -> None:
    from pdenas.export import load_model

    folder = _tiny_export(tmp_path / "export")
    _never_build(monkeypatch)
    (folder / "model.pt").unlink()  # the folder is read through config.json
    config = json.loads((folder / "config.json").read_text())
    config["architecture"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        load_model(folder)
    assert time.monotonic() - started < 5
    assert str(folder / "config.json") in str(caught.value) and "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_a_safetensors_config_larger_than_its_weights_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdenas.export import load_safetensors

    folder = _tiny_export(tmp_path / "export")
    _never_build(monkeypatch)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = HUGE  # within the caps; the file holds a 4-channel network
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="weights do not fit the architecture") as caught:
        load_safetensors(folder)
    assert "model.safetensors" in str(caught.value)


def test_load_model_reads_every_format_it_loads(tmp_path: Path) -> None:
    from pdenas.export import load_model, load_pt2

    folder = _tiny_export(tmp_path / "export")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        reference = load_model(folder / "model.pt")(x)
        (folder / "model.pt").unlink()
        for source in (folder, folder / "model.safetensors", folder / "config.json"):
            assert torch.allclose(load_model(source)(x), reference, atol=1e-6)
        assert torch.allclose(load_pt2(folder / "model.pt2")(x), reference, atol=1e-5)


@pytest.mark.parametrize("field, value", [("normalization", [1, 2]), ("classes", 7),
                                          ("normalization", {"mean": "abc"})])
def test_a_model_pt_of_the_wrong_types_is_one_line(tmp_path: Path, field: str,
                                                   value: object) -> None:
    from pdenas.export import load_model

    folder = _tiny_export(tmp_path / "export")
    payload = torch.load(folder / "model.pt", weights_only=True)
    payload[field] = value
    torch.save(payload, folder / "model.pt")
    with pytest.raises(InputError, match=f"bad pdenas export: {field}") as caught:
        load_model(folder / "model.pt")
    assert "\n" not in str(caught.value)


def _rewrite_pt2(file: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrites the records of a ``.pt2`` archive through ``change(name, data)`` (None: keep)."""
    with zipfile.ZipFile(file) as archive:
        records = [(i.filename, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            archive.writestr(name, change(name, data) or data)


class _Touch:
    """Unpickling it creates a folder: proof that pickled code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return os.mkdir, (self.path,)


def test_a_pt2_with_a_pickled_weight_is_refused_unrun(tmp_path: Path) -> None:
    from pdenas.export import load_pt2

    file = _tiny_export(tmp_path / "export") / "model.pt2"
    ran = tmp_path / "pickle_ran"

    def change(name: str, data: bytes) -> bytes | None:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("/weight_0"):
            return pickle.dumps(_Touch(ran), protocol=2)
        return None

    _rewrite_pt2(file, change)
    with pytest.raises(InputError, match="pickled object; refused") as caught:
        load_pt2(file)
    assert not ran.exists() and str(file) in str(caught.value)


@pytest.mark.parametrize("extra", ["data/aotinductor/model/model.so", "data/weights/model.pt"])
def test_a_pt2_with_compiled_code_or_a_legacy_pickle_is_refused(tmp_path: Path,
                                                                extra: str) -> None:
    from pdenas.export import load_pt2

    file = _tiny_export(tmp_path / "export") / "model.pt2"
    with zipfile.ZipFile(file, "a") as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{root}/{extra}", b"\x7fELF")
    with pytest.raises(InputError, match="which pdenas does not load"):
        load_pt2(file)


def test_a_pt2_weight_that_claims_more_than_its_record_is_refused(tmp_path: Path) -> None:
    from pdenas.export import load_pt2

    file = _tiny_export(tmp_path / "export") / "model.pt2"

    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("_weights_config.json"):
            return None
        config = json.loads(data)
        for meta in config["config"].values():  # every weight a stride-0 view of 1024 x 1024
            meta["tensor_meta"]["sizes"] = [{"as_int": 1024}, {"as_int": 1024}]
            meta["tensor_meta"]["strides"] = [{"as_int": 0}, {"as_int": 0}]
        return json.dumps(config).encode()

    _rewrite_pt2(file, change)
    with pytest.raises(InputError, match="claims 4,194,304 bytes but the file holds"):
        load_pt2(file)


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


# -- export: its output checked before the work; a killed export's staging removed ------------


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[str]:
    """``folder`` read-only for real, and how: a read-only bind mount where this process may
    mount (root here and in CI's container), else ``chmod`` (a user, whom permissions stop).
    Root that cannot mount passes any permission check, so the fault is then injected where
    export writes first (a file created in the output folder fails with ``EROFS``); that keeps
    the test meaningful everywhere instead of skipping it."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for path in modes:
            path.chmod(modes[path] & ~0o222)
        try:
            yield "chmod"
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                             capture_output=True).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)],
                                  capture_output=True).returncode == 0:
        try:
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    real = tempfile.mkstemp

    def refused(*args: Any, dir: str | Path | None = None, **kwargs: Any) -> tuple[int, str]:
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", refused)
        yield "injected EROFS"


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any export work (its weights read or retrained, a format written) fails the test."""
    from pdenas.export import _command

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export did its work before checking its output folder")

    for name in ("saved_model", "retrain", "write_formats"):
        monkeypatch.setattr(_command, name, work)


def test_a_read_only_run_folder_is_refused_before_the_export_works(
        run: Path, no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    before = _digests(run)
    with _read_only(run) as how:
        assert main(["export", str(run), "--trial", "0", "--format", "pt"]) == 2, how
        line = _one_line(capsys, f"cannot write in {run}", "Read-only file system")
        assert main(["export", str(run), "--trial", "0", "--format", "pt", "--retrain-epochs",
                     "1"]) == 2, how
        assert _one_line(capsys) == line
    assert _digests(run) == before


def test_a_symlink_loop_as_out_is_one_line_before_the_work(
        run: Path, tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for out in (loop, loop / "out"):
        assert main(["export", str(run), "--trial", "0", "--format", "pt", "--out",
                     str(out)]) == 2
        _one_line(capsys, f"--out {out}: {loop}", "a symbolic link that leads nowhere")


_STAGE = """
import sys, time
from pdenas.export._command import _staging
with _staging() as folder:
    (folder / "model.pt").write_bytes(b"half written")
    print(folder, flush=True)
    time.sleep(600)
"""


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two exports stand in the temporary folder: one killed (SIGKILL) inside its staging
    folder, one still running. The next export removes the killed one's folder only; a user's
    folder of the same name pattern without pdenas's lock stays."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    env = {**os.environ, "TMPDIR": str(temp)}
    exports = [subprocess.Popen([sys.executable, "-c", _STAGE], stdout=subprocess.PIPE,
                                text=True, env=env) for _ in range(2)]
    try:
        killed, running = (Path(p.stdout.readline().strip()) for p in exports)
        assert (killed / "model.pt").is_file() and (running / "model.pt").is_file()
        exports[0].kill()
        exports[0].wait()
        mine = temp / "pdenas-export-notes"
        mine.mkdir()
        (mine / "keep.txt").write_text("a user's file")
        assert main(["export", str(run), "--trial", "0", "--format", "pt", "--out",
                     str(tmp_path / "export")]) == 0
        capsys.readouterr()
        assert not killed.exists()
        assert (running / "model.pt").is_file() and (mine / "keep.txt").is_file()
        assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
            "card.json", "card.md", "model.pt"]
    finally:
        for export in exports:
            export.kill()
            export.wait()


# -- a full disk: a real small file system where this process may mount one -------------------


class _SmallFileSystem:
    """A 2 MiB tmpfs mounted on ``folder`` (root, as here and in CI's container), filled with
    one preallocated file until ``keep`` bytes are free. ``mounted`` is False where mounting is
    refused (a user, or a container without the capability): the tests then inject the
    ``ENOSPC`` a full disk raises where pdenas writes, rather than skip, so what they check
    still runs everywhere (the real file system is what shows torch's writer and shutil's
    copies fail as the injected error says)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.filler = folder, folder / "filler"
        folder.mkdir()
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                       str(folder)], capture_output=True).returncode == 0

    def fill(self, keep: int) -> None:
        if self.mounted:
            info = os.statvfs(self.folder)
            with open(self.filler, "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, info.f_bavail * info.f_frsize - keep)

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[_SmallFileSystem]:
    fs = _SmallFileSystem(tmp_path / "small")
    yield fs
    fs.close()


def _no_space(monkeypatch: pytest.MonkeyPatch, where: Path, after: int = 0) -> None:
    """Without a mountable file system: ``shutil.copyfile`` into ``where`` fails with ENOSPC
    once ``after`` files were copied there, having written half the file, as a full disk does."""
    real, copied = shutil.copyfile, []

    def copyfile(src: Any, dst: Any, **kwargs: Any) -> Any:
        if not Path(dst).resolve().is_relative_to(where.resolve()):
            return real(src, dst, **kwargs)
        if len(copied) >= after:
            Path(dst).write_bytes(Path(src).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(dst)
        return real(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_an_export_onto_a_full_disk_leaves_its_folder_as_it_was(
        run: Path, small_fs: _SmallFileSystem, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--out`` on a full file system (32 KB free, the files need more): one line naming a
    file in ``--out`` and the cause, exit 2, and neither ``--out`` nor a partial file is left;
    with the space freed the same command exports."""
    out = small_fs.folder / "export"
    small_fs.fill(32 << 10)
    if not small_fs.mounted:
        _no_space(monkeypatch, small_fs.folder, after=1)
    args = ["export", str(run), "--trial", "0", "--format", "pt,safetensors", "--out", str(out)]
    assert main(args) == 2
    _one_line(capsys, str(out), "No space left on device")
    assert [p.name for p in small_fs.folder.iterdir()] == (["filler"] if small_fs.mounted else [])
    small_fs.empty()
    monkeypatch.undo()
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "config.json",
                                                     "model.pt", "model.safetensors"]


FULL_SPACE = """
families: [parabolic]
num_units: 1
depth: 1
width: {base: 32, growth: 1, last: same}
step_size: 0.5
activation: relu
norm: tv
reversible: false
"""
"""Width 32: a trial's model.pt is about 80 KB, its record about 2 KB."""


def test_a_search_onto_a_full_disk_retrains_the_trial_it_could_not_save(
        tmp_path: Path, small_fs: _SmallFileSystem, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The run folder on a full file system (32 KB free: a record fits, the weights do not),
    ``study.db`` elsewhere: one line naming the weights file, exit 2, the trial recorded as
    interrupted (not a failed candidate); with the space freed the same command trains it."""
    from pdenas.runs import _folder

    (tmp_path / "space.yaml").write_text(FULL_SPACE)
    study = tmp_path / "study.yaml"
    study.write_text("name: full\ndata: {name: digits, train_limit: 200}\nspace: space.yaml\n"
                     "train: {epochs: 1, batch_size: 64, optimizer: sgd, lr: 0.05}\n"
                     "sampler: random\nearly_stop: none\nn_trials: 2\ndevice: cpu\nseed: 0\n")
    out = small_fs.folder / "run"
    small_fs.fill(32 << 10)
    if not small_fs.mounted:
        def full(self: Any, state: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.weights_path))

        monkeypatch.setattr(_folder.TrialFolder, "write_weights", full)
    args = ["search", str(study), "--out", str(out), "--quiet", "--storage",
            f"sqlite:///{tmp_path / 'study.db'}"]
    assert main(args) == 2
    _one_line(capsys, str(out / "trials" / "0" / "model.pt"))  # torch's writer hides ENOSPC
    record = json.loads((out / "trials" / "0" / "record.json").read_text())
    assert record["status"] == "interrupted"
    small_fs.empty()
    monkeypatch.undo()
    assert main(args) == 0
    statuses = [json.loads(p.read_text())["status"]
                for p in sorted(out.glob("trials/*/record.json"))]
    # trial 0 trained again (in its place or as a copy), never counted as a failed candidate
    assert statuses.count("completed") == 2 and set(statuses) <= {"completed", "interrupted"}


def test_a_pt2_with_tied_weights_loads(tmp_path: Path) -> None:
    """Two names for one weight (aliases of one record) are not a view that grows."""
    from pdenas.export import load_pt2

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model, x = Tied().eval(), torch.randn(3, 4)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "tied.pt2")
    with torch.no_grad():
        assert torch.allclose(load_pt2(tmp_path / "tied.pt2")(x), model(x))


@pytest.mark.parametrize("damage", ["truncated", "crc", "named_twice"])
def test_a_damaged_pt2_archive_is_one_line(tmp_path: Path, damage: str) -> None:
    from pdenas.export import load_pt2

    file = _tiny_export(tmp_path / "export") / "model.pt2"
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[:len(data) // 2])
    elif damage == "crc":  # archive_format's content changed under its checksum
        with zipfile.ZipFile(file) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("/archive_format"))
        name, extra = (int.from_bytes(data[info.header_offset + k:info.header_offset + k + 2],
                                      "little") for k in (26, 28))  # the local header's
        start = info.header_offset + 30 + name + extra
        file.write_bytes(data[:start] + b"PT2" + data[start + 3:])
    else:
        with zipfile.ZipFile(file, "a") as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
            root = archive.namelist()[0].split("/", 1)[0]
            archive.writestr(f"{root}/data/weights/model_weights_config.json", b"{}")
    with pytest.raises(InputError) as caught:
        load_pt2(file)
    assert str(file) in str(caught.value) and "\n" not in str(caught.value)
