"""The PDE families: conformance of every registered family, the update equations of PAPER.md,
the reversible backward pass, the stability helpers and the registry."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdenas.families import (
    ACTIVATIONS,
    NORMS,
    PDEUnit,
    SymmetricLayer,
    build_unit,
    clip_weights_,
    list_families,
    register_family,
    stability_report,
    time_smoothness,
)
from pdenas.families._layers import TVNorm, conv_spectral_norm
from pdenas.families._stability import (
    RADIUS_TOLERANCE,
    TIME_SMOOTHNESS_EPS,
    TIME_SMOOTHNESS_FORMS,
    _flatten,
    _training_normalisation,
    _unflatten,
    step_spectral_radii,
    unit_gain,
)

FAMILIES = list_families()
REVERSIBLE = ("hamiltonian", "second_order")
EPS_TV = 1e-4  # Meganet.m's tvNormLayer default (PAPER.md: follow the authors' code)


# Tiny tensors: one thread is fastest, and steady on a busy 2-core machine (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(family: str, width: int = 4, depth: int = 2, h: float = 0.5, seed: int = 0,
          **options) -> PDEUnit:
    torch.manual_seed(seed)
    return build_unit(family, width, depth, h, **options)


def _randomise_affine(unit: nn.Module, seed: int = 1) -> None:
    """Gives every normalisation a non-trivial scale and shift, so the tests see them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unit.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5
                        if name.endswith("weight")
                        else torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def _input(width: int, size: int = 6, batch: int = 2, dtype=torch.float64, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, width, size, size, generator=gen, dtype=dtype)


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """The bytes autograd saves for backward while ``fn`` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --- conformance: every registered family ------------------------------------------------------

def test_the_paper_families_and_the_baseline_are_registered():
    assert {"parabolic", "hamiltonian", "second_order", "resnet"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_and_finite_forward_and_backward(family):
    unit = _unit(family, width=6, depth=3).train()
    x = torch.randn(3, 6, 5, 7, requires_grad=True)
    out = unit(x)
    assert isinstance(unit, PDEUnit)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in unit.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert (unit.width, unit.depth, unit.step_size) == (6, 3, 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_changes_the_output(family):
    x = _input(4, dtype=torch.float32)
    shallow = _unit(family, depth=2)(x)
    deep = _unit(family, depth=3)(x)  # same seed: same first two steps, one more step
    assert not torch.allclose(shallow, deep, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_step_size_is_used_and_settable(family):
    unit = _unit(family, h=0.5)
    x = _input(4, dtype=torch.float32)
    before = unit(x)
    unit.step_size = 0.25
    assert unit.step_size == 0.25
    assert not torch.allclose(unit(x), before, atol=1e-4)
    unit.step_size = 0.5
    torch.testing.assert_close(unit(x), before)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step_size"):
            unit.step_size = bad


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_whatever_the_step_size(family):
    a = _unit(family, h=1.0, seed=7).state_dict()
    b = _unit(family, h=0.01, seed=7).state_dict()
    c = _unit(family, h=1.0, seed=8).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_float32_and_float64(family, dtype):
    unit = _unit(family).to(dtype)
    x = _input(4, dtype=dtype).requires_grad_(True)
    out = unit(x)
    assert out.dtype == dtype
    out.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert all(p.dtype == dtype for p in unit.parameters())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_norm_builds(family, norm):
    unit = _unit(family, norm=norm).train()
    out = unit(_input(4, dtype=torch.float32))
    assert torch.isfinite(out).all()
    has_batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in unit.modules())
    assert has_batch_norm == (norm == "batch")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_each_activation_builds(family, activation):
    unit = _unit(family, activation=activation)
    out = unit(_input(4, dtype=torch.float32))
    assert torch.isfinite(out).all()
    assert unit.activation_name == activation


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_options_are_refused(family):
    with pytest.raises(ValueError, match="norm"):
        _unit(family, norm="layer")
    with pytest.raises(ValueError, match="activation: unknown 'swish'; allowed: .*relu"):
        _unit(family, activation="swish")
    with pytest.raises(ValueError, match="depth"):
        _unit(family, depth=0)
    with pytest.raises(ValueError, match="step_size"):
        _unit(family, h=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_reversible_is_refused_where_the_scheme_is_not_reversible(family):
    if family in REVERSIBLE:
        assert _unit(family, reversible=True).reversible
        with pytest.raises(ValueError, match="reversible: batch norm"):
            _unit(family, reversible=True, norm="batch")
    else:
        allowed = "reversible: .*allowed: with hamiltonian, second_order"
        with pytest.raises(ValueError, match=allowed):
            _unit(family, reversible=True)


def test_hamiltonian_needs_an_even_width():
    with pytest.raises(ValueError, match="width: got 5; allowed: a multiple of 2 for the hamiltonian family"):
        _unit("hamiltonian", width=5)


# --- the update equations of PAPER.md, written out independently --------------------------------

def _tv(a: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Total-variation normalisation: per pixel and example, over channels; then the affine."""
    denom = torch.sqrt((a * a).sum(dim=1, keepdim=True) + EPS_TV)
    return (a / denom) * scale[None, :, None, None] + shift[None, :, None, None]


