"""The baseline family: a plain residual network with a step size.

Its block is the standard conv-BN-ReLU-conv-BN (PAPER.md: "a plain ResNet unit ... is the natural
baseline"), so the family's ``default_norm`` is "batch": an architecture or a search space that
does not name a norm for this family gets batch norm, whatever the PDE families use. A space may
still ask for "tv" or "none" by name (``family_overrides: {resnet: {norm: tv}}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdenas.families._base import PDEUnit, State
from pdenas.families._layers import conv_spectral_norm, make_activation, make_norm
from pdenas.families._registry import register_family

__all__ = ["ResNetUnit", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``G(Y) = N₂(K₂ σ(N₁(K₁ Y)))`` with two independent 3x3 convolutions without bias.

    The kernels keep PyTorch's default ``nn.Conv2d`` initialisation (the usual ResNet one), not
    the symmetric layer's Meganet rule.
    """

    def __init__(self, channels: int, *, norm: str = "batch", activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, channels)
        self.activation = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.activation(self.norm1(self.conv1(y)))))

    def spectral_norm(self) -> float:
        """Estimate of ``||K₂|| ||K₁||``, a Lipschitz bound of the block's linear part."""
        return conv_spectral_norm(self.conv1.weight) * conv_spectral_norm(self.conv2.weight)

    def jacobian_bound(self, spectral_norm: float | None = None) -> float:
        """``||K₂|| ||K₁||`` (``spectral_norm`` when already estimated) times the largest affine
        scales of both normalisations."""
        norm = self.spectral_norm() if spectral_norm is None else spectral_norm
        gain = float(self.norm1.weight.detach().abs().max() * self.norm2.weight.detach().abs().max())
        return norm * gain


@register_family("resnet")
class ResNetUnit(PDEUnit):
    """Forward Euler with an unconstrained residual block: ``Y_{j+1} = Y_j + h G(θ_j, Y_j)``.

    The block is conv-norm-act-conv-norm, batch norm unless another norm is named
    (``default_norm``). G's Jacobian has no sign, so the bound ``h ≤ 2 / (||K₂|| ||K₁||)`` is a
    heuristic (a Lipschitz bound), not a stability guarantee.
    """

    default_norm = "batch"

    def __init__(self, width: int, depth: int, step_size: float, **options) -> None:
        super().__init__(width, depth, step_size, **options)
        self.blocks = self.per_step(
            lambda: ResidualBlock(width, norm=self.norm_name, activation=self.activation_name)
        )

    def init_state(self, x: torch.Tensor) -> State:
        return (x,)

    def step(self, j: int, state: State) -> State:
        (y,) = state
        return (y + self.step_size * self.blocks[j](y),)

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        return (self.blocks[j],)

    def step_bound(self, norms: Sequence[float]) -> float:
        return 2.0 / norms[0] if norms[0] > 0 else float("inf")
