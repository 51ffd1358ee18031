"""Search spaces: loading and validation, suggest / replay / grid with real Optuna studies."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest

from pdenas.architecture import Architecture
from pdenas.families import get_family
from pdenas.space import SearchSpace, available_spaces, shipped_space
from pdenas.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = ["all_families", "paper", "paper_cifar100", "paper_stl10", "quickstart", "step_and_depth"]
BASE_TRAIN = {"epochs": 2, "batch_size": 64}


def minimal(**changes: Any) -> dict[str, Any]:
    """A small valid space as file data, with ``changes`` applied."""
    data: dict[str, Any] = {
        "families": ["parabolic", "hamiltonian"],
        "num_units": {"low": 1, "high": 3},
        "depth": [1, 2],
        "width": {"base": [4, 6], "growth": [1, 2]},
    }
    data.update(changes)
    return data


def sample(space: SearchSpace, n: int, image_size: int, seed: int = 0, in_channels: int = 1):
    """n (params, Architecture, TrainConfig) from a RandomSampler study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        arch, train = space.suggest(trial, in_channels=in_channels, num_classes=10,
                                    image_size=image_size, base_train=BASE_TRAIN)
        study.tell(trial, 0.0)
        out.append((trial.params, arch, train))
    return out


def test_every_shipped_file_loads_and_round_trips() -> None:
    assert set(SHIPPED) <= set(available_spaces())
    assert shipped_space("quickstart").is_file()
    for name in SHIPPED:
        space = SearchSpace.load(name)
        assert space.name == name and space.description
        assert SearchSpace.from_dict(space.to_dict(), name=name) == space
    # a path works too, and the name is the file's stem
    assert SearchSpace.load(shipped_space("paper")) == SearchSpace.load("paper")


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("image_size", [8, 32])
def test_random_suggestions_are_valid_and_replay(name: str, image_size: int) -> None:
    space = SearchSpace.load(name)
    for params, arch, train in sample(space, 50, image_size):
        assert isinstance(arch, Architecture) and isinstance(train, TrainConfig)
        arch.check_input(image_size, image_size)
        assert arch.min_input_size() <= image_size
        assert Architecture.from_dict(arch.to_dict()) == arch
        if arch.family == "hamiltonian":
            assert all(w % 2 == 0 for w in arch.widths[:-1])
        if arch.reversible:
            assert get_family(arch.family).reversible_scheme and arch.norm != "batch"
        if not get_family(arch.family).reversible_scheme or arch.norm == "batch":
            assert "reversible" not in params
        assert train.epochs == 2 and train.batch_size == 64  # from base_train
        again = space.replay(params, in_channels=1, num_classes=10, image_size=image_size,
                             base_train=BASE_TRAIN)
        assert again == (arch, train)
        fixed = optuna.trial.FixedTrial(params)
        assert space.suggest(fixed, in_channels=1, num_classes=10, image_size=image_size,
                             base_train=BASE_TRAIN) == (arch, train)


def test_shipped_spaces_cover_what_they_promise() -> None:
    seen = sample(SearchSpace.load("all_families"), 50, 32, seed=1)
    assert {a.family for _, a, _ in seen} == {"parabolic", "hamiltonian", "second_order", "resnet"}
    assert any(a.reversible for _, a, _ in seen)
    assert {a.num_units for _, a, _ in seen} == {2, 3, 4}
    assert all(0.05 <= a.step_size <= 1.5 for _, a, _ in seen)
    assert any(len(set(a.depths)) > 1 for _, a, _ in seen)  # per-unit depths
    assert all(max(a.widths) <= 64 for _, a, _ in sample(SearchSpace.load("quickstart"), 30, 8))
    paper = sample(SearchSpace.load("paper"), 10, 32)
    assert all(p.keys() == {"family"} for p, _, _ in paper)
    for _, arch, train in paper:
        from pdenas.architecture import paper_architecture

        assert arch == paper_architecture("cifar10", arch.family, in_channels=1)
        assert (train.optimizer, train.lr, train.schedule, train.milestones) == ("sgd", 0.1, "step", (0.6, 0.8))
    _, cifar100, _ = sample(SearchSpace.load("paper_cifar100"), 1, 32)[0]
    assert cifar100.widths == (32, 64, 128, 256)
    for params, arch, _ in sample(SearchSpace.load("step_and_depth"), 20, 8):
        assert params.keys() == {"family", "depth", "step_size"} and arch.widths == (16, 32, 64, 64)


