"""Parabolic family: the heat-equation-like network, forward Euler (Meganet's ResNN)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pdenas.families._base import PDEUnit, State
from pdenas.families._layers import SymmetricLayer
from pdenas.families._registry import register_family

__all__ = ["ParabolicUnit"]


@register_family("parabolic")
class ParabolicUnit(PDEUnit):
    """Forward Euler on ``∂_t Y = F(θ(t), Y)``:  ``Y_{j+1} = Y_j + h F(θ_j, Y_j)``.

    With a non-decreasing σ the linearised F is ``-KᵀDK`` (negative semi-definite), so the scheme
    is stable for ``h ≤ 2 / λ_max(KᵀDK)``. Not reversible.
    """

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        self.layers = self.per_step(
            lambda: SymmetricLayer(width, norm=self.norm_name, activation=self.activation_name)
        )

    def init_state(self, x) -> State:
        return (x,)

    def step(self, j: int, state: State) -> State:
        (y,) = state
        return (y + self.step_size * self.layers[j](y),)

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return (self.layers[j],)

    def step_bound(self, norms: Sequence[float]) -> float:
        return 2.0 / norms[0] if norms[0] > 0 else float("inf")
