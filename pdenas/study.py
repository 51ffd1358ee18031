"""Study files (``studies/*.yaml``) and the trial objective both backends share.

A study file names the data, the search space, the training budget, the objectives, the
sampler and pruner, the budget of trials, the storage, the device and the seed. ``StudyConfig``
validates it once; everything downstream takes typed objects.

``run_candidate`` is the objective: build the suggested architecture, measure its cost, train it
(reporting validation accuracy each epoch to the backend, which may stop it), save its weights and
record, and return a ``TrialRecord``. A diverging or out-of-memory candidate becomes a record with
a status and a reason, never an exception that ends the study.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pdenas.architecture import Architecture
from pdenas.data import DataConfig, DataSplits
from pdenas.train import TrainConfig

__all__ = [
    "COST_OBJECTIVES",
    "Constraints",
    "RayConfig",
    "StudyConfig",
    "TrialRecord",
    "resolve_device",
    "run_candidate",
    "trial_dir",
]

COST_OBJECTIVES = ("params", "flops", "latency_ms", "latency_batch_ms", "memory_bytes")
"""Cost metrics that can be a second objective (minimised) against validation accuracy."""

SAMPLERS = ("tpe", "random", "nsga2", "cmaes", "gp", "grid")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULERS = ("asha", "hyperband", "fifo")


def _check_keys(section: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{section}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            prefix = f"{section}." if section else ""
            raise ValueError(f"{prefix}{key}: unknown key; allowed keys: {', '.join(allowed)}")


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _positive(key: str, value: Any, kind: type = float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and isinstance(value, int)
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        noun = "an integer" if kind is int else "a number"
        raise ValueError(f"{key}: must be {noun} > 0, got {value!r}")


@dataclass(frozen=True)
class Constraints:
    """Cost limits, passed to Optuna's constraint-aware samplers.

    Attributes:
        max_params: Most parameters a candidate may have.
        max_flops: Most FLOPs per image.
        max_latency_ms: Most batch-1 latency on the trial's device.
        skip_infeasible: Do not train a candidate that breaks a limit (it is recorded as
            "infeasible" with its cost, so the sampler still learns from it).
    """

    max_params: int | None = None
    max_flops: int | None = None
    max_latency_ms: float | None = None
    skip_infeasible: bool = True

    def __post_init__(self) -> None:
        _positive("constraints.max_params", self.max_params, int, allow_none=True)
        _positive("constraints.max_flops", self.max_flops, int, allow_none=True)
        _positive("constraints.max_latency_ms", self.max_latency_ms, allow_none=True)

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return any(v is not None for v in (self.max_params, self.max_flops, self.max_latency_ms))

    def violations(self, cost: Mapping[str, float]) -> list[float]:
        """Optuna's constraint values: one per limit set, feasible when ``<= 0``."""
        limits = (("params", self.max_params), ("flops", self.max_flops),
                  ("latency_ms", self.max_latency_ms))
        return [float(cost[key]) - float(limit) for key, limit in limits if limit is not None]