def test_num_units_is_capped_by_the_image_size() -> None:
    space = SearchSpace.from_dict(minimal(num_units={"low": 2, "high": 7}))
    units = {a.num_units for _, a, _ in sample(space, 40, 8)}
    assert units == {2, 3, 4}  # 4 units need 8x8
    assert {a.num_units for _, a, _ in sample(space, 40, 5)} == {2, 3}
    choices = SearchSpace.from_dict(minimal(num_units=[1, 3, 6]))
    assert {a.num_units for _, a, _ in sample(choices, 30, 4)} == {1, 3}
    with pytest.raises(ValueError, match=r"num_units: .*at most 3 units"):
        SearchSpace.from_dict(minimal(num_units=5)).suggest(
            optuna.trial.FixedTrial({"family": "parabolic"}), in_channels=1, num_classes=10, image_size=4)
    assert SearchSpace.from_dict(minimal(num_units={"low": 1, "high": 9})).grid(image_size=16)["num_units"] == [
        1, 2, 3, 4, 5]


def test_fixed_values_are_honoured_and_make_no_params() -> None:
    space = SearchSpace.from_dict({
        "families": "second_order", "num_units": 2, "depth": 4, "width": {"base": 6, "growth": 1.5, "last": 20},
        "step_size": 0.25, "activation": "tanh", "norm": "none", "reversible": True,
        "train": {"optimizer": "adamw", "lr": 0.003, "milestones": [0.5], "clip_weights": None},
    })
    trial = optuna.create_study().ask()
    arch, train = space.suggest(trial, in_channels=3, num_classes=4, image_size=32, base_train={"lr": 1.0})
    assert trial.params == {}
    assert arch == Architecture("second_order", (6, 9, 20), (4, 4), 0.25, "tanh", "none", 3, 4, True)
    assert (train.optimizer, train.lr, train.milestones, train.clip_weights) == ("adamw", 0.003, (0.5,), None)
    assert space.grid() == {}


def test_width_rules_rounding_and_last_connector() -> None:
    fixed = optuna.trial.FixedTrial({"family": "hamiltonian"})
    kwargs = {"in_channels": 1, "num_classes": 10, "image_size": 32}
    space = SearchSpace.from_dict(minimal(families="hamiltonian", num_units=4, depth=1,
                                          width={"base": 10, "growth": 1.5}))
    assert space.suggest(fixed, **kwargs)[0].widths == (10, 16, 22, 34, 34)  # 15 -> 16, 33.75 -> 34
    grow = SearchSpace.from_dict(minimal(families="parabolic", num_units=3, depth=1,
                                         width={"base": 5, "growth": 2, "last": "grow"}))
    assert grow.suggest(optuna.trial.FixedTrial({}), **kwargs)[0].widths == (5, 10, 20, 40)
    units = SearchSpace.from_dict(minimal(families="hamiltonian", num_units=[2, 3], depth=1,
                                          width={"units": [7, [16, 24], {"low": 8, "high": 64, "step": 8}]}))
    arch, _ = units.replay({"num_units": 3, "width_1": 24, "width_2": 40}, **kwargs)
    assert arch.widths == (8, 24, 40, 40)
    arch, _ = units.replay({"num_units": 2, "width_1": 16}, **kwargs)
    assert arch.widths == (8, 16, 16)


