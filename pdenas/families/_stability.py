"""Stability helpers: weight clipping, smoothness in time, and the gain of each unit.

The trainer calls ``clip_weights_`` after every optimiser step and adds ``time_smoothness`` to
the loss; both run as a few grouped (``torch._foreach_*``) kernels over all parameters, not one
small kernel per tensor. ``stability_report`` says, for each unit, how much it can amplify a
perturbation of its input at real inputs: its ``gain``, the largest singular value of
``∂(unit output) / ∂(unit input)`` (``unit_gain``, Lanczos on ``JᵀJ`` with Jacobian-vector
and vector-Jacobian products by autograd). Two older quantities stay as named diagnostics:
the spectral radius of one linearised step (``step_spectral_radii``), which cannot tell a
spectrum on the unit circle from non-normal growth (every symplectic-Euler (hamiltonian) and
leapfrog step preserves volume, so its radius is at least 1) and says nothing of a unit of
several steps with different weights; and the ``||K||`` bound on h, which ignores the normalisation's Jacobian and bounds
nothing under TV or batch normalisation (PAPER.md), so the report gives it for norm "none" only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pdenas.errors import InputError
from pdenas.families._base import PDEUnit, State
from pdenas.families._krylov import ritz_values

__all__ = [
    "RADIUS_TOLERANCE",
    "TIME_SMOOTHNESS_EPS",
    "TIME_SMOOTHNESS_FORMS",
    "StepPairs",
    "clip_weights_",
    "consecutive_step_parameters",
    "stability_report",
    "step_spectral_radii",
    "unit_gain",
    "time_smoothness",
]

TIME_SMOOTHNESS_FORMS = ("total_variation", "meganet")
"""The forms of ``time_smoothness``: the h-consistent total variation in time (the default) and
Meganet.m's form, which scales every jump by 1 / h."""

TIME_SMOOTHNESS_EPS = 1e-3
"""eps of the smoothed absolute value in ``time_smoothness``: Meganet.m's ``l1Reg`` default
(``cnnDriver`` does not change it)."""

