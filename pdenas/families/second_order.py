"""Second-order family: the wave-equation-like network, leapfrog (Meganet's LeapFrogNN)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pdenas.families._base import STARTS, PDEUnit, State
from pdenas.families._layers import SymmetricLayer
from pdenas.families._registry import register_family

__all__ = ["STARTS", "SecondOrderUnit"]


@register_family("second_order")
class SecondOrderUnit(PDEUnit):
    """Leapfrog on ``∂²_t Y = F(θ(t), Y)`` with zero initial velocity ``∂_t Y(0) = 0``::

        Y_{j+1} = 2 Y_j - Y_{j-1} + h² F(θ_j, Y_j),   Y_{-1} = Y_0

    The state is ``(Y_{j-1}, Y_j)``; every unit restarts at rest. The first step depends on
    ``start``:

    - "rest" (the default; Meganet.m's ``LeapFrogNN``): ``Y_{-1} = Y_0``, so
      ``Y_1 = Y_0 + h² F(θ_0, Y_0)``, twice the exact ``Y_0 + h² F / 2 + O(h⁴)``. This one-step
      error of order h² makes the scheme first order overall: refining by 2 halves the error.
    - "half_step": ``Y_1 = Y_0 + (h² / 2) F(θ_0, Y_0)`` (Taylor with ``Y'(0) = 0``), i.e. the
      same formula with ``h² / 2`` at step 0; leapfrog is then second order overall where the
      weights do not change in time (refining by 2 quarters the error), which is what depth
      continuation (``pdenas.deepen``, multilevel training) leans on. Where consecutive steps
      have different weights, ``θ(t)`` jumps and ``Y''`` with it, and each jump costs O(h)
      whatever the start: measured on 3 steps with independent weights, refining by 2 halves
      the error under either start (tests/test_families.py).

    Reversible either way: ``Y_{j-1} = 2 Y_j - Y_{j+1} + c_j h² F(θ_j, Y_j)`` with ``c_j`` the
    step's coefficient (1/2 at step 0 under "half_step", else 1). Linearised stable for
    ``h ≤ 2 / sqrt(λ_max)``.
    """

    reversible_scheme = True
    output_holds_state = False
    starts = STARTS

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        self.layers = self.per_step(
            lambda: SymmetricLayer(width, norm=self.norm_name, activation=self.activation_name)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, start={self.start!r}"

    def _force_scale(self, j: int) -> float:
        """``c_j h²``: the coefficient of F at step j."""
        h2 = self.step_size**2
        return 0.5 * h2 if j == 0 and self.start == "half_step" else h2

    def init_state(self, x: torch.Tensor) -> State:
        return (x, x)

    def step(self, j: int, state: State) -> State:
        previous, current = state
        return (current, 2 * current - previous + self._force_scale(j) * self.layers[j](current))

    def inverse_step(self, j: int, state: State) -> State:
        current, following = state
        return (2 * current - following + self._force_scale(j) * self.layers[j](current), current)

    def output(self, state: State) -> torch.Tensor:
        return state[1]

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return (self.layers[j],)

    def step_bound(self, norms: Sequence[float]) -> float:
        return 2.0 / math.sqrt(norms[0]) if norms[0] > 0 else float("inf")
