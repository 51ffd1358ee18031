"""Warm starts in the search (study option ``warm_start``): a candidate that matches a finished
trial at a smaller depth starts from that trial's weights, resampled in time.

Depth is a discretisation (Ruthotto & Haber 2018; ``pdenas.multilevel``): a unit of n steps and one of 2n
steps approximate the same dynamics, so a shallow trial's trained weights, each step repeated
over the finer steps (``resample_model``), are a good start for a deeper candidate of the same
family, widths, normalisation and activation. The candidate keeps its own step size h.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pdenas.architecture import Architecture
from pdenas.runs import RunFolder, TrialStatus

__all__ = ["warm_start"]

_SAME = ("family", "widths", "norm", "activation", "in_channels", "num_classes", "init")


def _source(run: RunFolder, arch: Architecture) -> tuple[int, Architecture, float] | None:
    """The best completed trial with the candidate's layout at smaller depths, or None."""
    best = None
    target = arch.to_dict()
    for record in run.records():
        source = record.architecture
        if (record.status is not TrialStatus.COMPLETED or not record.val_accuracy
                or not run.trial(record.number).has_weights()
                or any(source.get(k) != target[k] for k in _SAME)):
            continue
        depths = source.get("depths") or []
        shallower = all(d <= n for d, n in zip(depths, arch.depths)) and tuple(depths) != arch.depths
        if len(depths) != len(arch.depths) or not shallower:
            continue
        if best is None or record.val_accuracy > best[2]:
            best = (record.number, Architecture.from_dict(source), float(record.val_accuracy))
    return best


def warm_start(model: nn.Module, arch: Architecture, run: RunFolder) -> dict[str, Any] | None:
    """Loads the best matching shallower trial's weights, resampled to ``arch``'s depths, into
    ``model`` (in place); returns the record's ``warm_start`` entry, or None when none matches."""
    from pdenas.multilevel import pde_units, resample_model
    from pdenas.network import build_model

    found = _source(run, arch)
    if found is None:
        return None
    number, source_arch, accuracy = found
    source = build_model(source_arch)
    source.load_state_dict(run.trial(number).load_weights())
    deeper = resample_model(source, arch.depths)
    for unit in pde_units(deeper):
        unit.step_size = arch.step_size
    with torch.no_grad():
        model.load_state_dict(deeper.state_dict())
    return {"from_trial": number, "from_depths": list(source_arch.depths),
            "from_val_accuracy": accuracy}