RADIUS_TOLERANCE = 0.05
"""The error of the one-step spectral radius estimate where it is largest: the symplectic-Euler
and leapfrog steps are non-normal with their eigenvalues on the unit circle when stable, and there
the Arnoldi estimate overshoots by up to about 4 % (tests/test_families.py); elsewhere it is
within 1 %. (The study's ``stability.radius`` default, 1.05, is 1 plus this slack.)"""


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
    form: str = "total_variation",
) -> torch.Tensor:
    """Smoothness in time of every unit's per-step weights: the total variation of ``θ(t)``.

    A unit's weights are piecewise constant in time, ``θ(t) = θ_j`` on ``[j h, (j + 1) h)``. Two
    forms (``TIME_SMOOTHNESS_FORMS``), both summed over units, steps j = 0 .. n-2 and entries,
    with ``φ(d) = sqrt(d² + eps) - sqrt(eps)`` (a smoothed ``|d|``, quadratic below
    ``sqrt(eps)``)::

        "total_variation" (the default):  R = Σ φ(θ_{j+1} - θ_j)
        "meganet" (the authors' form):     R = Σ φ((θ_{j+1} - θ_j) / h)

    "total_variation" is the total variation in time ``∫ |dθ(t)|`` of the weights as a function
    of time, smoothed jump by jump: it depends on the jumps of ``θ(t)``, not on the grid, so
    refining a network by repeating its steps (``pdenas.deepen``, every level of multilevel
    training) leaves it unchanged (the repeated steps add ``φ(0) = 0``), and networks of one
    search at different h are penalised for the same thing. At h = 1 (the paper's) the two
    forms are equal.

    "meganet" is Meganet.m's regulariser: ``cnnDriver`` regularises each PDE block with
    ``l1Reg(opTimeDer(nTheta, nt, h), ...)``, where ``opTimeDer`` maps the block's weights, one
    column per time step, to ``(θ_{j+1} - θ_j) / h`` and ``l1Reg`` sums ``sqrt(d² + eps)``
    (``eps`` = 1e-3, its default). It counts a jump as ``|Δθ| / h``: halving h (with the steps
    repeated) doubles a large jump's term and quadruples a small one's, so each h optimises a
    different objective. Kept for reproducing the authors' runs.

    Every parameter of a step counts (the kernels and the normalisation's scale and shift). The
    constant ``sqrt(eps)`` per entry makes equal weights in time give exactly 0 (the gradient is
    unchanged); the term is computed as ``d² / (sqrt(d² + eps) + sqrt(eps))``, which loses no
    precision for small d. The trainer multiplies R by ``TrainConfig.time_smoothness`` (Meganet's
    ``alpha(3)``) and picks the form with ``TrainConfig.time_smoothness_form`` (in a study:
"meganet" with ``train.meganet: true``, else "total_variation").

    Args:
        model: The network.
        pairs: ``consecutive_step_parameters(model)``, when the caller already has them.
        eps: The smoothing of the absolute value.
        form: "total_variation" or "meganet".

    Returns:
        A scalar tensor to scale and add to the loss (zero for a model without PDE units).

    Raises:
        InputError: An unknown form.
    """
    if form not in TIME_SMOOTHNESS_FORMS:
        raise InputError(f"form: unknown {form!r}; allowed: "
                         f"{', '.join(TIME_SMOOTHNESS_FORMS)}")
    if pairs is None:
        pairs = consecutive_step_parameters(model)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    scales: list[float] = []
    for group in pairs:
        before.extend(group.before)
        after.extend(group.after)
        scale = 1.0 / group.unit.step_size if form == "meganet" else 1.0
        scales.extend([scale] * len(group.before))
    if not before:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    # A handful of grouped kernels over all tensors (the trainer calls this at every step).
    d = torch._foreach_sub(after, before)
    if form == "meganet":
        d = torch._foreach_mul(d, scales)
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
    """The spectral radius of each time step's Jacobian along the unit's trajectory from ``x``:
    a diagnostic, not a stability measure (``unit_gain`` is; see the module docstring).

    Step j maps the scheme's state ``s_j`` (Y; (Y, Z) for hamiltonian; (Y_{j-1}, Y_j) for
    second_order) to ``s_{j+1}``. Its linearisation ``J_j = ∂ step_j / ∂ s`` at the state the unit
    actually reaches from ``x`` contains everything the unit does: the normalisation's Jacobian
    (TV's ``(I - ŷŷᵀ) / sqrt(|y|² + eps)`` can amplify by up to ``1 / sqrt(eps)``), the
    activation's slope, the affine scales as they are (negative ones included) and h. A
    perturbation grows over that step by up to ``ρ(J_j)`` per application in the long run;
    ``ρ(J_j) ≤ 1`` is linear stability (forward Euler: ``J = I + h ∂F``; symplectic Euler and leapfrog:
    eigenvalues on the unit circle).

    ``ρ(J_j)`` is the largest Ritz magnitude of an Arnoldi run (``ritz_values``) whose products
    ``J_j v`` are forward-mode Jacobian-vector products (``torch.func.jvp``) over the whole
    batch: no Jacobian is formed. The run stops once the largest Ritz pair's relative residual
    is at most ``tol`` (after ``min_iterations``), or after ``iterations``. Measured against
    dense eigenvalues on small units of every family and norm, it is less than 1 % low (0.2 % seen);
    near the unit circle (non-normal leapfrog and symplectic-Euler steps) it can be up to about 4 % high. The
    normalisation runs as in training (batch norm on the
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


def unit_gain(unit: PDEUnit, x: torch.Tensor, *, iterations: int = 30, tol: float = 1e-3,
              seed: int = 0) -> float:
    """The unit's gain at ``x``: the largest singular value of ``J = ∂ unit(x) / ∂ x``.

    J is the Jacobian of the whole unit (all its time steps, the batch flattened into one
    vector): ``||J v|| <= gain ||v||`` for every input perturbation v, and a perturbation along
    the leading right singular vector grows by exactly the gain (to first order). This is what
    decides whether a unit blows small differences up, whatever its scheme: it sees non-normal
    growth that eigenvalues miss, and each step's own weights. The normalisation runs as in
    training (batch norm on the batch's statistics, which couples the examples; its running
    statistics are left alone); the time loop runs with plain autograd (``integrate``) also for
    reversible units.

    Lanczos (``ritz_values``, symmetric) on ``JᵀJ``; no Jacobian is formed. The unit runs
    forward once; each product is then two backward passes over the graphs kept from it:
    ``Jᵀ u`` by autograd, and ``J v`` as the derivative of the linear map ``u -> Jᵀ u`` along v
    (the double-backward form of a Jacobian-vector product). This equals ``torch.func``'s
    jvp/vjp products (the same estimates to 1e-4 measured) at about a third of their time on
    small units, and without the forward-mode machinery's load at a process's first product
    (about 10 s on 2 cores). The largest Ritz value approaches ``gain²`` from below; the run
    stops when it changed by at most ``tol`` (relative) over two iterations, or after
    ``iterations`` products. Measured against dense Jacobians on small units of every family
    and norm: within 5 % (tests/test_families.py).

    Args:
        unit: The unit.
        x: A batch of the unit's inputs (N, width, H, W).
        iterations: The most products with ``JᵀJ``.
        tol: Relative change of the largest Ritz value that ends the run.
        seed: Seed of the start vector.

    Returns:
        The estimate of ``σ_max(J)`` (NaN when the unit's outputs or derivatives are not finite).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with _training_normalisation(unit), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = unit.integrate(x)
        u = torch.zeros_like(y, requires_grad=True)  # Jᵀ u is linear in u: its graph gives J v
        transposed = torch.autograd.grad(y, x, u, create_graph=True)[0]

        def matvec(v: torch.Tensor) -> torch.Tensor:
            jv = torch.autograd.grad(transposed, u, v, retain_graph=True)[0]
            return torch.autograd.grad(y, x, jv, retain_graph=True)[0]

        start = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        values, _ = ritz_values(matvec, start, max_iterations=iterations, tol=tol,
                                symmetric=True, min_iterations=3)
    top = float(values.max())
    return math.sqrt(max(top, 0.0)) if math.isfinite(top) else math.nan


def stability_report(
    model: nn.Module,
    images: torch.Tensor | None = None,
    *,
    batch: int = 4,
    size: int = 8,
    iterations: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
    diagnostics: bool = True,
) -> list[dict[str, float | int | str | None]]:
    """For each unit: its gain at real inputs, and two diagnostics.

    The estimates are taken at real inputs: with ``images``, the model runs on the first
    ``batch`` of them and each unit is linearised at its own inputs for that batch (captured
    with forward hooks). Without images, each unit gets standard normal inputs of shape
    (batch, width, size, size). The gain costs about ``iterations`` Jacobian-vector plus
    vector-Jacobian products of the whole unit, the radius about ``iterations`` products of one
    step per time step, all at ``batch`` images. The model's modes, weights and buffers are
    left as they were.

    Args:
        model: The network, or a unit.
        images: Model inputs (N, C, H, W) on the model's device, or None.
        batch: How many images (or random inputs) the estimates use.
        size: The side of the random inputs when there are no images.
        iterations: The most products per estimate (per time step for the radius).
        tol: Relative tolerance that ends an estimate early.
        seed: Seed of the random inputs and start vectors.
        diagnostics: Also the radius and the ``||K||`` figures; False gives the gain alone
            (about half the cost: what a trial records when the study's stability check is off).

    Returns:
        One dict per unit with ``unit``, ``family``, ``norm``, ``depth``, ``step_size``;
        ``gain``: the largest singular value of ``∂ output / ∂ input`` (``unit_gain``), how much
        the unit can amplify a perturbation of its input, the stability measure;
        ``spectral_radius``: a diagnostic, the largest spectral radius of one linearised time
        step (``step_spectral_radii``; at least 1 for every
        hamiltonian and leapfrog step, and blind
        to non-normal growth over several steps); ``spectral_norm``: the largest ``||K||``; and
        ``norm_bound_step``: the linearised ``||K||`` bound on h (``PDEUnit.max_stable_step``)
        for norm "none", None under "tv" and "batch", where the normalisation's Jacobian (up to
        ``1 / sqrt(eps)`` for TV) makes it no bound. Without ``diagnostics`` the last three
        are left out.
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
        row: dict[str, float | int | str | None] = {
            "unit": index,
            "family": getattr(unit, "family_name", type(unit).__name__),
            "norm": unit.norm_name,
            "depth": unit.depth,
            "step_size": unit.step_size,
            "gain": unit_gain(unit, x, iterations=iterations, tol=tol, seed=seed + index),
        }
        if diagnostics:
            norms = unit.spectral_norms()  # the iterations run once, used twice
            radii = step_spectral_radii(unit, x, iterations=iterations, tol=tol, seed=seed + index)
            bound = unit.max_stable_step(norms) if unit.norm_name == "none" else None
            row.update(spectral_radius=max(radii), spectral_norm=max(max(step) for step in norms),
                       norm_bound_step=bound)
        rows.append(row)
    return rows
