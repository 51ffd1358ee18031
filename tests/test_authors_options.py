"""The authors' (Meganet.m) smaller choices as options, leapfrog's half-step start from a study,
and the gain every trial records: architecture fields ``start``, ``layer_init`` and ``bn_eps``,
the data option ``standardise``; validated in one line, carried by spaces, records and every
export format, stated on the card; ``gain`` in records with the stability check off and in the
leaderboard."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pdenas import Architecture, build_model, deepen
from pdenas.architecture import MEGANET_BN_EPS, TORCH_BN_EPS
from pdenas.cli import main
from pdenas.data import DataConfig, load_data
from pdenas.data.splits import standardise_images
from pdenas.export import FILES, FORMATS, load_export, load_pt2, load_safetensors, onnx_logits
from pdenas.export import write_formats
from pdenas.results import format_leaderboard, leaderboard, load_trials
from pdenas.space import SearchSpace

from conftest import search_quietly

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"family": "second_order", "widths": [4, 6, 6], "depths": [2, 1], "in_channels": 1,
        "num_classes": 3}
AUTHORS = {"start": "half_step", "layer_init": "meganet", "bn_eps": MEGANET_BN_EPS}


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --- the architecture fields ---------------------------------------------------------------------
def test_the_fields_default_to_pytorchs_and_round_trip() -> None:
    arch = Architecture.from_dict(BASE)
    assert (arch.start, arch.layer_init, arch.bn_eps) == ("rest", "torch", TORCH_BN_EPS)
    authors = Architecture.from_dict({**BASE, **AUTHORS})
    assert Architecture.from_dict(json.loads(json.dumps(authors.to_dict()))) == authors
    assert {k: authors.to_dict()[k] for k in AUTHORS} == AUTHORS


@pytest.mark.parametrize(("changes", "message"), [
    ({"family": "parabolic", "start": "half_step"},
     "start: the parabolic scheme has no 'half_step' start; allowed: rest"),
    ({"start": "midpoint"}, "start: unknown 'midpoint'; allowed: rest, half_step"),
    ({"layer_init": "kaiming"}, "layer_init: got 'kaiming'; allowed: torch, meganet"),
    ({"bn_eps": 0}, "bn_eps: got 0.0; allowed: a number in (0, 1] (PyTorch's 1e-05, the "
                    "authors' 0.0001)"),
    ({"bn_eps": "1e-4"}, "bn_eps: got '1e-4'; allowed: a finite number"),
])
def test_a_bad_field_is_refused_in_one_line(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Architecture.from_dict({**BASE, **changes})
    assert str(info.value) == message


def test_meganet_init_redraws_the_opening_connectors_and_classifier_only() -> None:
    arch = {"family": "resnet", "widths": [32, 64, 64], "depths": [1, 1], "num_classes": 100}
    torch.manual_seed(0)
    plain = build_model(Architecture.from_dict(arch))
    torch.manual_seed(0)
    authors = build_model(Architecture.from_dict({**arch, "layer_init": "meganet"}))
    assert all(torch.equal(a, b) for a, b in zip(plain.units.state_dict().values(),
                                                 authors.units.state_dict().values()))
    for conv, (c_in, k) in [(authors.opening[0], (3, 3)), (authors.connectors[0][0], (32, 1)),
                            (authors.connectors[1][0], (64, 1))]:
        sd = math.sqrt(2 / (c_in * k))  # convKernel.initTheta: sqrt(2 / (sK(3) sK(2)))
        w = conv.weight.detach()
        assert w.abs().max() <= 2 * sd + 1e-6
        assert 0.8 * sd < w.std() < 0.95 * sd  # a normal truncated at 2 sd: 0.88 sd
    for tensor in (authors.classifier.weight, authors.classifier.bias):
        assert tensor.detach().abs().max() <= 0.2
    weight = authors.classifier.weight.detach()
    assert 0.085 < weight.std() < 0.105  # 0.1 N(0, 1) clipped at 0.2 (PyTorch's: 0.072)
    assert 0.02 < (weight.abs() == 0.2).float().mean() < 0.08  # 4.6 % expected at the clip
    assert plain.classifier.weight.detach().abs().max() <= 1 / 8  # PyTorch's bound 1/sqrt(64)


def test_bn_eps_reaches_every_batch_norm_and_survives_deepen() -> None:
    arch = Architecture.from_dict({"family": "resnet", "widths": [4, 6, 6], "depths": [1, 2],
                                   "in_channels": 1, "bn_eps": MEGANET_BN_EPS})
    model = build_model(arch)
    assert len(_norms(model)) == 1 + 2 + 2 * 3  # opening, connectors, two per resnet step
    deeper = deepen(model, 2)
    assert deeper.arch.bn_eps == MEGANET_BN_EPS and len(_norms(deeper)) == 1 + 2 + 2 * 6
    assert {m.eps for m in _norms(model)} == {m.eps for m in _norms(deeper)} == {MEGANET_BN_EPS}
    assert {m.eps for m in _norms(build_model(deeper.arch))} == {MEGANET_BN_EPS}
    assert {m.eps for m in _norms(build_model(arch.__class__.from_dict(
        {**arch.to_dict(), "bn_eps": TORCH_BN_EPS})))} == {TORCH_BN_EPS}


def test_the_half_step_start_reaches_the_units_and_survives_deepen() -> None:
    model = build_model(Architecture.from_dict({**BASE, "start": "half_step"}))
    assert [unit.start for unit in model.units] == ["half_step"] * 2
    deeper = deepen(model, 2)
    assert deeper.arch.start == "half_step"
    assert [unit.start for unit in deeper.units] == ["half_step"] * 2
    rest = build_model(Architecture.from_dict(BASE))
    x = torch.randn(2, 4, 5, 5)
    rest.units[0].load_state_dict(model.units[0].state_dict())
    with torch.no_grad():  # the first step's force is halved: the outputs differ
        assert not torch.allclose(model.units[0].eval()(x), rest.units[0].eval()(x))


# --- the search space ----------------------------------------------------------------------------
def _space(**changes: object) -> SearchSpace:
    data = {"families": ["parabolic", "second_order"], "num_units": 2, "depth": 1,
            "width": {"base": 4, "growth": 1}, **changes}
    return SearchSpace.from_dict(data, source="space.yaml")


def _replay(space: SearchSpace, **params: object) -> Architecture:
    arch, _ = space.replay(params, in_channels=1, num_classes=3, image_size=8)
    return arch


def test_start_is_a_space_dimension_asked_of_second_order_only() -> None:
    space = _space(start=["rest", "half_step"])
    assert _replay(space, family="second_order", start="half_step").start == "half_step"
    assert _replay(space, family="second_order", start="rest").start == "rest"
    assert _replay(space, family="parabolic").start == "rest"  # not asked: one start only
    assert space.grid()["start"] == ["rest", "half_step"]
    with pytest.raises(ValueError, match="^start: not a param of this space's candidates"):
        space.check_params({"family": "parabolic", "start": "half_step"}, in_channels=1,
                           num_classes=3, image_size=8)
    fixed = _space(start="half_step", layer_init="meganet", bn_eps=1.0e-4)
    arch = _replay(fixed, family="second_order")
    assert (arch.start, arch.layer_init, arch.bn_eps) == ("half_step", "meganet", 1e-4)
    assert "start" not in fixed.grid() and "layer_init" not in fixed.grid()
    for space in (_space(), fixed, _space(layer_init=["torch", "meganet"], bn_eps=[1e-5, 1e-4])):
        assert SearchSpace.from_dict(space.to_dict(), name=space.name) == space
    authors = _replay(SearchSpace.load("stl10_authors"), family="second_order")
    assert (authors.start, authors.layer_init, authors.bn_eps) == ("rest", "meganet", 1e-4)


@pytest.mark.parametrize(("changes", "message"), [
    ({"start": ["rest", "midpoint"]}, "space.yaml: start: unknown 'midpoint'; allowed: rest, "
                                      "half_step"),
    ({"layer_init": "keras"}, "space.yaml: layer_init: unknown 'keras'; allowed: torch, meganet"),
    ({"bn_eps": 2}, "space.yaml: bn_eps: got 2.0; allowed: a number in (0, 1]"),
    ({"bn_eps": {"low": 0.0, "high": 1e-3}}, "space.yaml: bn_eps: got 0.0; allowed: a number in "
                                             "(0, 1]"),
])
def test_a_bad_space_value_is_refused_in_one_line(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        _space(**changes)
    assert str(info.value) == message


# --- per-image standardisation -------------------------------------------------------------------
def test_per_image_standardisation_is_the_authors_normalize_data() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 6, 7), generator=gen, dtype=torch.uint8)
    images[1] = 77  # a constant image: the std floor 1 / sqrt(n) keeps it finite (zeros)
    out = standardise_images(images)
    for raw, got in zip(images.double(), out.double()):
        x = raw.reshape(-1)
        want = (x - x.mean()) / max(float(x.std()), 1 / math.sqrt(x.numel()))  # std: n - 1
        assert torch.allclose(got.reshape(-1), want, atol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_the_data_option_standardises_every_split_per_image() -> None:
    data = load_data(DataConfig(name="digits", train_limit=100, standardise="image"))
    assert data.standardise == "image" and data.mean == (0.0,) and data.std == (1.0,)
    for split in (data.train, data.val, data.test):
        flat = split.x.reshape(len(split), -1).double()
        assert flat.mean(1).abs().max() < 1e-5 and (flat.std(1) - 1).abs().max() < 1e-5
    assert load_data(DataConfig(name="digits", train_limit=100)).standardise == "channel"
    with pytest.raises(ValueError) as info:
        DataConfig.from_dict({"standardise": "pixel"})
    assert str(info.value) == "data.standardise: got 'pixel'; allowed: channel, image"
    assert DataConfig.from_stored({"name": "digits"}).standardise == "channel"  # older run.json


# --- every export format -------------------------------------------------------------------------
def test_the_fields_round_trip_through_every_export_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(Architecture.from_dict({**BASE, **AUTHORS})).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    checks = write_formats(model, tmp_path, x, FORMATS, mean=(0.0,), std=(1.0,),
                           classes=("a", "b", "c"))
    assert all(checks[fmt].max_abs_diff < 1e-5 for fmt in FORMATS)
    with torch.no_grad():
        reference = model(x)
    config = json.loads((tmp_path / "config.json").read_text())
    assert {k: config["architecture"][k] for k in AUTHORS} == AUTHORS
    for loaded in (load_export(tmp_path).model, load_safetensors(tmp_path)):
        assert loaded.arch == model.arch
        assert {m.eps for m in _norms(loaded)} == {MEGANET_BN_EPS}
        assert [u.start for u in loaded.units] == ["half_step"] * 2
        with torch.no_grad():
            assert torch.equal(loaded(x), reference)
    with torch.no_grad():
        assert torch.allclose(load_pt2(tmp_path / FILES["pt2"])(x), reference, atol=1e-5)
    assert torch.allclose(onnx_logits(tmp_path / FILES["onnx"], x), reference, atol=1e-5)


def test_an_export_written_before_the_fields_reads_with_the_defaults(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(Architecture.from_dict(BASE)).eval()
    write_formats(model, tmp_path, torch.randn(2, 1, 8, 8), ("pt", "safetensors"))
    old = {k: v for k, v in model.arch.to_dict().items() if k not in AUTHORS}
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architecture": old}))
    payload = torch.load(tmp_path / FILES["pt"], weights_only=True)
    torch.save({**payload, "architecture": old}, tmp_path / FILES["pt"])
    for loaded in (load_export(tmp_path).model, load_safetensors(tmp_path)):
        assert (loaded.arch.start, loaded.arch.layer_init, loaded.arch.bn_eps) == (
            "rest", "torch", TORCH_BN_EPS)


# --- a run: records, the leaderboard, the card ---------------------------------------------------
SPACE = """
description: the authors' options, tiny
families: second_order
num_units: 2
depth: 1
width: {base: 4, growth: 1, last: same}
step_size: 0.5
start: half_step
layer_init: meganet
bn_eps: 1.0e-4
train: {optimizer: adamw, lr: 0.02}
"""

STUDY = """
name: authors_options
data: {name: digits, train_limit: 240, standardise: image}
space: space.yaml
train: {epochs: 1, batch_size: 64, augment: false}
objectives: [val_accuracy, flops]
sampler: random
n_trials: 2
device: cpu
seed: 0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run by `pdenas search` with the stability check off (the default)."""
    return search_quietly(tmp_path_factory.mktemp("authors_run"),
                          {"space.yaml": SPACE, "study.yaml": STUDY}, "study.yaml")


def _records(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("trials/*/record.json"))]


def test_records_hold_the_fields_and_the_gain_with_the_check_off(run: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 tmp_path: Path) -> None:
    records = _records(run)
    assert [r["status"] for r in records] == ["completed"] * 2
    for record in records:
        assert {k: record["architecture"][k] for k in AUTHORS} == AUTHORS
        final = record["stability"]["final"]
        gains = [unit["gain"] for unit in final["units"]]
        assert len(gains) == 2 and all(g > 0 for g in gains) and final["gain"] == max(gains)
        assert "spectral_radius" not in final and final["seconds"] >= 0  # the gain alone
    trials = load_trials(run)
    assert trials["gain"].tolist() == [r["stability"]["final"]["gain"] for r in records]
    assert set(trials["start"]) == {"half_step"} and set(trials["bn_eps"]) == {1e-4}
    board = leaderboard(trials)
    assert board["gain"].notna().all()
    header = format_leaderboard(board).splitlines()[0].split()
    assert header[-1] == "gain" and header[header.index("widths") + 1] == "start"
    assert main(["leaderboard", str(run)]) == 0
    assert "gain" in capsys.readouterr().out

    # A record written before the gain was kept (no stability entry) reads as missing.
    old = tmp_path / "old"
    shutil.copytree(run, old)
    path = old / "trials" / "0" / "record.json"
    record = json.loads(path.read_text())
    record["stability"] = {}
    for key in AUTHORS:
        record["architecture"].pop(key)
    path.write_text(json.dumps(record))
    trials = load_trials(old)
    assert math.isnan(trials.loc[0, "gain"]) and trials.loc[1, "gain"] > 0
    assert (trials.loc[0, "start"], trials.loc[0, "layer_init"], trials.loc[0, "bn_eps"]) == (
        "rest", "torch", TORCH_BN_EPS)
    assert "gain" in format_leaderboard(leaderboard(trials))


def test_the_card_and_config_state_the_options(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", str(run), "--device", "cpu", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert {k: card["model"][k] for k in AUTHORS} == AUTHORS
    assert card["data"]["standardise"] == "image"
    assert card["data"]["input"].startswith("each image standardised on its own")
    config = json.loads((out / "config.json").read_text())
    assert config["input"] == card["data"]["input"]
    assert {k: config["architecture"][k] for k in AUTHORS} == AUTHORS
    markdown = (out / "card.md").read_text()
    for line in ("| first step (start) | half_step |",
                 "| opening/connector/classifier init | meganet |",
                 "| batch-norm eps | 0.0001 |", "| input standardisation | image |"):
        assert line in markdown
    assert "each image standardised on its own" in markdown
    loaded = load_export(out)
    assert loaded.architecture.start == "half_step"
    assert {m.eps for m in _norms(loaded.model)} == {MEGANET_BN_EPS}
