"""Resampling a unit in time: the same dynamics on a finer (or coarser) grid of time steps.

A unit of n steps of size h integrates its ODE over ``[0, T]`` with ``T = n h`` and weights that
are piecewise constant in time, ``θ(t) = θ_j`` for ``t ∈ [j h, (j + 1) h)``. Resampling to m
steps keeps T and that ``θ(t)``: the new step size is ``h' = T / m = h n / m``, and new step i
(which starts at ``t_i = i h'``) takes the weights of the old step whose interval holds ``t_i``,

    θ'_i = θ_{⌊i n / m⌋}.

For m = f n (refinement by an integer factor f) every old step becomes f consecutive new steps
with the same weights and ``h' = h / f``; for m = n / f (coarsening) every f-th step is kept.
Copying rather than interpolating neighbours keeps ``θ(t)`` exactly, so the fine network is a
finer discretisation of the same ODE. It leaves the trainer's default time-smoothness
regulariser (``time_smoothness`` with form "total_variation", ``Σ_j φ(θ_{j+1} - θ_j)``)
unchanged: the repeated steps add ``φ(0) = 0`` and the jumps stay the same. Meganet.m's form
(``form="meganet"``, ``Σ_j φ((θ_{j+1} - θ_j) / h)``) is not: at ``h / f`` every jump counts
up to f times (f² times for jumps below ``sqrt(eps)``) as much.

What the step size means is up to each scheme and needs nothing here: forward Euler
(parabolic, resnet: ``Y + h F``), symplectic Euler (hamiltonian: both half-steps use h) and
leapfrog (second_order: ``h² F``, computed from ``step_size``) all approximate their ODE with the
same weights as h shrinks. For leapfrog the start ``Y_{-1} = Y_0`` means a velocity
``(Y_0 - Y_{-1}) / h = 0`` on every grid, so the initial condition ``Y'(0) = 0`` of
``Y'' = F`` is the same at every resolution; its one-step error (``Y_1 = Y_0 + h² F`` against
the exact ``Y_0 + h² F / 2``) is O(h) overall, so the scheme converges at first order, like the
other three. The option ``start="half_step"`` takes that first step exactly to second order, and
the unit then converges at second order where its weights are constant in time; each jump of
``θ(t)`` between steps still costs O(h).

Anything a unit holds outside its step layers (``step_layers(j)``) is copied unchanged; batch
norms keep their eps (``Architecture.bn_eps``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from pdenas.errors import InputError

if TYPE_CHECKING:
    from pdenas.families._base import PDEUnit

__all__ = ["resample_unit", "source_step"]


def source_step(i: int, depth: int, new_depth: int) -> int:
    """The step of a ``depth``-step unit whose time interval holds the start of new step i:
    ``⌊i · depth / new_depth⌋``."""
    return (i * depth) // new_depth


def resample_unit(unit: PDEUnit, depth: int) -> PDEUnit:
    """A new unit of the same class with ``depth`` steps over the same time ``T = n h``.

    Args:
        unit: The unit to resample; it is not changed.
        depth: The new number of time steps (>= 1).

    Returns:
        A unit on the same device, in the same dtype and mode, with step size
        ``h · unit.depth / depth`` and the weights (and buffers) described in the module
        docstring. The global random state is left as it was.

    Raises:
        ValueError: If depth < 1, or the new unit's step layers do not match the old one's.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(f"depth: must be an integer >= 1, got {depth!r}")
    step_size = unit.step_size * unit.depth / depth
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation draws no global RNG
        new = type(unit)(unit.width, depth, step_size, **unit.unit_options())
    reference = next(itertools.chain(unit.parameters(), unit.buffers()), None)
    if reference is not None:
        dtype = reference.dtype if reference.is_floating_point() else None
        new.to(device=reference.device, dtype=dtype)
    new.train(unit.training)

    in_steps = {
        id(t)
        for j in range(unit.depth)
        for layer in unit.step_layers(j)
        for t in itertools.chain(layer.parameters(), layer.buffers())
    }
    old_state = unit.state_dict(keep_vars=True)
    new_state = new.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in old_state.items():
            if id(tensor) not in in_steps:
                new_state[name].copy_(tensor)
        for i in range(depth):
            j = source_step(i, unit.depth, depth)
            old_layers, new_layers = unit.step_layers(j), new.step_layers(i)
            if len(old_layers) != len(new_layers):
                raise InputError(
                    f"{type(unit).__name__}: step {i} of the resampled unit has "
                    f"{len(new_layers)} layers, step {j} of the original {len(old_layers)}"
                )
            for old, fresh in zip(old_layers, new_layers):
                fresh.load_state_dict(old.state_dict())
    _copy_norm_eps(unit, new)
    return new


def _copy_norm_eps(unit: PDEUnit, new: PDEUnit) -> None:
    """Gives every batch norm of ``new`` the eps of its match in ``unit`` (an eps is not in the
    state dict; ``Architecture.bn_eps`` may have changed it). Steps are matched as above."""
    def norms(module: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    for i in range(new.depth):
        j = source_step(i, unit.depth, new.depth)
        for old, fresh in zip(unit.step_layers(j), new.step_layers(i)):
            for a, b in zip(norms(old), norms(fresh)):
                b.eps = a.eps