def _symmetric(layer: SymmetricLayer, y: torch.Tensor) -> torch.Tensor:
    """F(θ, Y) = -Kᵀ relu(TV(K Y)), K and Kᵀ with the same tensor, no bias."""
    w = layer.weight
    a = F.conv2d(y, w, padding=1)
    a = torch.clamp(_tv(a, layer.norm.weight, layer.norm.bias), min=0)
    return -F.conv_transpose2d(a, w, padding=1)


def test_symmetric_layer_matches_the_formula():
    torch.manual_seed(0)
    layer = SymmetricLayer(3).double().requires_grad_(False)
    _randomise_affine(layer)
    y = _input(3, size=5)
    torch.testing.assert_close(layer(y), _symmetric(layer, y), rtol=1e-12, atol=1e-12)
    # Kᵀ is the adjoint of K: <K y, v> = <y, Kᵀ v>.
    v = _input(3, size=5, seed=9)
    w = layer.weight
    lhs = (F.conv2d(y, w, padding=1) * v).sum()
    rhs = (y * F.conv_transpose2d(v, w, padding=1)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs())


def test_symmetric_layer_without_normalisation_matches_the_formula():
    torch.manual_seed(0)
    layer = SymmetricLayer(3, norm="none", activation="tanh").double()
    _randomise_affine(layer)
    y = _input(3, size=5)
    w, s, b = layer.weight, layer.norm.weight, layer.norm.bias
    a = torch.tanh(F.conv2d(y, w, padding=1) * s[None, :, None, None] + b[None, :, None, None])
    torch.testing.assert_close(layer(y), -F.conv_transpose2d(a, w, padding=1), rtol=1e-12,
                               atol=1e-12)


H = 0.7
DEPTH = 3


def _family_unit(family: str, width: int, **options) -> PDEUnit:
    unit = _unit(family, width=width, depth=DEPTH, h=H, **options).double()
    _randomise_affine(unit)
    return unit


def test_parabolic_update():
    unit = _family_unit("parabolic", 3)
    y = _input(3, size=5)
    expected = y
    for j in range(DEPTH):
        expected = expected + H * _symmetric(unit.layers[j], expected)
    torch.testing.assert_close(unit(y), expected, rtol=1e-12, atol=1e-12)


def test_hamiltonian_update_starts_from_the_two_channel_halves():
    unit = _family_unit("hamiltonian", 4)
    x = _input(4, size=5)
    y, z = x[:, :2], x[:, 2:]  # Z_0 is the second half of the input, not zeros
    for j in range(DEPTH):
        y = y + H * _symmetric(unit.layers_y[j], z)
        z = z - H * _symmetric(unit.layers_z[j], y)
    torch.testing.assert_close(unit(x), torch.cat([y, z], dim=1), rtol=1e-12, atol=1e-12)
    assert unit.layers_y[0].weight.shape == (2, 2, 3, 3)


def test_second_order_update_is_leapfrog_with_zero_initial_velocity():
    unit = _family_unit("second_order", 3)
    y0 = _input(3, size=5)
    previous, current = y0, y0  # Y_{-1} = Y_0
    for j in range(DEPTH):
        previous, current = current, 2 * current - previous + H**2 * _symmetric(
            unit.layers[j], current
        )
    torch.testing.assert_close(unit(y0), current, rtol=1e-12, atol=1e-12)