def test_family_overrides_use_their_own_params() -> None:
    space = SearchSpace.from_dict(minimal(
        step_size={"low": 0.5, "high": 1.0},
        depth_per_unit=True,
        train={"lr": {"low": 0.01, "high": 0.1, "log": True}, "optimizer": "sgd"},
        family_overrides={"hamiltonian": {"step_size": {"low": 0.01, "high": 0.1, "log": True},
                                          "train": {"lr": [0.5]}}},
    ))
    for params, arch, train in sample(space, 40, 16):
        if arch.family == "hamiltonian":
            assert {"step_size_hamiltonian", "lr_hamiltonian"} <= params.keys()
            assert "step_size" not in params and 0.01 <= arch.step_size <= 0.1 and train.lr == 0.5
        else:
            assert "step_size_hamiltonian" not in params and 0.5 <= arch.step_size <= 1.0
            assert 0.01 <= train.lr <= 0.1
        assert [params[f"depth_{k}"] for k in range(arch.num_units)] == list(arch.depths)
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_grid_for_a_categorical_space_runs_every_candidate() -> None:
    space = SearchSpace.from_dict(minimal(
        num_units=[1, 2], depth={"low": 1, "high": 2}, width={"base": [4, 8], "growth": 2},
        step_size={"low": 0.5, "high": 1.0, "step": 0.25}, norm=["tv", "none"],
    ))
    grid = space.grid()
    assert grid == {"family": ["parabolic", "hamiltonian"], "num_units": [1, 2], "depth": [1, 2],
                    "width_base": [4, 8], "step_size": [0.5, 0.75, 1.0], "norm": ["tv", "none"]}
    size = len(list(itertools.product(*grid.values())))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    archs = set()

    def objective(trial: optuna.Trial) -> float:
        archs.add(space.suggest(trial, in_channels=1, num_classes=2, image_size=8)[0])
        return 0.0

    study.optimize(objective, n_trials=size + 5)  # the sampler stops the study when done
    assert len(study.trials) == size and len(archs) == size
    with pytest.raises(ValueError, match=r"^lr: the continuous range"):
        SearchSpace.from_dict(minimal(train={"lr": {"low": 0.01, "high": 0.1}})).grid()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"depht": 3}, r"^depht: unknown key; allowed: description, families, num_units"),
        ({"families": ["parabolic", "heat"]}, r"^family: unknown 'heat'; allowed: hamiltonian, parabolic"),
        ({"num_units": {"low": 3, "high": 2}}, r"^num_units: low \(3\) is above high \(2\)"),
        ({"step_size": {"low": 0.0, "high": 1.0, "log": True}}, r"^step_size.low: a log range needs low > 0"),
        ({"step_size": {"low": -1.0, "high": 1.0}}, r"^step_size: got -1.0; allowed: a finite number > 0"),
        ({"step_size": {"low": 0.1, "hihg": 1.0}}, r"^step_size.hihg: unknown key; allowed: value, choices"),
        ({"depth": {"low": 1.5, "high": 3}}, r"^depth.low: got 1.5; allowed: an integer"),
        ({"depth": [0, 1]}, r"^depth: got 0; allowed: >= 1"),
        ({"activation": {"low": 1, "high": 2}}, r"^activation: takes a fixed value or a list"),
        ({"norm": ["tv", "group"]}, r"^norm: unknown 'group'; allowed: tv, batch, none"),
        ({"reversible": "yes"}, r"^reversible: got 'yes'; allowed: true or false"),
        ({"opening_stride": [1, 3]}, r"^opening_stride: unknown 3; allowed: 1, 2"),
        ({"opening_stride": True}, r"^opening_stride: unknown True; allowed: 1, 2"),
        ({"width": {"base": 8, "growth": 2, "units": [8]}}, r"^width: give either base and growth"),
        ({"width": {"base": 8}}, r"^width.growth: missing"),
        ({"width": {"units": [8, 16]}}, r"^width.units: 2 entries for up to 3 units"),
        ({"width": {"units": [8, 8, 8], "last": "grow"}}, r"^width.last: got 'grow'; allowed: 'same' or an integer"),
        ({"train": {"lr": {"low": 0.1, "high": 0.01}}}, r"^train.lr: low \(0.1\) is above high"),
        ({"train": {"learning_rate": 0.1}}, r"^train.learning_rate: unknown key; allowed: epochs"),
        ({"train": {"optimizer": ["sgd", "adam"]}}, r"^train.optimizer: got 'adam'; allowed: sgd \| adamw"),
        ({"family_overrides": {"resnet": {"step_size": 0.1}}}, r"^family_overrides.resnet: unknown key"),
        ({"family_overrides": {"hamiltonian": {"famlies": 1}}},
         r"^family_overrides.hamiltonian.famlies: unknown key; allowed: num_units"),
        ({"family_overrides": {"hamiltonian": {"step_size": {"low": 2.0, "high": 1.0}}}},
         r"^family_overrides.hamiltonian.step_size: low \(2.0\) is above high"),
    ],
)
def test_bad_spaces_are_rejected_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict(minimal(**changes))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("families: [parabolic]\nnum_units: 2\ndepth: 1\nwidth: {base: 8, growth: 1}\n"
                    "train: {lr: {low: 1e-3, high: 1e-1, log: true}}\nsteps: 3\n")
    with pytest.raises(ValueError, match=r"^mine.yaml: steps: unknown key; allowed: "):
        SearchSpace.load(path)
    path.write_text(path.read_text().replace("steps: 3\n", ""))
    space = SearchSpace.load(str(path))
    assert space.name == "mine" and dict(space.dimensions.train)["lr"].low == 1e-3  # 1e-3 is a number
    path.write_text("num_units: 2\ndepth: 1\n")
    with pytest.raises(ValueError, match=r"^mine.yaml: width: missing"):
        SearchSpace.load(path)
    with pytest.raises(ValueError, match="not found"):
        SearchSpace.load(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match=r"unknown name 'nope'; available: all_families"):
        SearchSpace.load("nope")


