"""Stability helpers the trainer calls: weight clipping, time smoothness, the h bound per unit."""

from __future__ import annotations

import torch
from torch import nn

from pdenas.families._base import PDEUnit

__all__ = ["clip_weights_", "consecutive_step_parameters", "stability_report", "time_smoothness"]


def clip_weights_(model: nn.Module, bound: float = 1.0) -> None:
    """Box-clips every parameter of ``model`` to ``[-bound, bound]`` in place (the paper's rule,
    applied after each optimiser step)."""
    params = list(model.parameters())
    if params:
        with torch.no_grad():  # the trainer calls this every step: two grouped kernels
            torch._foreach_clamp_min_(params, -bound)
            torch._foreach_clamp_max_(params, bound)


def consecutive_step_parameters(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """Pairs ``(θ_j, θ_{j+1})`` of matching parameters of consecutive time steps, for every unit.

    The trainer computes them once per run and passes them to ``time_smoothness`` at each step.
    """
    pairs = []
    for unit in model.modules():
        if not isinstance(unit, PDEUnit):
            continue
        for j in range(unit.depth - 1):
            now = [p for m in unit.step_layers(j) for p in m.parameters()]
            nxt = [p for m in unit.step_layers(j + 1) for p in m.parameters()]
            pairs.extend(zip(now, nxt))
    return pairs


def time_smoothness(
    model: nn.Module, pairs: list[tuple[nn.Parameter, nn.Parameter]] | None = None
) -> torch.Tensor:
    """Total variation in time of every unit's per-step weights: ``Σ_j ||θ_{j+1} - θ_j||₁``.

    Args:
        model: The network.
        pairs: ``consecutive_step_parameters(model)``, when the caller already has them.

    Returns:
        A scalar tensor to scale and add to the loss (zero for a model without PDE units).
    """
    if pairs is None:
        pairs = consecutive_step_parameters(model)
    if not pairs:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    total = (pairs[0][1] - pairs[0][0]).abs().sum()
    for a, b in pairs[1:]:
        total = total + (b - a).abs().sum()
    return total


def stability_report(model: nn.Module) -> list[dict[str, float | int | str | bool]]:
    """For each unit: its family, h, the largest ``||K||`` and the linearised bound on h.

    Returns:
        One dict per unit with keys ``unit``, ``family``, ``step_size``, ``spectral_norm``,
        ``max_stable_step`` and ``stable`` (whether h is within the bound).
    """
    rows = []
    for index, unit in enumerate(m for m in model.modules() if isinstance(m, PDEUnit)):
        norms = unit.spectral_norms()  # power iterations: run once, used twice
        bound = unit.max_stable_step(norms)
        rows.append(
            {
                "unit": index,
                "family": getattr(unit, "family_name", type(unit).__name__),
                "step_size": unit.step_size,
                "spectral_norm": max(max(step) for step in norms),
                "max_stable_step": bound,
                "stable": unit.step_size <= bound,
            }
        )
    return rows
