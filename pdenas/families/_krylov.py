"""Krylov (Arnoldi / Lanczos) estimates of the extreme eigenvalues of an operator given as a
matrix-vector product: the spectral norm of a convolution and the spectral radius of a linearised
time step both come from here.

Arnoldi builds an orthonormal basis ``V_k`` of the Krylov space ``span{v, Av, ..., A^{k-1} v}``
(modified Gram-Schmidt, applied twice so the basis stays orthogonal in float32) and the
Hessenberg matrix ``H_k = V_kᵀ A V_k``; the eigenvalues of ``H_k`` (the Ritz values) approach the
extreme eigenvalues of A much faster than plain power iteration does, in particular when the top
of the spectrum is clustered (as for a convolution, whose spectrum is nearly continuous in the
frequency). For a symmetric A this is Lanczos, and the largest Ritz value is a lower bound of the
largest eigenvalue that increases with k. When ``k`` reaches the dimension of A (or the space
becomes invariant) the Ritz values are A's eigenvalues.
"""

from __future__ import annotations

from collections.abc import Callable

import math

import torch

__all__ = ["ritz_values"]


def ritz_values(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    max_iterations: int = 60,
    tol: float = 1e-6,
    symmetric: bool = False,
    min_iterations: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values of the operator ``matvec`` after an Arnoldi run from ``start``.

    For a symmetric operator the run stops when the largest Ritz value changed by at most
    ``tol`` (relative) over two consecutive iterations. Otherwise it stops when the Ritz value of
    largest magnitude ``θ`` is a converged eigenvalue: its Ritz vector ``y`` has the relative
    residual ``||A y - θ y|| / |θ| = |h_{k+1,k} s_k| / |θ| <= tol`` (``s`` the eigenvector of
    ``H_k``). Non-normal operators (the leapfrog step) have Ritz values outside their spectrum
    until the space is large enough; the residuals say which ones to trust. Every run also stops
    when the Krylov space is invariant (the values are then exact) or after ``max_iterations``
    products (never more than the dimension).

    Args:
        matvec: ``v -> A v`` on tensors shaped like ``start``.
        start: The starting vector (any shape; not all zeros).
        max_iterations: The most products with A.
        tol: The convergence tolerance (see above).
        symmetric: A is symmetric: the values are real (eigenvalues of the symmetrised H).
        min_iterations: The fewest products before a convergence test may stop the run (a
            small space can hold a converged eigenvalue that is not the largest).

    Returns:
        The Ritz values (float64 if ``symmetric``, else complex128) and each one's relative
        residual (float64), on the CPU.
    """
    norm = start.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("ritz_values: the start vector must be finite and non-zero")
    n = start.numel()
    m = max(1, min(max_iterations, n))
    basis = [start / norm]
    h = torch.zeros(m + 1, m, dtype=torch.float64)
    largest: list[float] = []
    for k in range(m):
        w = matvec(basis[k])
        scale = float(w.norm())
        if not math.isfinite(scale):
            dtype = torch.float64 if symmetric else torch.complex128
            nan = torch.full((1,), float("nan"), dtype=torch.float64)
            return nan.to(dtype), nan
        for _ in range(2):  # re-orthogonalise: one Gram-Schmidt pass loses orthogonality
            for i in range(k + 1):
                c = torch.sum(basis[i] * w)
                h[i, k] += float(c)
                w = w - c * basis[i]
        h[k + 1, k] = float(w.norm())
        square = h[: k + 1, : k + 1]
        if symmetric:
            values, vectors = torch.linalg.eigh(0.5 * (square + square.T))
        else:
            values, vectors = torch.linalg.eig(square)
        magnitude = values.abs().clamp_min(1e-300)
        residuals = (h[k + 1, k] * vectors[-1].abs()) / magnitude
        top = int(magnitude.argmax())
        largest.append(float(magnitude[top]))
        invariant = h[k + 1, k] <= 1e-10 * max(scale, 1e-300)
        if symmetric:
            converged = len(largest) >= 3 and all(
                abs(largest[-1] - earlier) <= tol * largest[-1] for earlier in largest[-3:-1]
            )
        else:
            converged = float(residuals[top]) <= tol
        if invariant or (converged and k + 1 >= min_iterations) or k + 1 == m:
            break
        basis.append(w / h[k + 1, k].item())
    return values, residuals
