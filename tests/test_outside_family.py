"""A family registered from outside pdenas (as a plugin would) validates, rounds its widths,
trains, is searched, ranked and exported like the built-in ones: what is true of a family lives
with its class."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import pdenas
from pdenas.cli import main
from pdenas.families import PDEUnit, SymmetricLayer, register_family
from pdenas.families._registry import _FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")


class ThirdsUnit(PDEUnit):
    """Forward Euler on three independent channel groups:
    ``Y^g_{j+1} = Y^g_j + h F(θ^g_j, Y^g_j)`` for g = 1, 2, 3 (a block-diagonal parabolic unit),
    so the width must be a multiple of 3."""

    width_multiple = 3

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        third = width // 3
        self.layers = nn.ModuleList(
            self.per_step(lambda: SymmetricLayer(third, norm=self.norm_name,
                                                 activation=self.activation_name))
            for _ in range(3))

    def init_state(self, x: torch.Tensor):
        return tuple(x.chunk(3, dim=1))

    def step(self, j: int, state):
        return tuple(y + self.step_size * layers[j](y) for y, layers in zip(state, self.layers))

    def output(self, state) -> torch.Tensor:
        return torch.cat(state, dim=1)

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return tuple(layers[j] for layers in self.layers)

    def step_bound(self, norms: Sequence[float]) -> float:
        largest = max(norms)
        return 2.0 / largest if largest > 0 else float("inf")


@pytest.fixture
def thirds() -> Iterator[str]:
    register_family("thirds")(ThirdsUnit)
    try:
        yield "thirds"
    finally:
        _FAMILIES.unregister("thirds")


def test_the_family_checks_its_own_widths(thirds: str) -> None:
    assert thirds in pdenas.list_families()
    with pytest.raises(ValueError, match=r"^widths: got 8 in \[8, 9, 9\]; allowed: a multiple "
                                         r"of 3 for the thirds family"):
        pdenas.Architecture.from_dict({"family": thirds, "widths": [8, 9, 9], "depths": [1, 1]})
    unit = pdenas.build_unit(thirds, width=6, depth=2, step_size=0.5)
    assert unit(torch.randn(2, 6, 5, 5)).shape == (2, 6, 5, 5)
    assert ThirdsUnit.round_width(8) == 9 and ThirdsUnit.round_width(9) == 9


def test_an_outside_family_goes_through_a_search_and_an_export(thirds: str, tmp_path: Path,
                                                               capsys) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "families": [thirds, "parabolic"], "num_units": 2, "depth": 1,
        "width": {"base": 8, "growth": 1, "last": "same"}, "step_size": 0.5}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "outside", "data": {"name": "digits", "train_limit": 300}, "space": "space.yaml",
        "train": {"epochs": 2, "batch_size": 64, "augment": False}, "sampler": "random",
        "early_stop": "none", "n_trials": 3, "device": "cpu"}))
    run = tmp_path / "run"
    assert main(["search", str(tmp_path / "study.yaml"), "--out", str(run), "--quiet"]) == 0
    trials = pdenas.results.load_trials(run)
    mine = trials[trials["family"] == thirds]
    assert len(mine) >= 1 and set(mine["status"]) == {"completed"}
    assert all(w == (9, 9, 9) for w in mine["widths"])  # 8 rounded up by the family
    assert thirds in capsys.readouterr().out  # on the leaderboard
    number = int(mine["number"].iloc[0])
    out = tmp_path / "export"
    assert main(["export", str(run), "--trial", str(number), "--format", "pt", "--out", str(out),
                 "--device", "cpu"]) == 0
    loaded = pdenas.load_model(out)
    assert isinstance(loaded.units[0], ThirdsUnit)
    assert loaded(torch.randn(3, 1, 8, 8)).shape == (3, 10)
