"""Stability helpers: weight clipping, smoothness in time, and the stability of each unit.

The trainer calls ``clip_weights_`` after every optimiser step and adds ``time_smoothness`` to
the loss; both run as a few grouped (``torch._foreach_*``) kernels over all parameters, not one
small kernel per tensor. ``stability_report`` says, for each unit, how a perturbation of its
state grows over one time step at real inputs (the spectral radius of the linearised step,
estimated by Arnoldi with Jacobian-vector products), next to the older ``||K||`` bound on h.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pdenas.families._base import PDEUnit, State
from pdenas.families._krylov import ritz_values

__all__ = [
    "RADIUS_TOLERANCE",
    "TIME_SMOOTHNESS_EPS",
    "StepPairs",
    "clip_weights_",
    "consecutive_step_parameters",
    "stability_report",
    "step_spectral_radii",
    "time_smoothness",
]

TIME_SMOOTHNESS_EPS = 1e-3
"""eps of the smoothed absolute value in ``time_smoothness``: Meganet.m's ``l1Reg`` default
(``cnnDriver`` does not change it)."""

RADIUS_TOLERANCE = 0.05
"""A unit is reported stable when every step's spectral radius is at most ``1 + RADIUS_TOLERANCE``.
The slack covers the estimate's error where it is largest: the Verlet and leapfrog steps are
non-normal with their eigenvalues on the unit circle when stable, and there the Arnoldi estimate
overshoots by up to about 4 % (tests/test_families.py); elsewhere it is within 1 %."""


def clip_weights_(model: nn.Module, bound: float = 1.0) -> None:
    """Box-clips every parameter of ``model`` to ``[-bound, bound]`` in place (the paper's rule,
    applied after each optimiser step; Meganet.m's ``opt.P = @(x) min(max(x, -1), 1)``)."""
    params = list(model.parameters())
    if params:
        with torch.no_grad():  # the trainer calls this every step: two grouped kernels
            torch._foreach_clamp_min_(params, -bound)
            torch._foreach_clamp_max_(params, bound)


@dataclass(frozen=True)
class StepPairs:
    """The parameters of consecutive time steps of one unit, matched entry by entry.

    Attributes:
        unit: The unit (its current ``step_size`` is read at every use).
        before: ``θ_j`` tensors for j = 0 .. n-2 (every parameter of step j's layers).
        after: The matching ``θ_{j+1}`` tensors.
    """

    unit: PDEUnit
    before: tuple[nn.Parameter, ...]
    after: tuple[nn.Parameter, ...]


def consecutive_step_parameters(model: nn.Module) -> list[StepPairs]:
    """For every unit with more than one step: its pairs ``(θ_j, θ_{j+1})`` of parameters.

    The trainer computes them once per run and passes them to ``time_smoothness`` at each step.
    """
    groups = []
    for unit in model.modules():
        if not isinstance(unit, PDEUnit) or unit.depth < 2:
            continue
        before: list[nn.Parameter] = []
        after: list[nn.Parameter] = []
        for j in range(unit.depth - 1):
            now = [p for m in unit.step_layers(j) for p in m.parameters()]
            nxt = [p for m in unit.step_layers(j + 1) for p in m.parameters()]
            before.extend(now)
            after.extend(nxt)
        groups.append(StepPairs(unit, tuple(before), tuple(after)))
    return groups


def time_smoothness(
    model: nn.Module,
    pairs: Sequence[StepPairs] | None = None,
    *,
    eps: float = TIME_SMOOTHNESS_EPS,
) -> torch.Tensor:
    """Smoothness in time of every unit's per-step weights, as Meganet.m's regulariser.

    Meganet's ``cnnDriver`` regularises each PDE block with ``l1Reg(opTimeDer(nTheta, nt, h),
    ...)``: ``opTimeDer`` maps the block's weights, one column per time step, to the scaled
    differences ``(θ_{j+1} - θ_j) / h`` (``conv2(theta, [1 -1], 'valid') / h``), and ``l1Reg``
    sums their smoothed absolute values ``sqrt(d² + eps)`` (``eps`` = 1e-3, its default). Every
    parameter of a step counts (the kernels and the normalisation's scale and shift). Here::

        R(θ) = Σ_units Σ_{j=0}^{n-2} Σ_entries ( sqrt(((θ_{j+1} - θ_j) / h)² + eps) - sqrt(eps) )

    The constant ``sqrt(eps)`` per entry is subtracted so that equal weights in time give exactly
    0 (the gradient is Meganet's); it is computed as ``d² / (sqrt(d² + eps) + sqrt(eps))``,
    which loses no precision for small d. The trainer multiplies R by
    ``TrainConfig.time_smoothness`` (Meganet's ``alpha(3)``). Large differences count like
    ``|θ_{j+1} - θ_j| / h``, small ones quadratically, ``d² / (2 sqrt(eps))``.

    Args:
        model: The network.
        pairs: ``consecutive_step_parameters(model)``, when the caller already has them.
        eps: The smoothing of the absolute value.

    Returns:
        A scalar tensor to scale and add to the loss (zero for a model without PDE units).
    """
    if pairs is None:
        pairs = consecutive_step_parameters(model)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    scales: list[float] = []
    for group in pairs:
        before.extend(group.before)
        after.extend(group.after)
        scales.extend([1.0 / group.unit.step_size] * len(group.before))
    if not before:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    # A handful of grouped kernels over all tensors (the trainer calls this at every step).
    d = torch._foreach_mul(torch._foreach_sub(after, before), scales)
    squares = torch._foreach_mul(d, d)
    denominators = torch._foreach_add(torch._foreach_sqrt(torch._foreach_add(squares, eps)),
                                      math.sqrt(eps))
    terms = torch._foreach_div(squares, denominators)
    return torch.stack(torch._foreach_norm(terms, 1)).sum()  # terms >= 0: the 1-norm is the sum


# --- the stability of each unit ------------------------------------------------------------------


@contextmanager
def _training_normalisation(model: nn.Module) -> Iterator[None]:
    """Training mode with batch norm on the batch's statistics, its running statistics untouched.

    Every module's mode and every batch norm's ``track_running_stats`` are restored at the end.
    """
    modes = {m: m.training for m in model.modules()}
    tracking = {
        m: m.track_running_stats
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    try:
        model.train()
        for m in tracking:
            m.track_running_stats = False  # uses batch statistics, updates nothing
        yield
    finally:
        for m, value in tracking.items():
            m.track_running_stats = value
        for m, training in modes.items():
            m.train(training)


def _flatten(state: State) -> torch.Tensor:
    return torch.cat([s.reshape(-1) for s in state])


def _unflatten(flat: torch.Tensor, like: State) -> State:
    parts = flat.split([s.numel() for s in like])
    return tuple(p.view_as(s) for p, s in zip(parts, like))


def step_spectral_radii(
    unit: PDEUnit,
    x: torch.Tensor,
    *,
    iterations: int = 60,
    tol: float = 1e-3,
    min_iterations: int = 20,
    seed: int = 0,
) -> list[float]:
    """The spectral radius of each time step's Jacobian along the unit's trajectory from ``x``.

    Step j maps the scheme's state ``s_j`` (Y; (Y, Z) for hamiltonian; (Y_{j-1}, Y_j) for
    second_order) to ``s_{j+1}``. Its linearisation ``J_j = ∂ step_j / ∂ s`` at the state the unit
    actually reaches from ``x`` contains everything the unit does: the normalisation's Jacobian
    (TV's ``(I - ŷŷᵀ) / sqrt(|y|² + eps)`` can amplify by up to ``1 / sqrt(eps)``), the
    activation's slope, the affine scales as they are (negative ones included) and h. A
    perturbation grows over that step by up to ``ρ(J_j)`` per application in the long run;
    ``ρ(J_j) ≤ 1`` is linear stability (forward Euler: ``J = I + h ∂F``; Verlet and leapfrog:
    eigenvalues on the unit circle).

    ``ρ(J_j)`` is the largest Ritz magnitude of an Arnoldi run (``ritz_values``) whose products
    ``J_j v`` are forward-mode Jacobian-vector products (``torch.func.jvp``) over the whole
    batch: no Jacobian is formed. The run stops once the largest Ritz pair's relative residual
    is at most ``tol`` (after ``min_iterations``), or after ``iterations``. Measured against
    dense eigenvalues on small units of every family and norm, it is less than 1 % low (0.2 % seen);
    near the unit circle (non-normal leapfrog and Verlet steps) it can be up to about 4 % high. The normalisation runs as in training (batch norm on the
    batch's statistics, which couples the examples; its running statistics are left alone).

    Args:
        unit: The unit.
        x: A batch of the unit's inputs (N, width, H, W).
        iterations: The most Jacobian-vector products per step.
        tol: Relative residual of the leading Ritz pair that ends a step's run early.
        min_iterations: The fewest products per step.
        seed: Seed of the start vectors.

    Returns:
        One estimate per time step.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    radii = []
    with _training_normalisation(unit), torch.no_grad(), warnings.catch_warnings():
        # torch's first forward-mode product in a process loads torch's own JVP decompositions
        # through torch.jit.script, which warns that torch.jit.script is deprecated: a warning
        # about torch's code, printed at every search. Only that message is silenced.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=FutureWarning)
        state = unit.init_state(x)
        for j in range(unit.depth):
            like = state

            def step(flat: torch.Tensor, j: int = j, like: State = like) -> torch.Tensor:
                return _flatten(unit.step(j, _unflatten(flat, like)))

            point = _flatten(state)

            def matvec(v: torch.Tensor, step=step, point=point) -> torch.Tensor:
                return torch.func.jvp(step, (point,), (v,))[1]

            start = torch.randn(point.shape, generator=gen, dtype=point.dtype).to(point.device)
            values, _ = ritz_values(
                matvec, start, max_iterations=iterations, tol=tol, min_iterations=min_iterations
            )
            radii.append(float(values.abs().max()))
            state = unit.step(j, state)
    return radii


def _unit_inputs(model: nn.Module, units: list[PDEUnit], images: torch.Tensor) -> list[torch.Tensor]:
    """Each unit's input when ``model`` runs on ``images`` (forward pre-hooks)."""
    seen: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(index, args[0].detach())

        return hook

    handles = [u.register_forward_pre_hook(capture(i)) for i, u in enumerate(units)]
    try:
        with _training_normalisation(model), torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(units)) if i not in seen]
    if missing:
        raise ValueError(f"stability_report: units {missing} did not run on the images")
    return [seen[i] for i in range(len(units))]


