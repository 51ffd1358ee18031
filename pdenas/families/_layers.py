"""The symmetric layer of the paper and the named normalisations and activations it uses.

``F(θ, Y) = -Kᵀ σ(N(K Y; θ))``: K is a 3x3 convolution without bias, Kᵀ the transposed
convolution with the same weight tensor, N a normalisation followed by a per-channel affine
(its shift is the layer's only bias) and σ an activation.

Initialisation and constants follow the authors' code (Meganet.m), not the paper's text:
the kernels are drawn as in ``convKernel.initTheta`` (std ``sqrt(2 / (3 c_in))``, truncated at
two standard deviations), the affine starts at scale 1 and shift 0 (``tvNormLayer.initTheta``),
and the TV normalisation's eps is ``tvNormLayer``'s default, 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pdenas.errors import InputError
from pdenas.families._krylov import ritz_values

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "SymmetricLayer",
    "TVNorm",
    "AffineOnly",
    "TV_EPS",
    "make_activation",
    "make_norm",
    "conv_spectral_norm",
    "init_kernel_",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}
"""Activations by name. relu, leaky_relu, tanh and softplus are non-decreasing, which the
paper's stability argument needs; silu and gelu are not (offered because searches use them)."""

NORMS = ("tv", "batch", "none")

TV_EPS = 1e-4
"""eps of the TV normalisation: Meganet.m's ``tvNormLayer`` default (PAPER.md's text says about
1e-3; the authors' code, which pdenas follows, uses 1e-4)."""


def init_kernel_(weight: torch.Tensor) -> torch.Tensor:
    """Draws a (out, in, 3, 3) kernel in place as Meganet.m's ``convKernel.initTheta`` does.

    ``K ~ N(0, sd²)`` with ``sd = sqrt(2 / (3 c_in))`` (``sqrt(2 / (sK(3) sK(2)))`` for a kernel
    of size ``[3 3 c_in c_out]``), truncated to ``[-2 sd, 2 sd]``. Meganet redraws the values
    outside once and then clamps them; ``torch.nn.init.trunc_normal_`` samples the truncated
    normal exactly, which is what that code approximates.
    """
    sd = math.sqrt(2.0 / (weight.shape[-1] * weight.shape[1]))
    return nn.init.trunc_normal_(weight, mean=0.0, std=sd, a=-2 * sd, b=2 * sd)


class AffineOnly(nn.Module):
    """No normalisation: only the per-channel scale and shift, ``s ⊙ y + b``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self._affine(y)


class TVNorm(AffineOnly):
    """Total-variation normalisation (Meganet's tvNormLayer) and a per-channel affine.

    ``N(y) = s ⊙ y / sqrt(Σ_c y_c² + eps) + b``, per pixel and per example: no batch statistics,
    so recomputing it during a reversible backward pass is exact. ``eps`` defaults to
    ``TV_EPS`` (1e-4, as Meganet.m's ``tvNormLayer``). Under autocast it computes in fp32, as
    torch's own normalisations do: bf16 or fp16 inputs are widened first (on a CPU the mixed
    bf16/fp32 elementwise work took 1.7 times as long, ``benchmarks/cpu_bf16.md``).
    """

    def __init__(self, channels: int, eps: float = TV_EPS) -> None:
        super().__init__(channels)
        self.eps = eps

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype in (torch.bfloat16, torch.float16):
            y = y.float()
        scale = torch.rsqrt(y.pow(2).sum(dim=1, keepdim=True) + self.eps)
        return self._affine(y * scale)


def make_norm(name: str, channels: int) -> nn.Module:
    """Builds a normalisation by name ("tv", "batch" or "none"), each with a per-channel affine."""
    if name == "tv":
        return TVNorm(channels)
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "none":
        return AffineOnly(channels)
    raise InputError(f"norm: unknown {name!r}; allowed: {', '.join(NORMS)}")


def make_activation(name: str) -> nn.Module:
    """Builds an activation by name (see ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise InputError(
            f"activation: unknown {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def conv_spectral_norm(
    weight: torch.Tensor,
    size: int = 16,
    iterations: int = 100,
    seed: int = 0,
    tol: float = 1e-7,
) -> float:
    """Estimates the spectral norm of a stride-1, padding-1 convolution on size x size images.

    Lanczos on ``KᵀK`` (``ritz_values``): the largest Ritz value approaches ``||K||²`` from below
    and much faster than power iteration, which after 30 iterations on 16x16 images was up to 5 %
    low (the top of a convolution's spectrum is nearly continuous in the frequency). The run
    stops when the estimate changes by at most ``tol`` (relative), or after ``iterations``.

    Args:
        weight: The (out, in, k, k) kernel.
        size: Side of the square image on which the operator acts.
        iterations: The most products with ``KᵀK``.
        seed: Seed of the starting vector, so the estimate is reproducible.
        tol: Relative change of the estimate that stops the run.

    Returns:
        The estimate of ``||K||₂`` (a lower bound that converges from below).
    """
    w = weight.detach()
    pad = w.shape[-1] // 2
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(1, w.shape[1], size, size, generator=gen, dtype=w.dtype).to(w.device)
    if not bool(w.abs().max() > 0):
        return 0.0

    def normal(u: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(F.conv2d(u, w, padding=pad), w, padding=pad)

    with torch.no_grad():
        values, _ = ritz_values(normal, v, max_iterations=iterations, tol=tol, symmetric=True)
    return math.sqrt(max(float(values.max()), 0.0))


class SymmetricLayer(nn.Module):
    """The paper's symmetric layer ``F(θ, Y) = -Kᵀ σ(N(K Y))``.

    K and Kᵀ share ``self.weight`` (no bias); the normalisation's shift is the only bias.
    """

    def __init__(self, channels: int, *, norm: str = "tv", activation: str = "relu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        init_kernel_(self.weight)
        self.norm = make_norm(norm, channels)
        self.activation = make_activation(activation)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a = self.activation(self.norm(F.conv2d(y, self.weight, padding=1)))
        return -F.conv_transpose2d(a, self.weight, padding=1)

    def spectral_norm(self) -> float:
        """Power-iteration estimate of ``||K||₂``."""
        return conv_spectral_norm(self.weight)

    def jacobian_bound(self, spectral_norm: float | None = None) -> float:
        """Bound on the spectrum of the linearised layer ``Kᵀ D S K``: ``||K||² max|s|``.

        D is σ' (at most 1 for the activations offered), S the affine scale of N; the
        normalisation's own Jacobian is left out, as in the paper's linear stability argument.
        ``spectral_norm`` is ``||K||`` when already estimated (None: estimate it).
        """
        norm = self.spectral_norm() if spectral_norm is None else spectral_norm
        gain = float(self.norm.weight.detach().abs().max())
        return norm**2 * gain
