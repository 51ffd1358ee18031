"""The study's stability check of a candidate before training (``stability:`` in the study):
estimate each unit at real training images, then record, refuse or shorten h.

What is recorded (``estimate``): each unit's ``gain``, the largest singular value of
``∂ output / ∂ input`` (``families.unit_gain``), the quantity that says how much a unit can
amplify a perturbation; and each unit's one-step ``spectral_radius``, a diagnostic. The refuse
and shorten modes still test the radius against ``stability.radius``: no benchmark has yet shown
a threshold on the gain that predicts divergence (``benchmarks/stability.md``), and the radius
screen is off unless a study asks for it. The ``||K||`` bound ignores the normalisation's
Jacobian and bounds nothing under TV (``benchmarks/stability.md``); it is not part of the estimate.

With the check off, a trial still records the gain of its trained weights (``final_gain``,
``record.stability["final"]``), taken once after training at ``GAIN_IMAGES`` training images
with at most ``GAIN_ITERATIONS`` products per unit: the leaderboard's ``gain`` column.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from pdenas.architecture import Architecture
from pdenas.families import PDEUnit, stability_report
from pdenas.study import StabilityCheck

__all__ = ["GAIN_IMAGES", "GAIN_ITERATIONS", "GAIN_TOL", "estimate", "final_gain", "stabilise"]

GAIN_IMAGES = 4
"""Training images the gain of a trained candidate is taken at when the check is off."""
GAIN_ITERATIONS = 8
"""The most Lanczos products per unit for that gain (``benchmarks/stability_gain_cost.md``)."""
GAIN_TOL = 1e-2
"""The relative change of ``gain²`` over two products that ends its run early."""


def estimate(model: nn.Module, images: torch.Tensor, check: StabilityCheck) -> dict[str, Any]:
    """The estimate at ``images``: ``gain`` and ``spectral_radius`` (each the largest over the
    units), ``stable`` (the radius at most ``check.radius``), ``step_size``, and one row per unit
    (``unit``, ``gain``, ``spectral_radius``)."""
    rows = stability_report(model, images, batch=check.images, iterations=check.iterations)
    radius = max(row["spectral_radius"] for row in rows)
    units = [{"unit": row["unit"], "gain": row["gain"], "spectral_radius": row["spectral_radius"]}
             for row in rows]
    return {"gain": float(max(row["gain"] for row in rows)), "spectral_radius": float(radius),
            "stable": bool(radius <= check.radius), "step_size": float(rows[0]["step_size"]),
            "units": units}


def final_gain(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """The gain of trained weights, what a trial records with the check off: ``gain`` (the
    largest over the units; None when it could not be measured), ``step_size`` and one row per
    unit (``unit``, ``gain``). Only the gain is estimated (no radius, no ``||K||``), at the first
    ``GAIN_IMAGES`` of ``images`` with at most ``GAIN_ITERATIONS`` products per unit, and the ``seconds``
    it took. Running out of memory here leaves the trained trial as it is: ``gain`` None and the
    ``error``."""
    if not any(isinstance(m, PDEUnit) for m in model.modules()):
        return {"gain": None, "units": []}
    start = time.perf_counter()
    try:
        rows = stability_report(model, images, batch=GAIN_IMAGES, iterations=GAIN_ITERATIONS,
                                tol=GAIN_TOL, diagnostics=False)
    except torch.OutOfMemoryError as error:
        return {"gain": None, "units": [], "error": f"out of memory: {str(error).splitlines()[0]}"}
    gains = [float(row["gain"]) if math.isfinite(row["gain"]) else None for row in rows]
    return {"gain": None if None in gains else max(gains), "step_size": float(rows[0]["step_size"]),
            "units": [{"unit": row["unit"], "gain": gain} for row, gain in zip(rows, gains)],
            "seconds": time.perf_counter() - start}


def _set_step_size(model: nn.Module, h: float) -> None:
    for unit in model.modules():
        if isinstance(unit, PDEUnit):
            unit.step_size = h


def stabilise(model: nn.Module, arch: Architecture, images: torch.Tensor,
              check: StabilityCheck) -> tuple[Architecture, dict[str, Any], str | None]:
    """Applies the check's mode before training.

    Returns:
        The architecture to train (h possibly shortened), the record's ``stability`` entry so
        far, and the reason to refuse the candidate (None to train it).
    """
    first = estimate(model, images, check)
    entry: dict[str, Any] = {"init": first}
    if first["stable"] or check.mode == "record":
        return arch, entry, None
    h, current = arch.step_size, first
    if check.mode == "shorten":
        for _ in range(check.max_halvings):
            h /= 2
            _set_step_size(model, h)
            current = estimate(model, images, check)
            if current["stable"]:
                entry.update(init=current, shortened_from=arch.step_size)
                return dataclasses.replace(arch, step_size=h), entry, None
        _set_step_size(model, arch.step_size)
    tried = f" (also at h = {h:g} after {check.max_halvings} halvings)" if check.mode == "shorten" else ""
    reason = (f"estimated unstable before training: spectral radius {first['spectral_radius']:.3g} "
              f"> {check.radius:g} at h = {arch.step_size:g}{tried}")
    return arch, entry, reason
