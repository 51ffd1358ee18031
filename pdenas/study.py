"""Study files (``studies/*.yaml``): ``StudyConfig``, validated once at the edge.

A study file names the data, the search space, the training budget, the objectives, the
sampler and early stopping, the budget of trials, the storage, the device and the seed.
``StudyConfig`` checks the study itself; the options that belong to one backend (the sampler's
name and options, the ``ray:`` section) are kept as plain data here and validated by that
backend's ``check`` before anything is written. Everything downstream takes typed objects.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from pdenas._bounded import (
    MAX_YAML_BYTES,
    BoundedLoader,
    load_yaml,
    read_text,
    short_repr,
)
from pdenas._config import INTERNAL, Config, ConfigError, _plain, reading_stored
from pdenas.data import DataConfig
from pdenas.errors import InputError
from pdenas.tracking import TrackingConfig
from pdenas.train import TrainConfig

__all__ = ["BALANCE_BY", "COST_OBJECTIVES", "DEVICES", "EARLY_STOP_RULES", "STABILITY_MODES",
           "Constraints", "EarlyStop", "StabilityCheck", "StudyConfig", "deep_merge", "find_study",
           "parse_assignments", "resolve_device"]

COST_OBJECTIVES = ("params", "flops", "latency_ms", "latency_batch_ms", "memory_bytes")
"""Cost metrics that can be a second objective (minimised) against validation accuracy."""

DEVICES = ("auto", "cpu", "cuda")
MAX_TRIALS = 1_000_000
"""The most trials a study may ask for (a larger number is a typo, not a plan)."""
MAX_WORKERS = 64
"""The most worker processes one ``pdenas search`` starts (``workers: auto`` included)."""
LATENCY_REPEATS_ENV = "PDENAS_LATENCY_REPEATS"
"""Timed forward passes per latency measurement (default 10): fewer measure faster and noisier."""


def latency_repeats_default() -> int:
    """``PDENAS_LATENCY_REPEATS`` (an integer from 1 to 1000), else 10.

    Raises:
        InputError: A value that is not such an integer.
    """
    import os

    text = os.environ.get(LATENCY_REPEATS_ENV, "").strip()
    if not text:
        return 10
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise InputError(f"{LATENCY_REPEATS_ENV}: got {text!r}; allowed: an integer from 1 to 1000")
    return value


@dataclass(frozen=True)
class Constraints(Config):
    """Cost limits, passed to constraint-aware samplers.

    Attributes:
        max_params: Most parameters a candidate may have.
        max_flops: Most FLOPs per image.
        max_latency_ms: Most batch-1 latency on the trial's device.
        max_memory_bytes: Most training memory (CUDA: the peak of one training step at the
            training batch size; CPU: the activations saved for backward).
        skip_infeasible: Do not train a candidate that breaks a limit (it is recorded as
            "infeasible" with its cost, so the sampler still learns from it); always, for a
            study file.
    """

    SECTION = "constraints"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "skip_infeasible": "a candidate that breaks a limit is never trained (it is recorded "
                           "as infeasible, so the sampler learns from it)"}

    max_params: int | None = None
    max_flops: int | None = None
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    skip_infeasible: bool = field(default=True, metadata=INTERNAL)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("max_params", "max_flops", "max_latency_ms", "max_memory_bytes"):
            value = getattr(self, key)
            self.require(key, value is None or value > 0, "a number > 0 or null")

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return bool(self._limits())

    def _limits(self) -> list[tuple[str, float]]:
        limits = (("params", self.max_params), ("flops", self.max_flops),
                  ("latency_ms", self.max_latency_ms), ("memory_bytes", self.max_memory_bytes))
        return [(key, float(limit)) for key, limit in limits if limit is not None]

    def violations(self, cost: Mapping[str, float]) -> list[float]:
        """Constraint values: one per limit set, feasible when ``<= 0``."""
        return [float(cost[key]) - limit for key, limit in self._limits()]

    def describe(self, cost: Mapping[str, float]) -> str:
        """The limits ``cost`` breaks, in words (``params 51,074 > 10,000``)."""
        return "; ".join(f"{key} {float(cost[key]):,.6g} > {limit:,.6g}"
                         for key, limit in self._limits() if float(cost[key]) > limit)


STABILITY_MODES = ("off", "record", "refuse", "shorten")
EARLY_STOP_RULES = ("none", "median", "asha", "mo_asha", "hyperband")
BALANCE_BY = ("trials", "flop_epochs", "seconds")
"""What ``balance_families`` makes equal across families: trial counts, FLOP-epochs (FLOPs per
image times epochs trained) or trial seconds."""


@dataclass(frozen=True)
class EarlyStop(Config):
    """The ``early_stop:`` section: which trials stop before their last epoch, the same on both
    backends (``backends/_early_stop.py``; ``early_stop: none`` is short for ``{rule: none}``).

    Every rule leaves a trial alone for its first ``min_epochs`` epochs and never stops it at its
    last one; a stopped trial is recorded as "stopped" with the epochs it trained. Rungs sit at
    ``min_epochs * reduction**k`` epochs (k = 0, 1, ...).

    Attributes:
        rule: "median" (at every epoch from ``min_epochs`` on, stop a trial whose best
            validation accuracy so far is below the median of the other trials' at that
            epoch, as Optuna's MedianPruner), "asha" (at each rung, only the best ``1/reduction`` of the
            trials that reached it go on, by accuracy), "mo_asha" (the same by Pareto rank of
            accuracy and the cost objective, so the accuracy-cost front goes on; needs a cost
            objective), "hyperband" (Optuna's HyperbandPruner, Ray's asynchronous HyperBand;
            accuracy alone, one objective) or "none". pdenas's own rules (median, asha,
            mo_asha) keep every trial while fewer than ``MIN_TRIALS`` (4) reached the epoch.
        min_epochs: Epochs every trial trains before it may be stopped: the first rung.
        reduction: The rungs' growth and ASHA's reduction factor (the best ``1/reduction`` go on).
        percentile: The median rule's threshold, 0 to 100 (50: the median; not a study key,
            for code that wants another percentile).
    """

    SECTION = "early_stop"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "percentile": "the rule is median (the 50th percentile of the other trials)"}

    rule: str = "median"
    min_epochs: int = 1
    reduction: int = 2
    percentile: float = field(default=50.0, metadata=INTERNAL)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("rule", self.rule in EARLY_STOP_RULES, ", ".join(EARLY_STOP_RULES))
        self.require("min_epochs", self.min_epochs >= 1, "an integer >= 1")
        self.require("reduction", 2 <= self.reduction <= 16, "an integer from 2 to 16")
        self.require("percentile", 0 <= self.percentile <= 100, "a number from 0 to 100")


@dataclass(frozen=True)
class StabilityCheck(Config):
    """The ``stability:`` section: the estimate of each candidate's units at real training images
    (``pdenas.families.stability_report``), and what to do with a candidate estimated unstable
    before training. Only the mode is the study's to choose; the estimate's settings are
    constants of this class (earlier versions read them from the study file).

    Attributes:
        mode: "off"; "record" (the estimate at initialisation and after training, in the
            record); "refuse" (also: an unstable candidate is recorded as infeasible with the
            estimate in the reason, not trained, and the sampler is told); "shorten" (also:
            halve h until the estimate is stable, at most ``max_halvings`` times, then train
            with that h, or refuse).
    """

    SECTION = "stability"
    REMOVED: ClassVar[Mapping[str, str]] = {
        key: "the estimate's settings are constants now (StabilityCheck); the study sets mode"
        for key in ("radius", "images", "iterations", "max_halvings")}

    radius: ClassVar[float] = 1.05
    """The largest spectral radius of one linearised step counted as stable (1 plus the
    estimate's slack)."""
    images: ClassVar[int] = 4
    """Training images the estimate is taken at."""
    iterations: ClassVar[int] = 20
    """The most Jacobian-vector products per time step."""
    max_halvings: ClassVar[int] = 4
    """How often "shorten" may halve h."""

    mode: str = "off"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("mode", self.mode in STABILITY_MODES, ", ".join(STABILITY_MODES))


@dataclass(frozen=True)
class StudyConfig(Config):
    """A validated study file.

    Attributes:
        name: Study name; the run folder is ``runs/<name>/`` by default.
        data: The data set.
        space: Name of a packaged search space or a path (relative to the study file).
        train: Base training settings; the search space may override some per trial.
        objectives: "val_accuracy" first, optionally one cost metric (minimised) after it.
        sampler: The sampler's name (validated by the backend); a study file writes
            ``sampler: tpe`` or ``sampler: {name: tpe, n_startup_trials: 10}`` (the other keys
            are the sampler's keyword arguments, kept in ``sampler_options``).
        sampler_options: Keyword arguments for the sampler (set from the ``sampler`` mapping).
        start_with: Params of a new study's first trials, in order (as Optuna's
            ``enqueue_trial`` and Ray Tune's ``points_to_evaluate``): each mapping fixes some of
            the space's params (``family``, ``depth``, ``width_base``, ``lr``, ...; checked
            against the space before anything is written) and the sampler chooses the rest. A
            cheap, known-good candidate here gives a result within a minute or two.
        cover_families: Start a new study with one trial per family (after ``start_with``), so
            every family is tried before the sampler narrows down (always, for a study file).
        balance_families: Give every family an equal share of the budget, its own
            sampler state (the sampler sees only that family's trials) and its own early
            stopping (every ``early_stop`` rule but hyperband compares a trial with its
            family's trials), so the family table compares equals. Optuna backend. The value
            says what is shared equally (``BALANCE_BY``): ``trials`` (each new trial goes to
            the family with the fewest; ``true`` reads as this), ``flop_epochs`` (to the family
            that has spent the fewest FLOPs per image times epochs: equal compute) or
            ``seconds`` (the fewest trial seconds); ``false``: no balancing.
        stability: The stability estimate and what to do with unstable candidates.
        warm_start: Start a candidate from the weights of the best finished trial with the same
            family, widths, norm and activation at smaller depths, resampled in time
            (``pdenas.multilevel``); recorded in the trial's ``warm_start``.
        early_stop: Which trials stop before their last epoch (``EarlyStop``), on either
            backend.
        n_trials: Total trials of the study (all workers together; a rerun tops up to it).
        timeout: Seconds this command may run; None for no limit. A candidate predicted to need
            more than the time left (before it is built, from the trials measured so far) is
            recorded as skipped, not trained and not counted toward ``n_trials``; the search
            ends when even the space's cheapest candidate would not fit.
        trial_timeout: Seconds one trial may take (None: no limit). A candidate predicted to
            need more is infeasible (a constraint for the sampler); one that reaches the limit
            stops at the next training step with status "timeout", its best epoch's weights
            kept.
        storage: Optuna storage URL; None for SQLite in the run folder.
        device: "auto", "cpu" or "cuda".
        seed: Seeds the sampler, the data split and every trial's initialisation.
        constraints: Cost limits.
        latency_repeats: Timed forward passes per latency measurement (``PDENAS_LATENCY_REPEATS``,
            default 10; not a study key).
        threads: CPU threads torch uses in each worker (None: torch's default, one per core;
            with several workers on the CPU, the cores shared among them).
            Small candidates train faster on one thread; Ray sets it from ``cpus_per_trial``.
        workers: Worker processes ``pdenas search`` runs on this machine, sharing the study
            (Optuna backend; ``--workers`` overrides it): an integer, or "auto", which is one
            worker per ``threads`` CPU cores on a CPU study with ``threads`` set, else 1
            (``backends._supervise.worker_count``). Ray runs trials side by side itself
            (as many as the cluster's CPUs and GPUs hold).
        ray: The Ray Tune backend's settings (validated by that backend).
        tracking: Experiment trackers (MLflow, TensorBoard) the trials report to
            (``pdenas.tracking``).
        description: Free text shown in reports.
        path: The file it was loaded from (set by ``load``).
    """

    REMOVED: ClassVar[Mapping[str, str]] = {
        "cover_families": "every family gets one trial first whenever the space chooses "
                          "between families",
        "latency_repeats": f"set the environment variable {LATENCY_REPEATS_ENV} instead",
        "pruner": "use early_stop.rule (median, hyperband, asha, mo_asha or none)",
        "pruner_options": "use early_stop (min_epochs, reduction)",
        "early_stop_rule": "use early_stop.rule",
        "early_stop_warmup": "use early_stop.min_epochs (warmup + 1: the first epoch a trial "
                             "may stop at)",
        "early_stop_reduction": "use early_stop.reduction",
        "early_stop_percentile": "use early_stop.rule: median",
        "sampler_options": "write the options in the sampler mapping (sampler: {name: tpe, "
                           "n_startup_trials: 10})",
    }

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    space: str = "quickstart"
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: tuple[str, ...] = ("val_accuracy",)
    sampler: str = "tpe"
    sampler_options: Mapping[str, Any] = field(default_factory=dict, metadata=INTERNAL)
    start_with: tuple[Mapping[str, Any], ...] = ()
    cover_families: bool = field(default=True, metadata=INTERNAL)
    balance_families: bool | str = False
    stability: StabilityCheck = field(default_factory=StabilityCheck)
    warm_start: bool = False
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    n_trials: int = 20
    timeout: float | None = None
    trial_timeout: float | None = None
    storage: str | None = None
    device: str = "auto"
    seed: int = 0
    constraints: Constraints = field(default_factory=Constraints)
    latency_repeats: int = field(default_factory=lambda: latency_repeats_default(),
                                 metadata=INTERNAL)
    threads: int | None = None
    workers: int | str = 1
    ray: Mapping[str, Any] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    description: str = ""
    path: str | None = field(default=None, metadata=INTERNAL)

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            object.__setattr__(self, "objectives", (self.objectives,))
        super().__post_init__()
        name = self.name
        self.require("name", bool(name) and name not in (".", "..")
                     and not any(c in name for c in "/\\ \0"),
                     "a non-empty name without spaces or slashes")
        objectives = self.objectives
        self.require("objectives", bool(objectives) and objectives[0] == "val_accuracy",
                     "val_accuracy first", problem=f"got {list(objectives)}")
        self.require("objectives", len(objectives) <= 2
                     and all(o in COST_OBJECTIVES for o in objectives[1:]),
                     f"val_accuracy and at most one of {', '.join(COST_OBJECTIVES)}",
                     problem=f"got {list(objectives)}")
        self.require("device", self.device in DEVICES, ", ".join(DEVICES))
        self.require("n_trials", 1 <= self.n_trials <= MAX_TRIALS, f"an integer from 1 to {MAX_TRIALS}")
        self.require("timeout", self.timeout is None or self.timeout > 0, "a number > 0 or null")
        self.require("trial_timeout", self.trial_timeout is None or self.trial_timeout > 0,
                     "a number > 0 or null")
        self.require("latency_repeats", 1 <= self.latency_repeats <= 1000,
                     "an integer from 1 to 1000")
        self.require("threads", self.threads is None or self.threads >= 1, "an integer >= 1 or null")
        self.require("workers", self.workers == "auto" or (
            isinstance(self.workers, int) and not isinstance(self.workers, bool)
            and 1 <= self.workers <= MAX_WORKERS), f"an integer from 1 to {MAX_WORKERS}, or auto")
        balance = self.balance_families
        if balance is True:  # what earlier versions wrote (and a file may still say)
            object.__setattr__(self, "balance_families", "trials")
        elif balance is None:
            object.__setattr__(self, "balance_families", False)
        self.require("balance_families", self.balance_families is False
                     or self.balance_families in BALANCE_BY,
                     f"true or false, or what to share equally: {', '.join(BALANCE_BY)} "
                     "(true: trials)", problem=f"got {short_repr(balance)}")
        rule = self.early_stop.rule
        self.require("early_stop.rule", rule != "mo_asha" or self.multi_objective,
                     "median, asha, hyperband or none for accuracy alone",
                     problem="mo_asha needs a cost objective (objectives: [val_accuracy, flops])")
        self.require("early_stop.rule", rule != "hyperband" or not self.multi_objective,
                     "mo_asha, asha, median or none with a cost objective",
                     problem="hyperband ranks by one objective (Optuna's HyperbandPruner refuses "
                             "multi-objective studies)")
        for k, params in enumerate(self.start_with):
            self.require(f"start_with[{k}]", isinstance(params, Mapping) and all(
                isinstance(key, str) and (value is None or isinstance(value, (str, int, float)))
                for key, value in params.items()),
                "a mapping of param names to values", problem=f"got {params!r}")

    @property
    def balance_by(self) -> str | None:
        """What a balanced study shares equally (one of ``BALANCE_BY``), or None: unbalanced."""
        return self.balance_families or None

    @property
    def multi_objective(self) -> bool:
        """Whether a cost metric is optimised against accuracy."""
        return len(self.objectives) > 1

    @classmethod
    def from_dict(cls, data: Any, *, section: str | None = None,
                  path: str | None = None) -> StudyConfig:
        """Validates a study mapping. ``sampler`` may be a name or a mapping with ``name`` and the
        sampler's options (``sampler: {name: tpe, n_startup_trials: 5}``); ``early_stop`` a
        mapping or a rule's name (``early_stop: none``).

        Raises:
            ConfigError: Naming the bad key and what is allowed.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"study: expected a mapping, got {type(data).__name__}")
        if "name" not in data:
            raise ConfigError("name: missing; allowed: every study needs a name")
        values = dict(data)
        options: dict[str, Any] = {}
        spec = values.get("sampler")
        if isinstance(spec, Mapping):
            options = {str(k): v for k, v in spec.items()}
            if "name" not in options:
                raise ConfigError("sampler.name: missing; allowed: a sampler name")
            values["sampler"] = options.pop("name")
        if isinstance(values.get("early_stop"), str):
            values["early_stop"] = {"rule": values["early_stop"]}
        config = super().from_dict(values, section=section)
        if options or path:
            config = dataclasses.replace(config, sampler_options=options or config.sampler_options,
                                         path=path or config.path)
        return config

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data that ``from_dict`` reads back (the sampler's options in its mapping)."""
        data = super().to_dict()
        if self.sampler_options:
            data["sampler"] = {"name": self.sampler, **_plain(self.sampler_options)}
        return data

    @classmethod
    def from_stored(cls, data: Any, *, path: str | None = None) -> StudyConfig:
        """The study a run folder's ``run.json`` stored, perhaps by an earlier version of pdenas
        (keys it no longer reads are left out; see ``_config.reading_stored``)."""
        with reading_stored():
            return cls.from_dict(_early_stop_upgraded(data), path=path)

    @classmethod
    def load(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
        """Reads and validates a study file; errors name the file and the key.

        Args:
            path: The study file.
            overrides: Merged into the file's mapping (``deep_merge``) before validation, so
                they are checked and typed like the file's own keys.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: study file not found")
        try:
            text = read_text(path, MAX_YAML_BYTES, "study file")
        except OSError as error:
            raise InputError(f"{path}: cannot read the study file: "
                             f"{error.strerror or error}") from None
        data = load_yaml(text, _Loader, str(path))
        if data is not None and not isinstance(data, Mapping):
            raise InputError(f"{path}: study: expected a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(deep_merge(data or {}, overrides or {}), path=str(path.resolve()))
        except InputError as error:  # the key stays the study's, the message names the file
            raise InputError(f"{path}: {error}", key=error.key, detail=error.detail) from None

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def space_path(self) -> str:
        """The search space reference, resolved against the study file's folder when it is a path."""
        if self.path and (self.space.endswith((".yaml", ".yml")) or "/" in self.space):
            candidate = Path(self.path).parent / self.space
            if candidate.exists():
                return str(candidate)
        return self.space


_PRUNER_RULES = {"median": ("median", 2), "successive_halving": ("asha", 4),
                 "hyperband": ("hyperband", 3), "none": ("none", 2)}
"""An earlier version's pruner: the rule it is now, and Optuna's default reduction factor."""


def _early_stop_upgraded(data: Any) -> Any:
    """A stored study (``run.json``) as this version spells it: an earlier version's sampler
    options go into the ``sampler`` mapping, and its early-stopping keys (``pruner`` and
    ``pruner_options`` for one objective, ``early_stop_rule``/``_warmup``/``_reduction``/
    ``_percentile`` for several) become the ``early_stop`` section they meant."""
    if not isinstance(data, Mapping):
        return data
    early = data.get("early_stop")
    if isinstance(early, Mapping) and early.get("rule") == "percentile":  # the median rule's
        return {**data, "early_stop": {**early, "rule": "median"}}       # first name
    if "early_stop" in data:
        return data
    values = dict(data)
    options = values.pop("sampler_options", None)
    if isinstance(options, Mapping) and options and isinstance(values.get("sampler"), str):
        values["sampler"] = {"name": values["sampler"], **options}
    objectives = values.get("objectives")
    several = isinstance(objectives, (list, tuple)) and len(objectives) > 1
    pruner = values.pop("pruner", "median")
    pruner_options = values.pop("pruner_options", None) or {}
    rule = values.pop("early_stop_rule", "mo_asha")
    warmup = values.pop("early_stop_warmup", 2)
    reduction = values.pop("early_stop_reduction", 3)
    percentile = values.pop("early_stop_percentile", 50.0)
    if not isinstance(pruner_options, Mapping):
        pruner_options = {}
    if several:  # (a value of the wrong kind is left for the section's checks to name)
        early = {"rule": "median" if rule == "percentile" else rule,
                 "min_epochs": warmup + 1 if isinstance(warmup, int) else warmup,
                 "reduction": reduction, "percentile": percentile}
    elif isinstance(pruner, str) and pruner in _PRUNER_RULES:
        rule, eta = _PRUNER_RULES[pruner]
        first = pruner_options.get("n_warmup_steps", pruner_options.get("min_resource", 1))
        eta = pruner_options.get("reduction_factor", eta)  # ("auto" and the like: defaults)
        early = {"rule": rule, "min_epochs": first if isinstance(first, int) and first >= 1 else 1,
                 "reduction": eta if isinstance(eta, int) and 2 <= eta <= 16 else 2}
    else:
        return values
    values["early_stop"] = early
    return values


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings merge key by key, anything else
    (a value, a list) replaces. Neither argument is changed."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``--set`` items (``train.epochs=3``, ``objectives=[val_accuracy, flops]``) as one nested
    mapping; each value is read with ``yaml.safe_load`` (``3`` an int, ``1e-3`` a float, ``null``
    None, ``[a, b]`` a list) and typed and checked later by the study schema.

    Raises:
        ValueError: An item without ``=``, an empty key, or a value that is not YAML.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InputError(f"--set {short_repr(item)}: expected KEY=VALUE with a dotted KEY "
                             "(e.g. train.epochs=3)")
        if len(text) > MAX_YAML_BYTES:
            raise InputError(f"--set {short_repr(item)}: the value is longer than the limit of "
                             f"{MAX_YAML_BYTES:,} characters")
        try:
            value = load_yaml(text, _Loader, f"--set {short_repr(item)}")
        except InputError as error:
            raise InputError(str(error).replace(": not valid YAML: ", ": the value is not YAML: ",
                                                1), key="--set") from None
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        result = deep_merge(result, nested)
    return result


class _Loader(BoundedLoader):
    """The safe loader (aliases refused, depth capped), reading ``1e-3`` as a number (YAML 1.2)
    rather than as text, and ``1e6``, a whole number in exponent form, as the integer it names
    (so ``--set constraints.max_params=1e6`` sets an integer key; ``2.0`` stays a float)."""


_EXPONENT_TAG = "tag:pdenas,2026:exponent"


def _exponent_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    value = float(str(loader.construct_scalar(node)).replace("_", ""))
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


_Loader.add_implicit_resolver(
    _EXPONENT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_Loader.add_constructor(_EXPONENT_TAG, _exponent_number)


def find_study(name_or_path: str | Path) -> Path:
    """The study file a path or a shipped study's name (``pdenas studies``) names.

    Raises:
        ValueError: Neither a file nor a shipped study (the message lists the shipped ones).
    """
    from pdenas._resources import shipped_file, shipped_names

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and "/" not in text and not text.endswith((".yaml", ".yml")):
        shipped = shipped_file("studies", text)
        if shipped is not None:
            return shipped
        raise InputError(f"{text}: no such study file or shipped study; shipped: "
                         f"{', '.join(shipped_names('studies'))}")
    raise InputError(f"{path}: study file not found")


def resolve_device(name: str) -> torch.device:
    """Maps "auto" to CUDA when available; refuses "cuda" on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)