@dataclass(frozen=True)
class RayConfig:
    """How the Ray Tune backend runs the study.

    Attributes:
        cpus_per_trial: CPUs reserved for each trial (Ray sets its thread count to this).
        gpus_per_trial: GPUs per trial; fractions share one GPU between trials.
        max_concurrent: Most trials running at once.
        scheduler: "asha", "hyperband" or "fifo" (no early stopping).
        grace_period: Epochs every trial trains before ASHA may stop it.
        reduction_factor: ASHA/HyperBand's reduction factor.
        address: Ray cluster address ("auto", "HOST:PORT") or None for a local runtime.
    """

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    address: str | None = None

    def __post_init__(self) -> None:
        _positive("ray.cpus_per_trial", self.cpus_per_trial)
        if not isinstance(self.gpus_per_trial, (int, float)) or self.gpus_per_trial < 0:
            raise ValueError(f"ray.gpus_per_trial: must be a number >= 0, got {self.gpus_per_trial!r}")
        _positive("ray.max_concurrent", self.max_concurrent, int)
        _positive("ray.grace_period", self.grace_period, int)
        if not isinstance(self.reduction_factor, int) or self.reduction_factor < 2:
            raise ValueError(f"ray.reduction_factor: must be an integer >= 2, got {self.reduction_factor!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"ray.scheduler: unknown {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file.

    Attributes:
        name: Study name; the run folder is ``runs/<name>/`` by default.
        description: Free text shown in reports.
        data: The data set.
        space: Name of a packaged search space or a path (relative to the study file).
        train: Base training settings; the search space may override some per trial.
        objectives: "val_accuracy" first, optionally one cost metric (minimised) after it.
        sampler: Optuna sampler name.
        sampler_options: Keyword arguments for the sampler.
        pruner: Optuna pruner name (single-objective studies only).
        pruner_options: Keyword arguments for the pruner.
        cover_families: Start a new study with one trial per family, so every family is
            tried before the sampler narrows down.
        early_stop_warmup: Multi-objective studies: epochs before pdenas's own median rule may
            stop a candidate (Optuna's pruners refuse multi-objective studies).
        early_stop_percentile: Multi-objective studies: a candidate is stopped when its best
            accuracy is below this percentile of the others at the same epoch (50: the median).
        n_trials: Total trials of the study (all workers together; a rerun tops up to it).
        timeout: Seconds this command may run; None for no limit.
        storage: Optuna storage URL; None for SQLite in the run folder.
        device: "auto", "cpu" or "cuda".
        seed: Seeds the sampler, the data split and every trial's initialisation.
        constraints: Cost limits.
        latency_repeats: Timed forward passes per latency measurement.
        threads: CPU threads torch uses in each worker (None: torch's default, one per core).
            Small candidates train faster on one thread; Ray sets it from ``cpus_per_trial``.
        ray: Ray Tune settings.
        path: The file it was loaded from.
    """

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    space: str = "quickstart"
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: tuple[str, ...] = ("val_accuracy",)
    sampler: str = "tpe"
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: Mapping[str, Any] = field(default_factory=dict)
    cover_families: bool = True
    early_stop_warmup: int = 2
    early_stop_percentile: float = 50.0
    n_trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    device: str = "auto"
    seed: int = 0
    constraints: Constraints = field(default_factory=Constraints)
    latency_repeats: int = 10
    threads: int | None = None
    ray: RayConfig = field(default_factory=RayConfig)
    description: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "/\\ "):
            raise ValueError(f"name: must be a non-empty name without spaces or slashes, got {self.name!r}")
        objectives = tuple(self.objectives)
        object.__setattr__(self, "objectives", objectives)
        if not objectives or objectives[0] != "val_accuracy":
            raise ValueError(f"objectives: the first must be val_accuracy, got {list(objectives)}")
        if len(objectives) > 2 or any(o not in COST_OBJECTIVES for o in objectives[1:]):
            raise ValueError(
                f"objectives: val_accuracy and at most one cost metric from "
                f"{', '.join(COST_OBJECTIVES)}; got {list(objectives)}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner: unknown {self.pruner!r}; allowed: {', '.join(PRUNERS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device: unknown {self.device!r}; allowed: {', '.join(DEVICES)}")
        _positive("n_trials", self.n_trials, int)
        _positive("timeout", self.timeout, allow_none=True)
        _positive("latency_repeats", self.latency_repeats, int)
        _positive("threads", self.threads, int, allow_none=True)
        p = self.early_stop_percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            raise ValueError(f"early_stop_percentile: must be a number from 0 to 100, got {p!r}")
        if not isinstance(self.early_stop_warmup, int) or self.early_stop_warmup < 0:
            raise ValueError(f"early_stop_warmup: must be an integer >= 0, got {self.early_stop_warmup!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        for key in ("sampler_options", "pruner_options"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key}: expected a mapping")

    @property
    def multi_objective(self) -> bool:
        """Whether a cost metric is optimised against accuracy."""
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        """Optuna's directions, one per objective."""
        return ["maximize"] + ["minimize"] * (len(self.objectives) - 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | None = None) -> StudyConfig:
        """Validates a study mapping.

        Raises:
            ValueError: Naming the bad key and what is allowed.
        """
        allowed = tuple(f for f in _fields(cls) if f != "path")
        _check_keys("", data, allowed)
        if "name" not in data:
            raise ValueError("name: missing; every study needs a name")
        values = dict(data)
        values["data"] = _section(DataConfig, "data", values.get("data", {}))
        values["train"] = _section(TrainConfig, "train", values.get("train", {}))
        values["constraints"] = _section(Constraints, "constraints", values.get("constraints", {}))
        values["ray"] = _section(RayConfig, "ray", values.get("ray", {}))
        for key in ("sampler", "pruner"):
            spec = values.get(key)
            if isinstance(spec, Mapping):  # sampler: {name: tpe, n_startup_trials: 5}
                spec = dict(spec)
                if "name" not in spec:
                    raise ValueError(f"{key}.name: missing; allowed: {', '.join(SAMPLERS if key == 'sampler' else PRUNERS)}")
                values[key] = spec.pop("name")
                values[f"{key}_options"] = {**values.get(f"{key}_options", {}), **spec}
        if isinstance(values.get("objectives"), str):
            values["objectives"] = [values["objectives"]]
        return cls(**values, path=path)

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        """Reads and validates a study file; errors name the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: study file not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
        try:
            return cls.from_dict(data or {}, path=str(path.resolve()))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_dict`` accepts."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        d["data"] = self.data.to_dict()
        d["train"] = _plain(dataclasses.asdict(self.train))
        d["constraints"] = dataclasses.asdict(self.constraints)
        d["ray"] = dataclasses.asdict(self.ray)
        d["objectives"] = list(self.objectives)
        d["sampler_options"] = dict(self.sampler_options)
        d["pruner_options"] = dict(self.pruner_options)
        return _plain(d)

    def space_path(self) -> str:
        """The search space reference, resolved against the study file's folder when it is a path."""
        if self.path and (self.space.endswith((".yaml", ".yml")) or "/" in self.space):
            candidate = Path(self.path).parent / self.space
            if candidate.exists():
                return str(candidate)
        return self.space


def _section(cls: type, name: str, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
    if hasattr(cls, "from_dict"):
        try:
            return cls.from_dict(value)
        except ValueError as error:
            message = str(error)
            raise ValueError(message if message.startswith(f"{name}.") else f"{name}: {message}") from None
    _check_keys(name, value, _fields(cls))
    return cls(**value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve_device(name: str) -> torch.device:
    """Maps "auto" to CUDA when available; refuses "cuda" on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


@dataclass
class TrialRecord:
    """What one trial produced; stored as Optuna user attributes and as ``record.json``.

    Attributes:
        number: The trial number.
        status: "completed", "pruned", "stopped", "infeasible", "diverged", "oom" or "failed".
        failure_reason: Why a trial did not complete, in one line.
        architecture: The candidate's ``Architecture.to_dict()``.
        train: The candidate's training settings.
        val_accuracy: Best validation accuracy over the epochs trained.
        epochs_trained: Epochs actually trained (a pruned trial trains fewer).
        epochs_planned: The full budget.
        history: Per-epoch metrics.
        cost: Parameters, FLOPs, latency and memory (``Cost.to_dict()``).
        constraints: Optuna constraint values (feasible when all ``<= 0``).
        max_stable_step: The linearised stability bound on h of the initial weights (the
            smallest over the units; see ``pdenas.families.stability_report``).
        seconds: Wall time of the trial.
    """

    number: int
    status: str = "running"
    failure_reason: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    val_accuracy: float | None = None
    epochs_trained: int = 0
    epochs_planned: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    constraints: list[float] = field(default_factory=list)
    max_stable_step: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return _plain(dataclasses.asdict(self))

    def objective_values(self, objectives: tuple[str, ...]) -> list[float]:
        """The values to tell the backend, in the order of ``objectives``."""
        values = []
        for name in objectives:
            value = self.val_accuracy if name == "val_accuracy" else self.cost.get(name)
            values.append(float("nan") if value is None else float(value))
        return values


def trial_dir(run_dir: str | Path, number: int) -> Path:
    """The folder of trial ``number`` in a run folder."""
    return Path(run_dir) / "trials" / str(number)


Report = Callable[[int, Mapping[str, float]], bool]
"""Called after each epoch with (epoch, metrics); returns True to stop the trial (pruning)."""


def run_candidate(
    number: int,
    arch: Architecture,
    train: TrainConfig,
    config: StudyConfig,
    data: DataSplits,
    device: torch.device,
    run_dir: str | Path,
    report: Report | None = None,
    on_cost: Callable[[TrialRecord], None] | None = None,
) -> TrialRecord:
    """Builds, measures, trains and saves one candidate; never raises for a bad candidate.

    Args:
        number: Trial number (also offsets the seed of the initial weights).
        arch: The candidate.
        train: Its training settings.
        config: The study.
        data: Data splits on ``device``.
        device: Where to train.
        run_dir: The run folder; weights and record go to ``trials/<number>/``.
        report: Per-epoch callback; returning True stops the trial as pruned.
        on_cost: Called with the record once its cost is known (before training).

    Returns:
        The trial's record (also written to ``trials/<number>/record.json``).
    """
    from pdenas.cost import measure_cost
    from pdenas.families import stability_report
    from pdenas.network import build_model
    from pdenas.train import Diverged, OutOfMemory, fit

    start = time.perf_counter()
    record = TrialRecord(number=number, architecture=arch.to_dict(),
                         train=_plain(dataclasses.asdict(train)), epochs_planned=train.epochs)
    folder = trial_dir(run_dir, number)
    try:
        torch.manual_seed(config.seed * 100_003 + number)
        model = build_model(arch).to(device)
        shape = (arch.in_channels, *data.image_size)
        record.cost = measure_cost(model, shape, train.batch_size, device,
                                   repeats=config.latency_repeats).to_dict()
        record.constraints = config.constraints.violations(record.cost)
        record.max_stable_step = min(row["max_stable_step"] for row in stability_report(model))
        if on_cost is not None:
            on_cost(record)
        if config.constraints.skip_infeasible and any(v > 0 for v in record.constraints):
            record.status = "infeasible"
            record.failure_reason = "breaks a cost limit: " + _describe_violations(config, record)
            return record
        result = fit(model, data, train, device, callback=report, seed=config.seed + number)
        record.history = [_plain(h) for h in result.history]
        record.epochs_trained = result.epochs_trained
        record.val_accuracy = float(result.best_val_accuracy) if result.history else None
        record.status = "pruned" if result.stopped else "completed"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(result.best_state, folder / "model.pt")
    except (Diverged, OutOfMemory) as error:
        record.status = "diverged" if isinstance(error, Diverged) else "oom"
        record.failure_reason = str(error)
        record.history = [_plain(h) for h in error.history]  # the epochs completed before
        record.epochs_trained = len(record.history)
    except torch.OutOfMemoryError as error:  # while building or measuring, before training
        record.status = "oom"
        record.failure_reason = f"out of memory before training: {str(error).splitlines()[0]}"
    except (RuntimeError, ValueError) as error:
        record.status = "failed"
        record.failure_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        record.seconds = time.perf_counter() - start
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "architecture.json").write_text(json.dumps(arch.to_dict(), indent=2))
        (folder / "record.json").write_text(json.dumps(record.to_dict(), indent=2))
    return record


def _describe_violations(config: StudyConfig, record: TrialRecord) -> str:
    c, cost = config.constraints, record.cost
    parts = []
    if c.max_params is not None and cost["params"] > c.max_params:
        parts.append(f"params {cost['params']:,} > {c.max_params:,}")
    if c.max_flops is not None and cost["flops"] > c.max_flops:
        parts.append(f"flops {cost['flops']:,} > {c.max_flops:,}")
    if c.max_latency_ms is not None and cost["latency_ms"] > c.max_latency_ms:
        parts.append(f"latency {cost['latency_ms']:.2f} ms > {c.max_latency_ms} ms")
    return "; ".join(parts)
