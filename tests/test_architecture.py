"""Architecture: validation with messages that name the key and what is allowed, the JSON round
trip, the paper presets and the input-size check."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pdenas import Architecture, list_families, paper_architecture
from pdenas.architecture import PAPER_LAYOUTS

BASE = {"family": "parabolic", "widths": [8, 16, 16], "depths": [2, 3]}


def _refused(match: str, **changes) -> str:
    with pytest.raises(ValueError, match=match) as info:
        Architecture.from_dict({**BASE, **changes})
    return str(info.value)


def test_from_dict_builds_and_fills_defaults():
    arch = Architecture.from_dict(BASE)
    assert arch.widths == (8, 16, 16) and arch.depths == (2, 3)
    assert (arch.step_size, arch.activation, arch.norm) == (1.0, "relu", "tv")
    assert (arch.in_channels, arch.num_classes, arch.reversible) == (3, 10, False)
    assert arch.init == "repeat"
    assert arch.num_units == 2
    assert isinstance(arch.step_size, float)


def test_unknown_family_lists_the_registered_ones():
    message = _refused(r"^family: unknown 'heat'", family="heat")
    for name in list_families():
        assert name in message


def test_odd_hamiltonian_unit_widths_are_refused():
    message = _refused(r"^widths: got 15 in \[8, 15, 16\]; allowed: a multiple of 2", family="hamiltonian", widths=[8, 15, 16])
    assert "15" in message
    # The last connector's output is not split, so it may be odd.
    assert Architecture.from_dict({**BASE, "family": "hamiltonian", "widths": [8, 16, 15]})


@pytest.mark.parametrize("depths", [[0, 3], [2, -1]])
def test_depth_below_one_is_refused(depths):
    _refused(r"^depths: got -?\d+ in .*; allowed: an integer >= 1", depths=depths)


@pytest.mark.parametrize("h", [0, 0.0, -0.5, float("nan"), float("inf"), "1", True, None])
def test_non_positive_or_non_numeric_step_size_is_refused(h):
    _refused(r"^step_size: got .*; allowed: a finite number", step_size=h)


def test_unknown_key_is_named_with_the_allowed_keys():
    message = _refused(r"^colour: unknown key; allowed: ", colour="red")
    for field in dataclasses.fields(Architecture):
        assert field.name in message


def test_missing_required_key_is_named():
    message = r"^depths: missing; required keys: family, widths, depths"
    with pytest.raises(ValueError, match=message):
        Architecture.from_dict({"family": "parabolic", "widths": [8, 8]})


@pytest.mark.parametrize("family", ["parabolic", "resnet"])
def test_reversible_is_refused_for_schemes_that_are_not_reversible(family):
    _refused(r"^reversible: .*allowed: with hamiltonian, second_order", family=family,
             reversible=True)


def test_reversible_with_batch_norm_is_refused():
    _refused(r"^reversible: batch norm", family="hamiltonian", norm="batch", reversible=True)


def test_reversible_must_be_a_bool():
    _refused(r"^reversible: got 'yes'; allowed: true or false", family="hamiltonian", reversible="yes")


def test_norm_and_activation_name_the_allowed_values():
    _refused(r"^norm: unknown 'layer'; allowed: tv, batch, none", norm="layer")
    _refused(r"^activation: unknown 'swish'; allowed: .*relu", activation="swish")


def test_widths_must_match_the_depths():
    _refused(r"^widths: got 2 entries; allowed: one entry per unit plus the last connector's output \(3 for 2",
             widths=[8, 16])
    _refused(r"^widths: got \[8, 0, 16\]; allowed: integers >= 1", widths=[8, 0, 16])
    _refused(r"^widths: got '8,16,16'; allowed: a list of integers", widths="8,16,16")
    _refused(r"^depths: got \(\); allowed: a non-empty list of integers", depths=[])
    _refused(r"^depths\[0\]: got 2.5; allowed: an integer", depths=[2.5, 3])


@pytest.mark.parametrize("key", ["in_channels", "num_classes"])
@pytest.mark.parametrize("value", [0, True, 2.0])
def test_counts_must_be_positive_integers(key, value):
    _refused(rf"^{key}: got {value!r}; allowed: an integer", **{key: value})


def test_not_a_mapping_is_refused():
    with pytest.raises(ValueError, match="^architecture: expected a mapping"):
        Architecture.from_dict(["parabolic"])


def test_architecture_is_frozen():
    arch = Architecture.from_dict(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.step_size = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "arch",
    [
        Architecture.from_dict(BASE),
        Architecture.from_dict(
            {**BASE, "family": "hamiltonian", "step_size": 0.25, "activation": "tanh",
             "norm": "none", "in_channels": 1, "num_classes": 7, "reversible": True}
        ),
        *(paper_architecture(dataset, family) for dataset in PAPER_LAYOUTS
          for family in ("parabolic", "second_order")),
    ],
    ids=lambda a: f"{a.family}-{len(a.depths)}units",
)
def test_json_round_trip(arch):
    text = json.dumps(arch.to_dict())
    data = json.loads(text)
    assert set(data) == {f.name for f in dataclasses.fields(Architecture)}
    again = Architecture.from_dict(data)
    assert again == arch
    assert hash(again) == hash(arch)
    assert json.dumps(again.to_dict()) == text


@pytest.mark.parametrize("family", ["parabolic", "hamiltonian", "second_order", "resnet"])
def test_paper_presets(family):
    stl = paper_architecture("stl10", family)
    assert stl.widths == (16, 32, 64, 128, 128) and stl.depths == (3, 3, 3, 3)
    cifar10 = paper_architecture("cifar10", family)
    assert cifar10.widths == (32, 64, 112, 112) and cifar10.depths == (3, 3, 3)
    cifar100 = paper_architecture("cifar100", family)
    assert cifar100.widths == (32, 64, 128, 256) and cifar100.num_classes == 100
    for arch in (stl, cifar10, cifar100):
        assert (arch.family, arch.step_size) == (family, 1.0)
        norm = "batch" if family == "resnet" else "tv"  # the family's own block
        assert (arch.norm, arch.activation) == (norm, "relu")
        assert arch.in_channels == 3


def test_paper_preset_overrides_and_unknown_dataset():
    arch = paper_architecture("cifar10", "hamiltonian", reversible=True, step_size=0.5)
    assert arch.reversible and arch.step_size == 0.5
    with pytest.raises(ValueError, match=r"^dataset: no paper layout for 'mnist'; allowed: stl10"):
        paper_architecture("mnist", "parabolic")
    with pytest.raises(ValueError, match="^family: unknown"):
        paper_architecture("cifar10", "heat")


def test_check_input_needs_two_to_the_units_minus_one_pixels():
    arch = Architecture.from_dict({**BASE, "widths": [8] * 5, "depths": [1] * 4})
    assert arch.min_input_size() == 8
    arch.check_input(8, 8)
    arch.check_input(96, 8)
    with pytest.raises(ValueError) as info:
        arch.check_input(7, 96)
    message = str(info.value)
    assert message.startswith("depths: 4 units")
    assert "at least 8x8, got 7x96" in message
    assert "use at most 3 units" in message
    single = Architecture.from_dict({**BASE, "widths": [8, 8], "depths": [1]})
    single.check_input(1, 1)


def test_opening_stride_is_one_or_two_and_doubles_the_smallest_input():
    arch = Architecture.from_dict({**BASE, "widths": [8] * 4, "depths": [1] * 3})
    assert arch.opening_stride == 1 and arch.min_input_size() == 4  # the paper's, by default
    strided = Architecture.from_dict({**arch.to_dict(), "opening_stride": 2})
    assert strided.min_input_size() == 8 and strided.to_dict()["opening_stride"] == 2
    assert Architecture.from_dict(strided.to_dict()) == strided
    strided.check_input(8, 8)
    with pytest.raises(ValueError, match="opening stride 2 .* at least 8x8, got 7x8; use at most 2"):
        strided.check_input(7, 8)
    for bad in (0, 3, 4, True, 1.5, "2"):
        with pytest.raises(ValueError, match=r"^opening_stride: got .*; allowed: "):
            Architecture.from_dict({**BASE, "opening_stride": bad})
    stored = {k: v for k, v in strided.to_dict().items() if k != "opening_stride"}
    assert Architecture.from_dict(stored).opening_stride == 1  # records written before it


def test_the_norm_defaults_to_the_familys_own():
    resnet = Architecture.from_dict({**BASE, "family": "resnet"})
    assert resnet.norm == "batch" and resnet.to_dict()["norm"] == "batch"
    assert Architecture.from_dict({**BASE, "family": "resnet", "norm": "tv"}).norm == "tv"
    assert Architecture.from_dict({**BASE, "family": "parabolic", "norm": None}).norm == "tv"
    for dataset in PAPER_LAYOUTS:
        assert paper_architecture(dataset, "resnet").norm == "batch"
        assert paper_architecture(dataset, "hamiltonian").norm == "tv"


def test_init_is_validated_and_round_trips():
    arch = Architecture.from_dict({**BASE, "init": "independent"})
    assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    message = _refused(r"^init: unknown 'tied'; allowed: repeat, independent", init="tied")
    assert "tied" in message
