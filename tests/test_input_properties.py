"""Property-based input validation (Hypothesis): valid study files and search-space files,
mutated (wrong types, out-of-range numbers, NaN and infinities, unknown keys, huge values, empty
and nested nonsense), either load or raise one ``ValueError`` line naming the key; the CLI exits 2
with one line and writes nothing; random arguments to every command do the same."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdenas.cli import main
from pdenas.space import SearchSpace
from pdenas.study import StudyConfig

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

STUDY = {
    "name": "prop", "description": "mutated", "data": {"name": "digits", "val_fraction": 0.2,
                                                        "train_limit": 200},
    "space": "quickstart", "train": {"epochs": 2, "batch_size": 64, "lr": 0.05,
                                     "optimizer": "sgd", "schedule": "cosine"},
    "objectives": ["val_accuracy", "flops"], "sampler": {"name": "tpe", "n_startup_trials": 5},
    "early_stop": {"rule": "mo_asha", "min_epochs": 2}, "n_trials": 4, "device": "cpu", "seed": 0,
    "threads": 1, "constraints": {"max_params": 100000},
    "ray": {"cpus_per_trial": 1},
}

SPACE = {
    "description": "mutated", "families": ["parabolic", "resnet"], "num_units": 2,
    "depth": {"low": 1, "high": 2}, "width": {"base": 8, "growth": 1, "last": "same"},
    "step_size": {"low": 0.2, "high": 1.0, "log": True}, "activation": "relu", "norm": "tv",
    "reversible": False,
}

NONSENSE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.text(max_size=6)
    | st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 10**30, 1e308, "", "..", "/"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)


def _paths(data: dict[str, Any]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        paths.append((key,))
        if isinstance(value, dict):
            paths += [(key, inner) for inner in value]
    return paths


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A deep copy of ``base`` with one key set to nonsense, deleted or added; returns it with
    the top-level key that was changed."""
    data = yaml.safe_load(yaml.safe_dump(base))
    how = draw(st.sampled_from(["set", "set", "set", "unknown", "delete", "empty"]))
    path = draw(st.sampled_from(_paths(data)))
    parent = data if len(path) == 1 else data[path[0]]
    if how == "set":
        parent[path[-1]] = draw(NONSENSE)
    elif how == "unknown":
        parent[draw(st.sampled_from(["colour", "epochz", "x_y"]))] = draw(NONSENSE)
    elif how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from([{}, [], ""]))
    return data, path[0]


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


@SETTINGS
@given(mutated(STUDY))
def test_mutated_study_loads_or_names_the_key(case: tuple[dict[str, Any], str]) -> None:
    from pdenas.backends.optuna import OptunaBackend

    data, key = case
    try:
        config = StudyConfig.from_dict(data)
        OptunaBackend.check(config)  # the backend's options, before anything runs
    except ValueError as error:
        text = _one_line(error)
        assert key in text.partition(": ")[0] or key in text or text.startswith(
            ("name: missing", "sampler", "early_stop", "storage", "study:")), (key, text)


@SETTINGS
@given(mutated(SPACE))
def test_mutated_search_space_loads_or_names_the_key(case: tuple[dict[str, Any], str]) -> None:
    import optuna

    data, key = case
    try:
        space = SearchSpace.from_dict(data)
    except ValueError as error:
        text = _one_line(error)
        assert key in text or text.startswith(("families", "space", "custom")), (key, text)
        return
    trial = optuna.create_study().ask()
    try:
        space.suggest(trial, in_channels=1, num_classes=10, image_size=8)
    except ValueError as error:
        _one_line(error)


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@SETTINGS
@given(mutated(STUDY))
def test_cli_refuses_a_bad_study_with_one_line_and_writes_nothing(
        tmp_path: Path, case: tuple[dict[str, Any], str]) -> None:
    from pdenas.backends.optuna import OptunaBackend

    data, _ = case
    try:  # only studies that are bad input: a good one would train
        OptunaBackend.check(StudyConfig.from_dict(data))
        return
    except ValueError:
        pass
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code, err = _cli(["search", str(study), "--out", str(out), "--quiet"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


VALUES = st.sampled_from(["-1", "0", "1", "nan", "inf", "-inf", "1e999", "x", "", "..", "/",
                          "99999999999999999999", "best", "pareto:0", "pareto:-1", "pt,zz",
                          "sqlite://", "sqlite:///:memory:", "journal:", "cuda", "auto"])
FLAGS = {
    "search": ["--n-trials", "--timeout", "--backend", "--address", "--storage", "--device",
               "--seed"],
    "leaderboard": ["--top"],
    "compare": ["--retrain-top", "--seeds", "--device", "--out"],
    "export": ["--trial", "--format", "--retrain-epochs", "--device"],
}


@pytest.fixture(scope="module")
def unavailable_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid study whose data set is not there: a search stops with exit 2 before training."""
    folder = tmp_path_factory.mktemp("cli")
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "data": {"name": "cifar10",
                                                       "root": str(folder / "none")}}))
    return study


@SETTINGS
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_random_cli_arguments_exit_2_with_one_line(tmp_path: Path, unavailable_study: Path,
                                                   command: str, data: st.DataObject) -> None:
    flags = data.draw(st.lists(st.sampled_from(FLAGS[command] + ["--bogus"]), max_size=3))
    argv = [command, str(unavailable_study) if command == "search" else str(tmp_path / "norun")]
    for flag in flags:
        argv += [flag, data.draw(VALUES)]
    if data.draw(st.booleans()):
        argv.insert(data.draw(st.integers(0, len(argv))), data.draw(VALUES))
    out = tmp_path / "out"
    code, err = _cli([*argv, *(["--out", str(out)] if command == "search" else [])])
    assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "norun").exists()