def stability_report(
    model: nn.Module,
    images: torch.Tensor | None = None,
    *,
    batch: int = 4,
    size: int = 8,
    iterations: int = 60,
    tol: float = 1e-3,
    tolerance: float = RADIUS_TOLERANCE,
    seed: int = 0,
) -> list[dict[str, float | int | str | bool]]:
    """For each unit: the spectral radius of its linearised steps and the older ``||K||`` bound.

    The estimate (``step_spectral_radii``) is taken at real inputs: with ``images``, the model
    runs on the first ``batch`` of them and each unit is linearised at its own inputs for that
    batch (captured with forward hooks). Without images, each unit gets standard normal inputs
    of shape (batch, width, size, size). The cost is about ``iterations`` Jacobian-vector
    products of one step per time step (forward mode, about 2-3 forward passes each) at
    ``batch`` images. The model's modes, weights and buffers are left as they were.

    Args:
        model: The network, or a unit.
        images: Model inputs (N, C, H, W) on the model's device, or None.
        batch: How many images (or random inputs) the estimate uses.
        size: The side of the random inputs when there are no images.
        iterations: The most Jacobian-vector products per time step.
        tol: Relative residual that ends a step's Arnoldi run early.
        tolerance: Slack for ``stable``: every step's radius at most ``1 + tolerance``.
        seed: Seed of the random inputs and start vectors.

    Returns:
        One dict per unit with ``unit``, ``family``, ``norm``, ``depth``, ``step_size``;
        ``spectral_radius`` (the largest over the unit's steps), ``amplification`` (their
        product: the growth of a perturbation over the unit when each step's leading mode
        dominates), ``stable`` (``spectral_radius <= 1 + tolerance``); and the linearised
        ``||K||`` bound of the paper's argument, which ignores the normalisation's Jacobian:
        ``spectral_norm`` (the largest ``||K||``), ``max_stable_step`` and ``bound_stable``
        (``step_size <= max_stable_step``).
    """
    units = [m for m in model.modules() if isinstance(m, PDEUnit)]
    if images is not None:
        inputs = _unit_inputs(model, units, images[:batch])
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        inputs = []
        for unit in units:
            p = next(unit.parameters())
            shape = (batch, unit.width, size, size)
            inputs.append(torch.randn(shape, generator=gen, dtype=p.dtype).to(p.device))
    rows = []
    for index, (unit, x) in enumerate(zip(units, inputs)):
        norms = unit.spectral_norms()  # the iterations run once, used twice
        bound = unit.max_stable_step(norms)
        radii = step_spectral_radii(unit, x, iterations=iterations, tol=tol, seed=seed + index)
        radius = max(radii)
        rows.append(
            {
                "unit": index,
                "family": getattr(unit, "family_name", type(unit).__name__),
                "norm": unit.norm_name,
                "depth": unit.depth,
                "step_size": unit.step_size,
                "spectral_radius": radius,
                "amplification": math.prod(radii),
                "stable": bool(radius <= 1 + tolerance),
                "spectral_norm": max(max(step) for step in norms),
                "max_stable_step": bound,
                "bound_stable": unit.step_size <= bound,
            }
        )
    return rows
