"""Tests for pdenas.cost: FLOPs against analytic counts, memory, and that nothing is changed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdenas.architecture import paper_architecture
from pdenas.cost import (
    Cost,
    count_flops,
    count_parameters,
    measure_cost,
    measure_latency,
    training_memory,
)
from pdenas.families import build_unit
from pdenas.network import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class SymmetricLayer(nn.Module):
    """The PDE block's weight-tied pair: conv2d then conv_transpose2d with the same weight."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a = torch.relu(F.conv2d(y, self.weight, padding=1))
        return y - F.conv_transpose2d(a, self.weight, padding=1)


def small_net(channels: int = 4, classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        SymmetricLayer(channels),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


def test_flops_count_both_weight_tied_convolutions() -> None:
    channels, height, width = 5, 6, 7
    layers = nn.Sequential(SymmetricLayer(channels), SymmetricLayer(channels))
    expected = 2 * (2 * 2 * channels * channels * 9 * height * width)
    assert count_flops(layers, (channels, height, width)) == expected


def test_flops_are_per_image_and_include_the_classifier() -> None:
    net = small_net(channels=4, classes=3)
    conv = 2 * 1 * 4 * 9 * 8 * 8
    symmetric = 2 * 2 * 4 * 4 * 9 * 8 * 8
    linear = 2 * 4 * 3
    assert count_flops(net, (1, 8, 8)) == conv + symmetric + linear


def test_parameter_count_is_sum_of_numel_with_shared_weights_once() -> None:
    net = small_net()
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    shared = nn.Linear(3, 3)
    tied = nn.Sequential(shared, shared)
    assert count_parameters(tied) == 12


def test_latency_is_positive_and_finite() -> None:
    net = small_net()
    latency = measure_latency(net, (1, 8, 8), batch_size=4, repeats=3, warmup=1)
    assert latency > 0 and math.isfinite(latency)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(net, (1, 8, 8), repeats=0)


def test_cpu_memory_counts_saved_activations_and_grows_with_batch() -> None:
    net = small_net(channels=4)
    small = training_memory(net, (1, 8, 8), batch_size=2)
    large = training_memory(net, (1, 8, 8), batch_size=8)
    assert 0 < small < large
    # Activations scale with the batch; the parameters are not counted.
    assert large == pytest.approx(4 * small, rel=0.05)


class FlattenLinear(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_memory_excludes_parameters() -> None:
    # Linear saves its input (2 x 1000 floats) and its weight, which must not count.
    assert training_memory(FlattenLinear(1000), (1000, 1, 1), batch_size=2) == 2 * 1000 * 4


@pytest.mark.parametrize("training", [True, False])
def test_measure_cost_leaves_model_unchanged(training: bool) -> None:
    torch.manual_seed(0)
    net = small_net()
    net.train(training)
    net[4].eval()  # a mixed-mode module must keep its own mode
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_before = torch.random.get_rng_state()

    cost = measure_cost(net, (1, 8, 8), batch_size=4, repeats=2, warmup=1)

    assert isinstance(cost, Cost)
    after = net.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert net.training == training
    assert net[4].training is False
    assert torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight))
    assert net[1].weight.grad is None
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    d = cost.to_dict()
    assert set(d) == {"params", "flops", "latency_ms", "latency_batch_ms", "memory_bytes"}
    assert d["params"] == count_parameters(net)
    assert d["flops"] > 0 and d["memory_bytes"] > 0


def test_float64_model_gets_float64_input() -> None:
    net = small_net().double()
    assert count_flops(net, (1, 4, 4)) > 0
    assert training_memory(net, (1, 4, 4), batch_size=2) > 0


def test_bad_input_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(small_net(), (8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        training_memory(small_net(), (1, 8, 8), batch_size=0)


@pytest.mark.parametrize(("family", "layer_channels"), [("parabolic", 8), ("hamiltonian", 4)])
def test_flops_of_real_pde_units_match_the_analytic_count(family: str, layer_channels: int) -> None:
    width, depth, side = 8, 3, 6
    unit = build_unit(family, width, depth, 0.5)
    # Per time step: parabolic one symmetric layer at width c; Hamiltonian two at width c / 2.
    layers = depth * (width // layer_channels)
    per_layer = 2 * 2 * layer_channels * layer_channels * 9 * side * side
    assert count_flops(unit, (width, side, side)) == layers * per_layer


def test_reversible_units_save_memory_independent_of_depth() -> None:
    def memory(depth: int, reversible: bool) -> int:
        unit = build_unit("second_order", 8, depth, 0.5, reversible=reversible)
        return training_memory(unit, (8, 6, 6), batch_size=4)

    assert memory(8, reversible=False) > 3 * memory(2, reversible=False)
    assert memory(8, reversible=True) == memory(2, reversible=True) < memory(2, reversible=False)


def test_flops_of_the_papers_cifar10_network_match_the_analytic_count() -> None:
    arch = paper_architecture("cifar10", "parabolic")
    side, expected = 32, 2 * arch.in_channels * arch.widths[0] * 9 * 32 * 32  # opening conv
    for k, (width, depth) in enumerate(zip(arch.widths, arch.depths)):
        expected += depth * 2 * 2 * width * width * 9 * side * side  # symmetric layers
        expected += 2 * width * arch.widths[k + 1] * side * side  # 1x1 connector
        side //= 2
    expected += 2 * arch.widths[-1] * arch.num_classes  # classifier
    assert count_flops(build_model(arch), (3, 32, 32)) == expected == 324_438_208
