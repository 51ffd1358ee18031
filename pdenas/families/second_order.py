"""Second-order family: the wave-equation-like network, leapfrog (Meganet's LeapFrogNN)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pdenas.families._base import PDEUnit, State
from pdenas.families._layers import SymmetricLayer
from pdenas.families._registry import register_family

__all__ = ["SecondOrderUnit"]


@register_family("second_order")
class SecondOrderUnit(PDEUnit):
    """Leapfrog on ``∂²_t Y = F(θ(t), Y)``::

        Y_{j+1} = 2 Y_j - Y_{j-1} + h² F(θ_j, Y_j),   Y_{-1} = Y_0

    The state is ``(Y_{j-1}, Y_j)``; every unit restarts with zero initial velocity. Reversible:
    ``Y_{j-1} = 2 Y_j - Y_{j+1} + h² F(θ_j, Y_j)``. Linearised stable for ``h ≤ 2 / sqrt(λ_max)``.
    """

    reversible_scheme = True
    output_holds_state = False

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        self.layers = self.per_step(
            lambda: SymmetricLayer(width, norm=self.norm_name, activation=self.activation_name)
        )

    def init_state(self, x: torch.Tensor) -> State:
        return (x, x)

    def step(self, j: int, state: State) -> State:
        previous, current = state
        h2 = self.step_size**2
        return (current, 2 * current - previous + h2 * self.layers[j](current))

    def inverse_step(self, j: int, state: State) -> State:
        current, following = state
        h2 = self.step_size**2
        return (2 * current - following + h2 * self.layers[j](current), current)

    def output(self, state: State) -> torch.Tensor:
        return state[1]

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return (self.layers[j],)

    def step_bound(self, norms: Sequence[float]) -> float:
        return 2.0 / math.sqrt(norms[0]) if norms[0] > 0 else float("inf")
