"""build_model: the paper's layout, parameter counts from a closed formula, every input size from
8x8 to 96x96 and the reversible network's gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pdenas import Architecture, PDENet, build_model, list_families, paper_architecture
from pdenas.architecture import PAPER_LAYOUTS
from pdenas.families import PDEUnit

FAMILIES = list_families()


# Tiny tensors: one thread is fastest, and steady on a busy 2-core machine (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _unit_params(family: str, c: int, steps: int) -> int:
    def symmetric(w: int) -> int:
        return 9 * w * w + 2 * w  # K (3x3, no bias) and the norm's scale and shift

    per_step = {
        "parabolic": symmetric(c),
        "second_order": symmetric(c),
        "hamiltonian": 2 * symmetric(c // 2),
        "resnet": 2 * 9 * c * c + 2 * 2 * c,  # two 3x3 convs without bias, two norms
    }[family]
    return steps * per_step


def _expected_params(arch: Architecture) -> int:
    c = arch.widths
    total = 9 * arch.in_channels * c[0] + 2 * c[0]  # opening conv (no bias) + batch norm
    for k, steps in enumerate(arch.depths):
        total += _unit_params(arch.family, c[k], steps)
        total += c[k] * c[k + 1] + 2 * c[k + 1]  # 1x1 connector (no bias) + batch norm
    return total + c[-1] * arch.num_classes + arch.num_classes  # classifier with bias


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dataset", list(PAPER_LAYOUTS))
def test_paper_parameter_counts_follow_the_closed_formula(dataset, family):
    arch = paper_architecture(dataset, family)
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == _expected_params(arch)


def test_paper_parameter_counts_spot_values():
    # Written out once by hand for CIFAR-10 (32, 64, 112, 112; n_t = 3):
    # opening 928, units 27 840 + 110 976 + 339 360, connectors 2 176 + 7 392 + 12 768,
    # classifier 1 130.
    model = build_model(paper_architecture("cifar10", "parabolic"))
    assert sum(p.numel() for p in model.parameters()) == 502_570


def test_layout_of_the_paper():
    arch = paper_architecture("stl10", "second_order")
    model = build_model(arch)
    assert isinstance(model, PDENet)
    conv, bn, relu = model.opening
    assert (conv.kernel_size, conv.bias) == ((3, 3), None)
    assert (conv.in_channels, conv.out_channels) == (3, 16)
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert [u.width for u in model.units] == [16, 32, 64, 128]
    assert all(isinstance(u, PDEUnit) and u.depth == 3 and u.step_size == 1.0 for u in model.units)
    for k, connector in enumerate(model.connectors):
        pools = [m for m in connector if isinstance(m, nn.AvgPool2d)]
        assert len(pools) == (0 if k == 3 else 1)
        assert connector[0].kernel_size == (1, 1) and connector[0].bias is None
    assert model.classifier.in_features == 128 and model.classifier.bias is not None
    assert model.pde_units() == list(model.units)


def _unit_input_sizes(model: PDENet, x: torch.Tensor) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    hooks = [
        unit.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
        for unit in model.units
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (x.shape[0], model.arch.num_classes)
    assert torch.isfinite(logits).all()
    return sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_digits_8x8_one_channel(family):
    arch = Architecture(family=family, widths=(8, 8, 16, 16, 16), depths=(1, 1, 1, 1),
                        in_channels=1, num_classes=10)
    sizes = _unit_input_sizes(build_model(arch), torch.randn(3, 1, 8, 8))
    assert sizes == [(8, 8), (4, 4), (2, 2), (1, 1)]  # pooling never goes below 1x1


@pytest.mark.parametrize("family", FAMILIES)
def test_28x28_pools_through_odd_sizes(family):
    arch = Architecture(family=family, widths=(4, 8, 8, 8), depths=(1, 1, 1), in_channels=1)
    sizes = _unit_input_sizes(build_model(arch), torch.randn(2, 1, 28, 28))
    assert sizes == [(28, 28), (14, 14), (7, 7)]
    arch = Architecture(family=family, widths=(4, 8, 8, 8, 8), depths=(1, 1, 1, 1), in_channels=1)
    sizes = _unit_input_sizes(build_model(arch), torch.randn(2, 1, 28, 28))
    assert sizes == [(28, 28), (14, 14), (7, 7), (4, 4)]  # ceil mode: 7 -> 4


@pytest.mark.parametrize("family", FAMILIES)
def test_96x96_paper_layout(family):
    model = build_model(paper_architecture("stl10", family)).eval()
    sizes = _unit_input_sizes(model, torch.randn(1, 3, 96, 96))
    assert sizes == [(96, 96), (48, 48), (24, 24), (12, 12)]


@pytest.mark.parametrize("family", FAMILIES)
def test_opening_stride_two_runs_the_units_at_half_resolution_for_a_quarter_of_the_flops(family):
    from pdenas.cost import count_flops

    plain = Architecture(family=family, widths=(4, 8, 8, 8), depths=(1, 1, 1), in_channels=1)
    strided = Architecture.from_dict({**plain.to_dict(), "opening_stride": 2})
    torch.manual_seed(0)
    model = build_model(strided)
    assert _unit_input_sizes(model, torch.randn(2, 1, 28, 28)) == [(14, 14), (7, 7), (4, 4)]
    assert model.opening[0].stride == (2, 2)
    same = build_model(plain)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in same.parameters())
    same.load_state_dict(model.state_dict())  # the same weights: only the stride differs
    ratio = count_flops(model, (1, 28, 28)) / count_flops(same, (1, 28, 28))
    assert 0.2 < ratio < 0.3


@pytest.mark.parametrize("side", [8, 9, 15, 32, 33, 64])
@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_any_size_and_channel_count(side, channels):
    arch = Architecture(family="hamiltonian", widths=(4, 6, 8, 8), depths=(1, 1, 1),
                        in_channels=channels, num_classes=4)
    sizes = _unit_input_sizes(build_model(arch), torch.randn(2, channels, side, side + 3))
    assert min(min(s) for s in sizes) >= 1
    assert sizes[-1] == (-(-side // 4), -(-(side + 3) // 4))


def test_too_small_input_is_refused_with_a_clear_message():
    model = build_model(paper_architecture("stl10", "parabolic")).eval()
    model(torch.randn(1, 3, 8, 8))  # 4 units fit 8x8 (down to 1x1)
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 3, 7, 8))
    message = str(info.value)
    assert message.startswith("depths: 4 units halve the resolution 3 times")
    assert "at least 8x8, got 7x8" in message and "use at most 3 units" in message
    strided = Architecture.from_dict({**paper_architecture("stl10", "parabolic").to_dict(),
                                      "opening_stride": 2})
    with pytest.raises(ValueError) as info:
        build_model(strided)(torch.randn(1, 3, 15, 15))
    assert str(info.value).startswith(
        "depths: 4 units and the opening stride 2 halve the resolution 4 times and need inputs "
        "of at least 16x16, got 15x15; use at most 3 units")


def test_set_step_size_changes_every_unit():
    torch.manual_seed(0)
    model = build_model(Architecture(family="second_order", widths=(4, 4, 4), depths=(2, 2),
                                     in_channels=1)).eval()
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    model.set_step_size(0.3)
    assert [u.step_size for u in model.pde_units()] == [0.3, 0.3]
    assert not torch.allclose(model(x), before)
    with pytest.raises(ValueError, match="step_size"):
        model.set_step_size(-1)


def test_build_model_wants_an_architecture():
    with pytest.raises(TypeError, match="expected an Architecture, got dict"):
        build_model({"family": "parabolic", "widths": [4, 4], "depths": [1]})


@pytest.mark.parametrize("family", ["hamiltonian", "second_order"])
def test_reversible_network_has_the_plain_gradients(family):
    torch.manual_seed(0)
    arch = Architecture(family=family, widths=(4, 6, 8), depths=(3, 4), in_channels=2,
                        num_classes=3, reversible=True)
    model = build_model(arch).double().train()
    assert all(u.reversible for u in model.pde_units())
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])

    def grads() -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(model(x), y)
        return list(torch.autograd.grad(loss, list(model.parameters())))

    reversible = grads()
    for unit in model.pde_units():
        unit.reversible = False
    plain = grads()
    for (name, _), a, b in zip(model.named_parameters(), reversible, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