def test_replay_refuses_params_outside_the_space() -> None:
    space = SearchSpace.from_dict(minimal())
    kwargs = {"in_channels": 1, "num_classes": 10, "image_size": 8}
    good = {"family": "parabolic", "num_units": 2, "depth": 2, "width_base": 4, "width_growth": 2.0}
    assert space.replay({**good, "unused": 1}, **kwargs)[0].widths == (4, 8, 8)
    with pytest.raises(ValueError, match=r"^depth: missing from the params"):
        space.replay({k: v for k, v in good.items() if k != "depth"}, **kwargs)
    with pytest.raises(ValueError, match=r"^width_base: 5 is not one of the choices"):
        space.replay({**good, "width_base": 5}, **kwargs)
    with pytest.raises(ValueError, match=r"^num_units: 4 is not an integer in \[1, 3\]"):
        space.replay({**good, "num_units": 4}, **kwargs)


def test_opening_stride_is_a_dimension_that_caps_the_units() -> None:
    fixed = SearchSpace.from_dict(minimal())
    assert {a.opening_stride for _, a, _ in sample(fixed, 10, 8)} == {1}  # the paper's, asked nothing
    assert all("opening_stride" not in params for params, _, _ in sample(fixed, 10, 8))
    space = SearchSpace.from_dict(minimal(num_units={"low": 1, "high": 4}, opening_stride=[1, 2]))
    assert SearchSpace.from_dict(space.to_dict()) == space
    drawn = sample(space, 60, 8)
    assert {params["opening_stride"] for params, _, _ in drawn} == {1, 2}
    for params, arch, _ in drawn:
        assert arch.opening_stride == params["opening_stride"]
        arch.check_input(8, 8)  # at stride 2, 8x8 fits 3 units, not 4
    assert max(a.num_units for _, a, _ in drawn if a.opening_stride == 2) == 3
    assert max(a.num_units for _, a, _ in drawn if a.opening_stride == 1) == 4
    assert space.grid(image_size=8)["num_units"] == [1, 2, 3]  # every grid point fits
    kwargs = {"in_channels": 1, "num_classes": 10, "image_size": 8}
    params = {"family": "parabolic", "opening_stride": 2, "num_units": 3, "depth": 1,
              "width_base": 4, "width_growth": 2.0}
    assert space.replay(params, **kwargs)[0].opening_stride == 2


def test_check_params_refuses_names_and_values_no_candidate_takes() -> None:
    space = SearchSpace.from_dict(minimal(train={"lr": {"low": 1e-3, "high": 1e-1, "log": True}},
                                          family_overrides={"hamiltonian": {"depth": 3}}))
    kwargs = {"in_channels": 1, "num_classes": 10, "image_size": 8}
    space.check_params({}, **kwargs)
    space.check_params({"family": "parabolic", "depth": 2, "width_base": 6, "lr": 0.01}, **kwargs)
    for params, message in [
        ({"depth": 3}, r"^depth: got 3; allowed: 1, 2$"),
        ({"num_units": 4}, r"^num_units: got 4; allowed: an integer from 1 to 3$"),
        ({"lr": 0.5}, r"^lr: got 0.5; allowed: a number from 0.001 to 0.1$"),
        ({"family": "resnet"}, r"^family: got 'resnet'; allowed: parabolic, hamiltonian$"),
        ({"dpeth": 1}, r"^dpeth: not a param of this space's candidates \(given the others\); "
                       r"allowed: family, num_units, depth, width_base, width_growth, lr$"),
        # the Hamiltonian's depth is fixed by its override: its candidates ask for no depth
        ({"family": "hamiltonian", "depth": 1}, r"^depth: not a param of this space's candidates"),
    ]:
        with pytest.raises(ValueError, match=message):
            space.check_params(params, **kwargs)
