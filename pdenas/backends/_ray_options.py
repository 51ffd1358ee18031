"""The study's ``ray:`` section, checked without importing Ray (the command line's help lists
its keys on an install without the ``ray`` extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from pdenas._config import Config

__all__ = ["RayOptions"]


@dataclass(frozen=True)
class RayOptions(Config):
    """The study's ``ray:`` section: how the Ray Tune backend runs the study.

    Attributes:
        cpus_per_trial: CPUs reserved for each trial (Ray sets its thread count to this).
        gpus_per_trial: GPUs per trial; fractions share one GPU between trials.

    As many trials run at once as the cluster's CPUs and GPUs hold (``concurrent``). Early
    stopping is the study's ``early_stop`` section, as on the Optuna backend; the cluster's
    address is ``--address`` (``pdenas.search(address=...)``).
    """

    SECTION = "ray"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "scheduler": "use early_stop.rule (asha, hyperband, mo_asha, percentile; none for fifo)",
        "grace_period": "use early_stop.min_epochs",
        "reduction_factor": "use early_stop.reduction",
        "address": "use --address (pdenas.search(address=...))",
        "max_concurrent": "as many trials run at once as the cluster's CPUs and GPUs hold "
                          "(cpus_per_trial, gpus_per_trial)",
    }

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("cpus_per_trial", self.cpus_per_trial > 0, "a number > 0")
        self.require("gpus_per_trial", self.gpus_per_trial >= 0, "a number >= 0")

    def concurrent(self, resources: Mapping[str, float]) -> int:
        """How many trials the cluster holds at once (at least 1): its CPUs over
        ``cpus_per_trial``, and its GPUs over ``gpus_per_trial`` when trials use GPUs.

        Args:
            resources: The cluster's resources (``ray.cluster_resources()``: ``CPU``, ``GPU``).
        """
        fits = math.floor(float(resources.get("CPU", 1.0)) / self.cpus_per_trial + 1e-9)
        if self.gpus_per_trial > 0:
            fits = min(fits, math.floor(float(resources.get("GPU", 0.0)) / self.gpus_per_trial
                                        + 1e-9))
        return max(1, fits)
