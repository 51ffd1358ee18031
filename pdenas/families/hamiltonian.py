"""Hamiltonian family: a first-order hyperbolic system, symplectic Euler (DoubleHamiltonianNN)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pdenas.families._base import PDEUnit, State
from pdenas.families._layers import SymmetricLayer
from pdenas.families._registry import register_family

__all__ = ["HamiltonianUnit"]


@register_family("hamiltonian")
class HamiltonianUnit(PDEUnit):
    """Symplectic Euler on the two channel halves ``[Y_0, Z_0] = x``::

        Y_{j+1} = Y_j + h F(θ¹_j, Z_j)
        Z_{j+1} = Z_j - h F(θ²_j, Y_{j+1})

    for ``∂_t Y = F(θ¹, Z)``, ``∂_t Z = -F(θ², Y)`` (Meganet.m's ``DoubleHamiltonianNN``): Y
    moves with the old Z, then Z with the new Y. It is not Störmer-Verlet (which splits one of
    the two updates into half-steps around the other): started from ``(Y_0, Z_0)`` at the same
    time it is first order, symplectic, and every step preserves volume
    (``det ∂(Y_{j+1}, Z_{j+1}) / ∂(Y_j, Z_j) = 1``). The output is ``[Y_n, Z_n]``. Exactly
    reversible:
    ``Z_j = Z_{j+1} + h F(θ²_j, Y_{j+1})``, ``Y_j = Y_{j+1} - h F(θ¹_j, Z_j)``.
    Each K is (c/2)x(c/2), so the width must be even. Linearised, ``Y'' = -A¹A² Y``: stable for
    ``h ≤ 2 / sqrt(λ(A¹) λ(A²))``.
    """

    reversible_scheme = True
    width_multiple = 2

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        half = width // 2

        def layer() -> SymmetricLayer:
            return SymmetricLayer(half, norm=self.norm_name, activation=self.activation_name)

        # Two independent draws (Meganet's DoubleHamiltonianNN.initTheta calls initTheta of each
        # layer), each repeated in time under init "repeat".
        self.layers_y = self.per_step(layer)
        self.layers_z = self.per_step(layer)

    def init_state(self, x: torch.Tensor) -> State:
        y, z = x.chunk(2, dim=1)
        return (y, z)

    def step(self, j: int, state: State) -> State:
        y, z = state
        y = y + self.step_size * self.layers_y[j](z)
        z = z - self.step_size * self.layers_z[j](y)
        return (y, z)

    def inverse_step(self, j: int, state: State) -> State:
        y, z = state
        z = z + self.step_size * self.layers_z[j](y)
        y = y - self.step_size * self.layers_y[j](z)
        return (y, z)

    def output(self, state: State) -> torch.Tensor:
        return torch.cat(state, dim=1)

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return (self.layers_y[j], self.layers_z[j])

    def step_bound(self, norms: Sequence[float]) -> float:
        product = norms[0] * norms[1]
        return 2.0 / math.sqrt(product) if product > 0 else float("inf")