def test_second_order_half_step_start():
    """start "half_step": Y_1 = Y_0 + (h² / 2) F(θ_0, Y_0), then plain leapfrog; reversible."""
    unit = _family_unit("second_order", 3, start="half_step")
    y0 = _input(3, size=5)
    previous, current = y0, y0 + H**2 / 2 * _symmetric(unit.layers[0], y0)
    for j in range(1, DEPTH):
        previous, current = current, 2 * current - previous + H**2 * _symmetric(
            unit.layers[j], current
        )
    torch.testing.assert_close(unit(y0), current, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        state = unit.init_state(y0)
        for j in range(DEPTH):
            state = unit.step(j, state)
        first = unit.reverse(unit.output(state), state)
    assert _rel(first[0], y0) < 1e-12 and _rel(first[1], y0) < 1e-12
    assert unit.refine(2).start == "half_step" and "start='half_step'" in repr(unit)
    assert _unit("second_order").start == "rest"
    with pytest.raises(ValueError, match=r"^start: unknown 'midpoint'; allowed: rest, half_step$"):
        _unit("second_order", start="midpoint")


def _refinement_errors(start: str, init: str, depth: int, h: float) -> list[float]:
    """Relative distance of ``refine(f)``'s output to ``refine(128)``'s for f = 1, 2, 4, 8."""
    unit = _unit("second_order", width=4, depth=depth, h=h, start=start, init=init).double()
    x = _input(4, size=6)
    with torch.no_grad():
        reference = unit.refine(128)(x)
        return [float((unit.refine(f)(x) - reference).norm() / reference.norm())
                for f in (1, 2, 4, 8)]


def test_the_half_step_start_makes_leapfrog_second_order():
    """With weights constant in time, refining by 2 quarters the error from the half-step start
    (second order) and only halves it from rest (first order)."""
    rest = _refinement_errors("rest", "repeat", depth=1, h=1.0)
    half = _refinement_errors("half_step", "repeat", depth=1, h=1.0)
    rest_ratios = [a / b for a, b in zip(rest, rest[1:])]
    half_ratios = [a / b for a, b in zip(half, half[1:])]
    assert all(1.7 < r < 2.6 for r in rest_ratios), rest_ratios
    assert all(r > 3.4 for r in half_ratios[1:]) and half_ratios[0] > 2.5, half_ratios
    assert half[-1] < rest[-1] / 20
    # Weights that jump between steps: each jump costs O(h) under either start.
    jumps = _refinement_errors("half_step", "independent", depth=3, h=0.5)
    assert all(1.7 < a / b < 2.6 for a, b in zip(jumps, jumps[1:])), jumps


def test_resnet_update_is_conv_bn_relu_conv_bn():
    unit = _family_unit("resnet", 3).train()  # batch norm without being asked for it
    y = _input(3, size=5)

    def bn(a: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        mean = a.mean(dim=(0, 2, 3), keepdim=True)
        var = a.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (a - mean) / torch.sqrt(var + m.eps) * m.weight[None, :, None, None] + m.bias[
            None, :, None, None
        ]

    expected = y
    for block in unit.blocks:
        g = torch.clamp(bn(F.conv2d(expected, block.conv1.weight, padding=1), block.norm1), min=0)
        expected = expected + H * bn(F.conv2d(g, block.conv2.weight, padding=1), block.norm2)
    torch.testing.assert_close(unit(y), expected, rtol=1e-10, atol=1e-10)
    assert block.conv1.bias is None and block.conv2.bias is None


# --- the reversible schemes ----------------------------------------------------------------------

@pytest.mark.parametrize("family", REVERSIBLE)
def test_forward_then_reverse_recovers_the_input(family):
    unit = _unit(family, width=4, depth=8, h=1.0).double()
    x = _input(4, size=6)
    with torch.no_grad():
        state = unit.init_state(x)
        for j in range(unit.depth):
            state = unit.step(j, state)
        first = unit.reverse(unit.output(state), state)
    assert _rel(unit.output(first), x) < 1e-12
    for rebuilt, original in zip(first, unit.init_state(x)):
        assert _rel(rebuilt, original) < 1e-12


def test_hamiltonian_reverses_from_its_output_alone():
    unit = _unit("hamiltonian", width=4, depth=5, h=1.0).double()
    x = _input(4)
    with torch.no_grad():
        rebuilt = unit.output(unit.reverse(unit(x)))
    assert _rel(rebuilt, x) < 1e-12


def test_second_order_reverse_refuses_the_output_alone():
    unit = _unit("second_order", width=4, depth=3, h=1.0).double()
    with pytest.raises(ValueError, match="needs last_state"):
        unit.reverse(unit(_input(4)))


@pytest.mark.parametrize("family", REVERSIBLE)
def test_reversible_gradients_equal_plain_autograd(family):
    unit = _unit(family, width=4, depth=8, h=1.0).double().train()
    _randomise_affine(unit)
    x = _input(4, size=6)
    g = _input(4, size=6, seed=5)

    def grads(reversible: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        unit.reversible = reversible
        xx = x.clone().requires_grad_(True)
        out = unit(xx)
        return out, torch.autograd.grad((out * g).sum(), [xx, *unit.parameters()])

    out_plain, plain = grads(False)
    out_rev, rev = grads(True)
    assert out_rev.grad_fn is not None and "Reversible" in type(out_rev.grad_fn).__name__
    torch.testing.assert_close(out_rev, out_plain, rtol=0, atol=1e-14)
    names = ["input"] + [n for n, _ in unit.named_parameters()]
    assert len(rev) == len(names) == len(plain)
    for name, a, b in zip(names, rev, plain):
        assert b.norm() > 0, name
        assert _rel(a, b) <= 1e-10, name


@pytest.mark.parametrize("family", REVERSIBLE)
def test_saved_bytes_do_not_grow_with_depth_in_reversible_mode(family):
    x = torch.randn(2, 8, 8, 8, requires_grad=True)

    def saved(depth: int, reversible: bool) -> int:
        unit = _unit(family, width=8, depth=depth, h=1.0, reversible=reversible).train()
        return _saved_bytes(lambda: unit(x))

    plain_1, plain_16 = saved(1, False), saved(16, False)
    rev_1, rev_16 = saved(1, True), saved(16, True)
    assert rev_1 == rev_16 > 0
    assert plain_16 >= 12 * plain_1
    assert rev_16 <= 2 * x.numel() * x.element_size()  # the last state, nothing per step


@pytest.mark.parametrize("family", REVERSIBLE)
def test_reversible_unit_outside_training_integrates_plainly(family):
    unit = _unit(family, width=4, depth=3, reversible=True)
    x = _input(4, dtype=torch.float32)
    unit.eval()
    out = unit(x)
    assert out.grad_fn is not None and "Reversible" not in type(out.grad_fn).__name__
    unit.train()
    with torch.no_grad():
        torch.testing.assert_close(unit(x), out)


@pytest.mark.parametrize("family", REVERSIBLE)
def test_reversible_backward_follows_the_forward_autocast(family):
    """Under bf16 autocast the rebuilt states must use the forward's arithmetic."""
    unit = _unit(family, width=8, depth=6, h=1.0).train()
    x = torch.randn(2, 8, 8, 8)

    def grads(reversible: bool) -> torch.Tensor:
        unit.reversible = reversible
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unit(xx)
        got = torch.autograd.grad(out.float().square().sum(), [xx, *unit.parameters()])
        return torch.cat([t.float().flatten() for t in got])

    assert _rel(grads(True), grads(False)) < 5e-3


# --- stability -----------------------------------------------------------------------------------

def _dense_conv_norm(weight: torch.Tensor, size: int) -> float:
    """||K||₂ of the padding-1 convolution on size x size images, from its dense matrix."""
    w = weight.detach().double()
    n = w.shape[1] * size * size
    basis = torch.eye(n, dtype=torch.float64).reshape(n, w.shape[1], size, size)
    matrix = F.conv2d(basis, w, padding=1).reshape(n, -1).T
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def test_power_iteration_matches_the_dense_operator_norm():
    torch.manual_seed(0)
    w = torch.randn(3, 3, 3, 3, dtype=torch.float64)
    exact = _dense_conv_norm(w, size=8)
    assert conv_spectral_norm(w, size=8, iterations=2000) == pytest.approx(exact, rel=1e-4)


def test_layer_spectral_norm_is_a_close_lower_bound():
    torch.manual_seed(0)
    layer = SymmetricLayer(1)
    exact = _dense_conv_norm(layer.weight, size=16)  # the size the layer's estimate uses
    estimate = layer.spectral_norm()
    assert estimate <= exact * (1 + 1e-6)
    assert estimate == pytest.approx(exact, rel=1e-4)  # 30 power iterations were up to 5 % low


def _layer_lambda(layer: SymmetricLayer) -> float:
    """The linearised bound on the spectrum of KᵀDSK: ||K||² max|s|."""
    scale = float(layer.norm.weight.detach().abs().max())
    return _dense_conv_norm(layer.weight, 16) ** 2 * scale


@pytest.mark.parametrize("family", FAMILIES)
def test_max_stable_step_follows_the_scheme(family):
    # One channel (two for hamiltonian's halves) keeps the dense matrices at 256 x 256.
    unit = _unit(family, width=2 if family == "hamiltonian" else 1, depth=2).double()
    unit.requires_grad_(False)
    _randomise_affine(unit)
    if family == "parabolic":
        expected = min(2 / _layer_lambda(layer) for layer in unit.layers)
    elif family == "second_order":
        expected = min(2 / math.sqrt(_layer_lambda(layer)) for layer in unit.layers)
    elif family == "hamiltonian":
        expected = min(
            2 / math.sqrt(_layer_lambda(a) * _layer_lambda(b))
            for a, b in zip(unit.layers_y, unit.layers_z)
        )
    elif family == "resnet":
        expected = min(
            2 / (_dense_conv_norm(b.conv1.weight, 16) * _dense_conv_norm(b.conv2.weight, 16)
                 * float(b.norm1.weight.abs().max()) * float(b.norm2.weight.abs().max()))
            for b in unit.blocks
        )
    else:
        pytest.fail(f"no formula in this test for the family {family!r}")
    bound = unit.max_stable_step()
    assert bound > 0
    # The power iteration approaches ||K|| from below, so the estimate errs slightly high.
    assert expected <= bound * (1 + 1e-6) <= expected * 1.07


def test_stability_report_gives_the_norm_bound_for_norm_none_only():
    """The ||K|| bound ignores the normalisation's Jacobian: under TV or batch norm it bounds
    nothing (PAPER.md), so the report leaves it out there."""
    unit = _unit("parabolic", width=4, depth=2, h=1.0, norm="none")
    [row] = stability_report(nn.Sequential(unit))
    assert row["family"] == "parabolic" and row["unit"] == 0
    assert row["norm_bound_step"] == pytest.approx(unit.max_stable_step())
    assert row["spectral_norm"] == pytest.approx(max(max(s) for s in unit.spectral_norms()))
    for norm in ("tv", "batch"):
        [row] = stability_report(_unit("parabolic", width=4, depth=2, norm=norm))
        assert row["norm_bound_step"] is None and row["spectral_norm"] > 0
        assert "amplification" not in row and "stable" not in row and row["gain"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_weights_bounds_every_parameter(family):
    unit = _unit(family)
    with torch.no_grad():
        for p in unit.parameters():
            p.mul_(10).add_(0.5)
    before = {n: p.detach().clone() for n, p in unit.named_parameters()}
    clip_weights_(unit, 1.0)
    for name, p in unit.named_parameters():
        assert p.abs().max() <= 1.0, name
        inside = before[name].abs() <= 1.0
        assert torch.equal(p[inside], before[name][inside])
    assert any((before[n].abs() > 1).any() for n in before)
    clip_weights_(unit, 0.25)
    assert max(float(p.detach().abs().max()) for p in unit.parameters()) == 0.25


def _smoothness_formula(unit: PDEUnit, form: str, eps: float = TIME_SMOOTHNESS_EPS) -> float:
    """Σ_j Σ_entries φ(θ_{j+1} - θ_j) ("total_variation") or φ((θ_{j+1} - θ_j) / h)
    ("meganet"), φ(d) = sqrt(d² + eps) - sqrt(eps), entry by entry in float64."""
    scale = 1.0 / unit.step_size if form == "meganet" else 1.0
    total = 0.0
    for j in range(unit.depth - 1):
        now = [p for m in unit.step_layers(j) for p in m.parameters()]
        nxt = [p for m in unit.step_layers(j + 1) for p in m.parameters()]
        for a, b in zip(now, nxt):
            for x, y in zip(a.detach().double().flatten().tolist(),
                            b.detach().double().flatten().tolist()):
                total += math.sqrt(((y - x) * scale) ** 2 + eps) - math.sqrt(eps)
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_init_repeat_starts_every_step_from_the_same_weights(family):
    unit = _unit(family, depth=3)  # init "repeat" is the default
    assert unit.init == "repeat"
    for j in range(1, unit.depth):
        for first, later in zip(unit.step_layers(0), unit.step_layers(j)):
            for a, b in zip(first.parameters(), later.parameters()):
                assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert time_smoothness(unit).item() == 0.0
    independent = _unit(family, depth=3, init="independent")
    assert time_smoothness(independent).item() > 1.0
    with pytest.raises(ValueError, match="init: unknown 'tied'; allowed: repeat, independent"):
        _unit(family, init="tied")


def test_hamiltonian_draws_its_two_layers_apart_and_repeats_each_in_time():
    unit = _unit("hamiltonian", width=8, depth=3)
    assert not torch.equal(unit.layers_y[0].weight, unit.layers_z[0].weight)
    assert torch.equal(unit.layers_y[0].weight, unit.layers_y[2].weight)
    assert torch.equal(unit.layers_z[0].weight, unit.layers_z[2].weight)


def test_symmetric_kernels_are_drawn_as_meganet_does():
    torch.manual_seed(0)
    c = 64
    w = SymmetricLayer(c).weight.detach()
    sd = math.sqrt(2 / (3 * c))  # convKernel.initTheta: sqrt(2 / (sK(3) * sK(2)))
    assert float(w.abs().max()) <= 2 * sd
    # the standard deviation of N(0, sd²) truncated at ±2 sd is 0.8796 sd
    assert float(w.std()) == pytest.approx(0.8796 * sd, rel=0.02)
    assert abs(float(w.mean())) < 0.02 * sd
    layer = SymmetricLayer(3)
    norm = layer.norm.weight.detach(), layer.norm.bias.detach()
    assert (float(norm[0].min()), float(norm[1].abs().max())) == (1.0, 0.0)


@pytest.mark.parametrize("form", TIME_SMOOTHNESS_FORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_time_smoothness_on_hand_set_weights_matches_the_formula(family, form):
    unit = _unit(family, width=2, depth=3, h=0.25).double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in unit.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
        # an entry with a large jump, where the term is about |Δθ| (or |Δθ| / h), and one with none
        first = next(unit.step_layers(1)[0].parameters())
        first.view(-1)[0] = next(unit.step_layers(0)[0].parameters()).view(-1)[0] + 0.75
    value = time_smoothness(unit, form=form)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_smoothness_formula(unit, form), rel=1e-10)
    unit.step_size = 0.125
    halved = time_smoothness(unit, form=form).item()
    assert halved == pytest.approx(_smoothness_formula(unit, form), rel=1e-10)
    if form == "total_variation":  # h does not enter
        assert halved == value.item()
    else:  # 1/h inside the square root: halving h more than doubles it
        assert halved > 2 * value.item()


def test_the_two_forms_agree_at_h_1_and_the_default_is_total_variation():
    unit = _unit("parabolic", width=2, depth=3, h=1.0, init="independent").double()
    assert time_smoothness(unit).item() == time_smoothness(unit, form="total_variation").item()
    assert time_smoothness(unit, form="meganet").item() == pytest.approx(
        time_smoothness(unit).item(), rel=1e-12)
    from pdenas.train import TrainConfig

    assert TrainConfig().time_smoothness_form == "total_variation"
    with pytest.raises(ValueError, match=r"^form: unknown 'l1'; allowed: "
                                         r"total_variation, meganet"):
        time_smoothness(unit, form="l1")


@pytest.mark.parametrize("form", TIME_SMOOTHNESS_FORMS)
def test_time_smoothness_of_one_jump(form):
    unit = _unit("parabolic", width=2, depth=3, h=0.5)
    assert time_smoothness(unit, form=form).item() == 0.0
    with torch.no_grad():
        first = unit.layers[2].weight
        first.view(-1)[0] += 0.25
    value = time_smoothness(unit, form=form)
    eps = TIME_SMOOTHNESS_EPS
    # one entry jumps by 0.25 between steps 1 and 2; Meganet's form sees 0.25 / h = 0.5
    d, scale = (0.25, 1.0) if form == "total_variation" else (0.5, 1 / 0.5)
    assert value.item() == pytest.approx(math.sqrt(d**2 + eps) - math.sqrt(eps), rel=1e-5)
    value.backward()
    # d/dθ of the term: scale d / sqrt(d² + eps), with the sign of the jump
    grad = scale * d / math.sqrt(d**2 + eps)
    assert first.grad.view(-1)[0].item() == pytest.approx(grad, rel=1e-5)
    assert unit.layers[1].weight.grad.view(-1)[0].item() == pytest.approx(-grad, rel=1e-5)
    assert time_smoothness(nn.Linear(2, 2), form=form).item() == 0.0
    assert time_smoothness(_unit("parabolic", depth=1), form=form).item() == 0.0


# --- the ResNet baseline's block ----------------------------------------------------------------

def test_resnet_block_is_conv_bn_relu_conv_bn_by_default():
    unit = _unit("resnet", width=4, depth=2)
    assert unit.norm_name == "batch"
    for block in unit.blocks:
        layers = [type(m) for m in block.children()]
        assert layers == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
        assert block.conv1.bias is None and block.conv2.bias is None
        assert block.conv1.kernel_size == block.conv2.kernel_size == (3, 3)
    tv = _unit("resnet", width=4, depth=2, norm="tv")  # asked for by name
    assert isinstance(tv.blocks[0].norm1, TVNorm) and isinstance(tv.blocks[0].norm2, TVNorm)
    assert _unit("parabolic").norm_name == "tv"


# --- the stability estimate ----------------------------------------------------------------------

def _exact_step_radii(unit: PDEUnit, x: torch.Tensor) -> list[float]:
    """ρ of each step's dense Jacobian (torch.autograd.functional.jacobian) on the trajectory."""
    radii = []
    with _training_normalisation(unit):
        state = unit.init_state(x)
        for j in range(unit.depth):
            like = state

            def step(flat: torch.Tensor, j: int = j, like=like) -> torch.Tensor:
                return _flatten(unit.step(j, _unflatten(flat, like)))

            jac = torch.autograd.functional.jacobian(step, _flatten(state))
            radii.append(float(torch.linalg.eigvals(jac).abs().max()))
            with torch.no_grad():
                state = unit.step(j, state)
    return radii


def _signed_unit(family: str, norm: str, *, width: int, depth: int, h: float,
                 seed: int) -> PDEUnit:
    """A float64 unit with independent steps and normalisation scales and shifts of either sign
    (as clipping allows)."""
    unit = _unit(family, width=width, depth=depth, h=h, seed=seed, norm=norm,
                 init="independent").double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unit.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return unit


@pytest.mark.parametrize("h", [0.1, 0.5])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_spectral_radius_estimate_matches_dense_eigenvalues(family, norm, h):
    worst_low, worst_high = 0.0, 0.0
    for seed in range(3):
        unit = _signed_unit(family, norm, width=2, depth=2, h=h, seed=seed)
        x = _input(2, size=6, seed=seed) * (0.1 if seed % 2 else 1.0)
        estimate = step_spectral_radii(unit, x)
        exact = _exact_step_radii(unit, x)
        for e, t in zip(estimate, exact):
            worst_low = max(worst_low, (t - e) / t)
            worst_high = max(worst_high, (e - t) / t)
    # never more than 1 % low; high only near the unit circle, within the stability slack
    assert worst_low <= 1e-2
    assert worst_high <= RADIUS_TOLERANCE


def test_tv_units_can_be_unstable_where_the_norm_bound_says_stable():
    # PAPER.md: a width-2 TV parabolic unit at inputs of scale 1e-3 amplifies far beyond ||K||².
    torch.manual_seed(0)
    unit = build_unit("parabolic", 2, 1, 0.05).double()
    x = _input(2, size=6) * 1e-3
    [radius] = step_spectral_radii(unit, x)
    [exact] = _exact_step_radii(unit, x)
    assert radius == pytest.approx(exact, rel=1e-3)
    assert unit.step_size <= unit.max_stable_step() and radius > 1 + RADIUS_TOLERANCE


def _dense_gain(unit: PDEUnit, x: torch.Tensor) -> float:
    """σ_max of the unit's dense Jacobian ∂ out / ∂ in (batch flattened), in training mode."""
    with _training_normalisation(unit):
        jac = torch.autograd.functional.jacobian(lambda v: unit.integrate(v).reshape(-1), x)
    return float(torch.linalg.svdvals(jac.reshape(-1, x.numel()))[0])


@pytest.mark.parametrize("h", [0.3, 1.0])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_gain_matches_the_dense_jacobians_largest_singular_value(family, norm, h):
    """``gain`` (Lanczos on JᵀJ with autograd products) is within 5 % of the dense Jacobian's
    largest singular value, on units of 3 steps with different weights and scales of either
    sign, at inputs of scale 1 and 1e-3 (where TV amplifies most)."""
    for seed in range(2):
        unit = _signed_unit(family, norm, width=4, depth=3, h=h, seed=seed)
        x = _input(4, size=5, seed=seed) * (1e-3 if seed % 2 else 1.0)
        estimate, exact = unit_gain(unit, x, seed=seed), _dense_gain(unit, x)
        assert estimate == pytest.approx(exact, rel=0.05), (seed, estimate, exact)
        assert estimate <= exact * (1 + 1e-6)  # Lanczos approaches it from below


def test_gain_sees_growth_that_the_one_step_radius_misses():
    """A Verlet unit's steps preserve volume, so each step's radius is at least 1 and says
    "stable" near 1; the unit as a whole can still amplify several-fold (the issue's case:
    width-8 TV hamiltonian units of 3 steps at h = 0.3)."""
    worst = 0.0
    for seed in range(4):
        unit = _unit("hamiltonian", width=8, depth=3, h=0.3, seed=seed,
                     init="independent").double()
        x = _input(8, size=4, seed=seed)
        radius = max(step_spectral_radii(unit, x))
        assert radius >= 1 - 1e-2  # volume-preserving steps
        worst = max(worst, unit_gain(unit, x) / radius)
    assert worst > 1.5


def test_stability_report_takes_each_unit_at_its_own_inputs():
    from pdenas import Architecture, build_model

    torch.manual_seed(0)
    arch = Architecture(family="second_order", widths=(4, 6, 6), depths=(2, 3), step_size=0.5,
                        in_channels=1)
    model = build_model(arch).double().eval()
    images = _input(1, size=8, batch=6)
    captured = []
    hooks = [u.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
             for u in model.units]
    with _training_normalisation(model), torch.no_grad():
        model(images[:3])
    for hook in hooks:
        hook.remove()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = stability_report(model, images, batch=3)
    assert [r["unit"] for r in rows] == [0, 1] and [r["depth"] for r in rows] == [2, 3]
    for row, unit, x in zip(rows, model.units, captured):
        radii = step_spectral_radii(unit, x, iterations=30, seed=row["unit"])
        assert row["spectral_radius"] == pytest.approx(max(radii), rel=1e-9)
        assert row["gain"] == pytest.approx(unit_gain(unit, x, seed=row["unit"]), rel=1e-9)
        assert row["gain"] == pytest.approx(_dense_gain(unit, x), rel=0.05)
        assert row["norm"] == "tv" and row["family"] == "second_order"
        assert row["norm_bound_step"] is None
    assert not model.training  # modes, weights and batch-norm statistics are left alone
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # without images: random inputs, same keys
    assert set(stability_report(model)[0]) == set(rows[0])


# --- the registry --------------------------------------------------------------------------------

def test_duplicate_family_name_is_refused():
    class Again(PDEUnit):
        pass

    with pytest.raises(ValueError, match="'parabolic' is already registered"):
        register_family("parabolic")(Again)
    assert list_families() == FAMILIES


def test_unknown_family_lists_the_allowed_names():
    with pytest.raises(ValueError) as info:
        build_unit("heat", 4, 2, 0.5)
    message = str(info.value)
    assert message.startswith("family: unknown 'heat'")
    for name in FAMILIES:
        assert name in message


def test_the_stability_estimate_prints_no_warning_about_torch_itself():
    """The first forward-mode product in a process makes torch script its own JVP
    decompositions, which warns that ``torch.jit.script`` is deprecated; the estimate silences
    that one message (a fresh process, so the decompositions are not loaded yet)."""
    import subprocess
    import sys

    code = ("import torch; from pdenas import build_unit; "
            "from pdenas.families._stability import step_spectral_radii; "
            "unit = build_unit('parabolic', 2, 1, 0.5); "
            "print(step_spectral_radii(unit, torch.randn(2, 2, 6, 6)))")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in done.stderr


def test_tv_norm_computes_in_fp32_under_bf16_autocast() -> None:
    """A bf16 input (a convolution's output under autocast) is normalised in fp32: the result
    is the formula on the widened input, in fp32, and gradients reach the bf16 input."""
    torch.manual_seed(0)
    norm = TVNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    y = torch.randn(3, 6, 5, 5).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _tv(y.detach().float(), norm.weight, norm.bias),
                               rtol=1e-5, atol=1e-5)  # bf16 arithmetic would be ~1e-2 off
    out.sum().backward()
    assert y.grad is not None and y.grad.dtype == torch.bfloat16 and y.grad.abs().sum() > 0
    double = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    assert norm.double()(double).dtype == torch.float64  # wider inputs are left as they are
