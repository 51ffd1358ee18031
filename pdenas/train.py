"""Training and evaluation of one candidate network: `TrainConfig`, `fit` and `evaluate`.

`fit` trains with the paper's recipe as options (SGD with momentum, step drops, weight decay, a
smoothness-in-time regulariser, box clipping of the weights after each step), tracks the
best-validation weights, and reports each epoch to a callback that may stop the run (pruning).
With `TrainConfig.multilevel` it trains coarse-to-fine: at a fraction of the depth first, then
deepened in time level by level (`pdenas.multilevel`). It knows nothing of Optuna or Ray. A
non-finite loss raises `Diverged`, running out of memory raises `OutOfMemory`; both carry a
one-line reason for the trial record.

Batches stay on the device: losses and accuracies are accumulated there and read once per epoch
(plus one small finiteness check every `CHECK_EVERY` steps), so training does not stall on syncs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pdenas._config import INTERNAL, Config, ConfigError
from pdenas._interrupt import raise_if_interrupted
from pdenas.errors import InputError
from pdenas.families._stability import TIME_SMOOTHNESS_FORMS
from pdenas.runs import TrialStatus
from pdenas.multilevel import Level, MultilevelConfig, pde_units, resample_model

__all__ = [
    "CHECK_EVERY",
    "Diverged",
    "FitResult",
    "OutOfMemory",
    "TrainConfig",
    "TimedOut",
    "TrainingFailed",
    "amp_mode",
    "estimate_seconds",
    "evaluate",
    "final_depth_state",
    "fit",
    "learning_rate",
    "learning_rates",
    "weight_decay_groups",
]

logger = logging.getLogger(__name__)

CHECK_EVERY = 50
"""Training steps between two host reads of the divergence flag (besides the end of an epoch)."""

OPTIMIZERS = ("sgd", "adamw")
MOMENTUM_FORMS = ("torch", "meganet")
KEEPS = ("best", "last")
SCHEDULES = ("cosine", "step", "constant")
SCHEDULE_INTERVALS = ("epoch", "step")
AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_EVAL_BATCH = 512
FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose runs use torch's fused optimiser step (``fused=True``); elsewhere torch's
default (``foreach``)."""
MAX_EPOCHS = 10_000
"""The most epochs a trial may train (the per-epoch schedule is built up front)."""

Callback = Callable[[int, dict[str, float]], bool | None]


class Split(Protocol):
    """What `fit` and `evaluate` need of a data split (`pdenas.data.TensorSplit`)."""

    x: torch.Tensor
    y: torch.Tensor


class Splits(Protocol):
    """What `fit` needs of the data (`pdenas.data.DataSplits`)."""

    train: Split
    val: Split


class TrainingFailed(RuntimeError):
    """A training run that could not finish.

    Attributes:
        reason: One line for the trial record.
        history: The metrics of the epochs completed before the failure (`fit` fills it in).
    """

    status = TrialStatus.FAILED
    """The trial status this failure records."""

    def __init__(self, reason: str, history: Sequence[Mapping[str, float]] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = [dict(h) for h in history]


class Diverged(TrainingFailed):
    """The training or validation loss became non-finite."""

    status = TrialStatus.DIVERGED


class TimedOut(TrainingFailed):
    """The run reached its deadline (checked before every training step). ``fit`` attaches the
    run so far as ``result`` (its best completed epoch's weights included)."""

    status = TrialStatus.TIMEOUT


class OutOfMemory(TrainingFailed):
    """The device (or host) ran out of memory during training or evaluation."""

    status = TrialStatus.OOM


COMPILE_ENV = "PDENAS_COMPILE"
"""Set to 1 to train through ``torch.compile`` (``TrainConfig.compile``)."""


def compile_default() -> bool:
    """Whether ``PDENAS_COMPILE`` asks for ``torch.compile`` (1, true, yes; default off).

    Raises:
        InputError: Another value.
    """
    import os

    text = os.environ.get(COMPILE_ENV, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise InputError(f"{COMPILE_ENV}: got {text!r}; allowed: 1 or 0")


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train one candidate.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Training images per step.
        optimizer: "sgd" (momentum, optionally Nesterov) or "adamw".
        lr: The peak learning rate.
        momentum: SGD momentum (ignored by AdamW).
        momentum_form: Where the learning rate enters SGD's momentum: "torch" (
            ``v = μ v + g``, ``θ -= lr v``: a change of the rate acts at once) or "meganet"
            (Meganet.m's ``sgd``: ``v = lr g + μ v``, ``θ -= v``: the velocity keeps the old rate's
            steps and forgets them at the rate μ). The two are the same while the rate is
            constant; "meganet" needs optimizer "sgd" without Nesterov. Not a study key: None
            takes it from ``meganet``.
        nesterov: Nesterov momentum for SGD (needs momentum > 0; not a study key).
        weight_decay: L2 penalty for SGD, decoupled weight decay for AdamW; on the convolution
            kernels and the classifier only, not on the normalisations' scales and shifts
            (``weight_decay_groups``, as Meganet.m's ``cnnDriver``).
        schedule: The learning rate over the run: "cosine" (to zero at the end), "step" (times
            ``gamma`` at each milestone) or "constant".
        schedule_interval: How often the schedule moves: "epoch" (one rate per epoch, as the
            paper's drops) or "step" (after every training step, as Lightning's ``interval:
            step`` or timm's ``sched_on_updates``: a cosine then reaches zero at the last step
            instead of stopping at the last epoch's rate, ``lr * (1 - cos(pi / epochs)) / 2``).
        warmup_epochs: Epochs (fractions allowed) over which the rate rises linearly from
            ``lr / (warm-up steps)`` to the schedule's, step by step; 0 for none.
        milestones: For "step": the epochs of the drops as increasing fractions of ``epochs`` in
            (0, 1); the paper's 60/20/20 epochs is (0.6, 0.8).
        gamma: Factor of each drop (the paper: 0.2).
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        clip_weights: Box-clip every parameter to [-bound, bound] after each step (the paper:
            1.0), or None for no clipping.
        time_smoothness: Weight α of the smoothness in time of the per-step weights added to the
            loss (``families.time_smoothness``; the paper: about 2e-4); 0 turns it off.
        time_smoothness_form: "total_variation" (the default): ``α Σ φ(θ_{j+1} - θ_j)``, the
            total variation of the weights in time, the same at every h, so refining a
            network (multilevel training, ``deepen``) or varying h in a search leaves its
            meaning unchanged; or "meganet": Meganet.m's ``l1Reg`` of ``opTimeDer``,
            ``α Σ φ((θ_{j+1} - θ_j) / h)``, for reproducing the authors' runs (equal at
            h = 1). ``φ(d) = sqrt(d² + eps) - sqrt(eps)``. Not a study key: None takes it from
            ``meganet``.
        meganet: Meganet.m's forms where pdenas's differ, together, for reproducing the
            authors' runs: its SGD momentum update (``momentum_form: meganet``) and its
            time-smoothness regulariser (``time_smoothness_form: meganet``); false (the default):
            torch's momentum and the total variation in time, the same at every h.
        augment: Random flips (where the data allows) and padded crops of training batches.
        amp: Mixed precision: "off", "bf16", or "fp16" (with a gradient scaler). On CUDA as
            asked; on the CPU "bf16" autocasts where the processor computes bf16 natively (AMX or
            AVX512-BF16, as oneDNN reports it; 1.4-3 times the images per second of fp32 on
            one thread, ``benchmarks/cpu_bf16.md``) and is off elsewhere, where it would be
            emulated and slower; "fp16" is CUDA only (``amp_mode``).
        channels_last: Channels-last memory format for the model and batches (None: on, on
            every device). Not a study key: it was as fast or faster on every net measured, on
            the CPU as well (``benchmarks/channels_last.md``: 0.71-1.01 of the time).
        grad_clip: Clip the global gradient norm to this value, or None.
        compile: Train through ``torch.compile(model)`` (validation stays eager). The first
            training step includes the compilation; its seconds are recorded as the first
            epoch's ``compile_seconds`` (``fit``'s history, the trial's record). Pays off for
            long runs on a GPU; needs a C++ compiler on the CPU. A choice about the machine,
            not the study: ``PDENAS_COMPILE=1`` turns it on (not a study key).
        keep: Which weights a run ends with: "best" (the best-validation epoch's, the default)
            or "last" (the last iterate, as Meganet.m's drivers without a validation set; with
            ``data.val_fraction: 0``, whose "validation" split is the test split, choosing
            the best epoch would choose on the test set). With "last" the run's
            ``best_val_accuracy`` is the last epoch's.
        multilevel: Coarse-to-fine training (``pdenas.multilevel.MultilevelConfig``; from
            plain data ``{levels: 3, factor: 2, shares: null}``), or None to train at the
            model's depth throughout.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    momentum_form: str | None = field(default=None, metadata=INTERNAL)
    nesterov: bool = field(default=False, metadata=INTERNAL)
    weight_decay: float = 2e-4
    schedule: str = "cosine"
    schedule_interval: str = "epoch"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.2
    label_smoothing: float = 0.0
    clip_weights: float | None = 1.0
    time_smoothness: float = 2e-4
    time_smoothness_form: str | None = field(default=None, metadata=INTERNAL)
    meganet: bool = False
    augment: bool = True
    amp: str = "off"
    channels_last: bool | None = field(default=None, metadata=INTERNAL)
    grad_clip: float | None = None
    compile: bool = field(default_factory=lambda: compile_default(), metadata=INTERNAL)
    keep: str = "best"
    multilevel: MultilevelConfig | None = None

    SECTION = "train"
    REMOVED: ClassVar[Mapping[str, str]] = {
        "compile": f"set the environment variable {COMPILE_ENV}=1 on the machines where "
                   "compiling pays (long GPU runs)",
        "channels_last": "always on: as fast or faster on every net measured "
                         "(benchmarks/channels_last.md)",
        **{key: "use train.meganet: true for Meganet.m's momentum update and time-smoothness "
                "regulariser together (false: torch's and the total variation in time)"
           for key in ("momentum_form", "time_smoothness_form")},
        "nesterov": "pdenas's SGD is plain momentum, as the paper's and Meganet.m's (the Python "
                    "API's TrainConfig(nesterov=True) still has it)"}

    def __post_init__(self) -> None:
        super().__post_init__()
        forms = ("meganet", "meganet") if self.meganet else ("torch", "total_variation")
        for name, form in zip(("momentum_form", "time_smoothness_form"), forms):
            if getattr(self, name) is None:
                object.__setattr__(self, name, form)
        req = self.require
        req("epochs", 1 <= self.epochs <= MAX_EPOCHS, f"an integer >= 1 and <= {MAX_EPOCHS}")
        req("batch_size", 1 <= self.batch_size <= 65_536, "an integer >= 1 and <= 65536")
        req("optimizer", self.optimizer in OPTIMIZERS, " | ".join(OPTIMIZERS))
        req("schedule", self.schedule in SCHEDULES, " | ".join(SCHEDULES))
        req("schedule_interval", self.schedule_interval in SCHEDULE_INTERVALS,
            " | ".join(SCHEDULE_INTERVALS))
        req("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs,
            "a number >= 0 and <= train.epochs")
        req("amp", self.amp in AMP_MODES, " | ".join(AMP_MODES))
        req("keep", self.keep in KEEPS, " | ".join(KEEPS))
        req("lr", self.lr > 0, "a finite number > 0")
        req("momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        req("nesterov", self.momentum > 0 or not self.nesterov, "false when momentum is 0")
        req("momentum_form", self.momentum_form in MOMENTUM_FORMS, " | ".join(MOMENTUM_FORMS))
        req("momentum_form", self.momentum_form == "torch" or (
            self.optimizer == "sgd" and not self.nesterov),
            "torch, or meganet with optimizer sgd and nesterov false")
        req("weight_decay", self.weight_decay >= 0, "a number >= 0")
        req("gamma", 0 < self.gamma <= 1, "a number in (0, 1]")
        req("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)")
        req("time_smoothness", self.time_smoothness >= 0, "a number >= 0")
        req("time_smoothness_form", self.time_smoothness_form in TIME_SMOOTHNESS_FORMS,
            " | ".join(TIME_SMOOTHNESS_FORMS))
        ms = self.milestones
        ok = all(0 < m < 1 for m in ms) and all(a < b for a, b in zip(ms, ms[1:]))
        req("milestones", ok, "increasing fractions of the epochs in (0, 1)")
        for name in ("clip_weights", "grad_clip"):
            value = getattr(self, name)
            req(name, value is None or value > 0, "a number > 0 or null")
        if isinstance(self.multilevel, Mapping):
            object.__setattr__(self, "multilevel", MultilevelConfig.from_dict(self.multilevel))
        req("multilevel", self.multilevel is None or isinstance(self.multilevel, MultilevelConfig),
            "a mapping with levels, factor, shares, or null")
        if self.multilevel is not None:
            self.multilevel.epochs_per_level(self.epochs)  # at least one epoch per level

    @classmethod
    def from_dict(cls, data: Any, *, section: str | None = None) -> TrainConfig:
        """Builds a validated config from plain data (a YAML/JSON mapping).

        Args:
            data: Field names to values; missing fields keep their defaults. ``amp`` also accepts
                true (bf16) and false/null (off); ``milestones`` any sequence of numbers.
            section: The section's dotted name in its file (default "train").

        Raises:
            ValueError: An unknown key or a bad value, naming ``train.KEY`` and what is allowed.
        """
        if isinstance(data, Mapping) and "amp" in data and not isinstance(data["amp"], str):
            amp = data["amp"]
            if amp not in (True, False, None):
                raise ConfigError(f"train.amp: got {amp!r}; allowed: "
                                  f"{' | '.join(AMP_MODES)} | true | false")
            data = {**data, "amp": "bf16" if amp else "off"}
        return super().from_dict(data, section=section)


def learning_rate(config: TrainConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1
                  ) -> float:
    """The learning rate of one training step.

    Args:
        config: The training config (``schedule``, ``schedule_interval``, ``warmup_epochs``).
        epoch: The epoch, from 0.
        step: The step within the epoch, from 0.
        steps_per_epoch: Training steps per epoch.

    Returns:
        The schedule's rate at the epoch's start (``schedule_interval: epoch``) or at this step
        (``step``), times the warm-up factor ``min(1, (steps so far + 1) / warm-up steps)``.
    """
    n = config.epochs
    progress = epoch + (step / steps_per_epoch if config.schedule_interval == "step" else 0)
    if config.schedule == "constant":
        rate = config.lr
    elif config.schedule == "cosine":
        rate = config.lr * 0.5 * (1 + math.cos(math.pi * progress / n))
    else:
        drops = sum(progress >= round(m * n) for m in config.milestones)
        rate = config.lr * config.gamma ** drops
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0:
        rate *= min(1.0, (epoch * steps_per_epoch + step + 1) / warmup_steps)
    return rate


def learning_rates(config: TrainConfig, steps_per_epoch: int = 1) -> list[float]:
    """The learning rate of each epoch's first step (index 0 is the first epoch).

    Args:
        config: The training config.
        steps_per_epoch: Training steps per epoch (what warm-up is counted in).

    Returns:
        ``config.epochs`` learning rates.
    """
    return [learning_rate(config, e, 0, steps_per_epoch) for e in range(config.epochs)]


@dataclass
class FitResult:
    """What a training run produced.

    Attributes:
        history: One dict per epoch: epoch (from 1), lr, train_loss, train_accuracy, val_loss,
            val_accuracy, seconds; with multilevel training also level (from 1) and depth (the
            time steps of all units together).
        best_val_accuracy: The best validation accuracy (ties broken by the lower loss); with
            multilevel training among the epochs of the last level trained (the final one
            unless the callback stopped the run earlier). With ``keep: last``: the last
            epoch's, and the best_* fields below describe the last epoch.
        best_val_loss: The validation loss of that epoch.
        best_epoch: The epoch of the best validation accuracy (from 1).
        best_state: The state_dict of the best-validation weights, on the CPU.
        epochs_trained: Epochs completed.
        stopped: True when the callback asked to stop.
        seconds: Wall time of the whole run (with multilevel training: all levels and the
            resampling between them).
        levels: With multilevel training, one dict per level started: level, depths (per unit),
            step_sizes (per unit), first_epoch, epochs (trained), seconds; else empty.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_accuracy: float = -math.inf
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    epochs_trained: int = 0
    stopped: bool = False
    seconds: float = 0.0
    levels: list[dict[str, Any]] = field(default_factory=list)


def fit(
    model: nn.Module,
    data: Splits,
    config: TrainConfig,
    device: torch.device | str,
    callback: Callback | None = None,
    seed: int = 0,
    *,
    restore_best: bool = True,
    deadline: float | None = None,
    result: FitResult | None = None,
) -> FitResult:
    """Trains a model and keeps its best-validation weights.

    Args:
        model: The network (initialised by the caller, who seeds its initialisation); moved to
            ``device`` (and to channels-last memory format when that is on).
        data: The splits (``train`` and ``val``); ``data.flip`` (when present) says whether
            horizontal flips preserve labels.
        config: How to train.
        device: Where to train.
        callback: Called after each epoch with (epoch from 1, that epoch's metrics); returning
            True stops training (pruning).
        seed: Seeds the batch order and augmentation.
        restore_best: Load the best-validation weights into the model at the end.
        deadline: A ``time.monotonic()`` value; training stops before the first step after it
            with ``TimedOut`` (the model then holds the best completed epoch's weights).
        result: Filled in place as training goes (history, best weights as a CPU copy) and
            returned; a watchdog thread may read it while a step hangs (default: a new one).

    With ``config.multilevel`` the model is first resampled to the coarsest level's depths
    (step j of a coarse unit takes the weights of the fine step at its start time), and that
    copy is trained and deepened level by level; ``model`` itself is only written at the end,
    with the final depths' best weights (or, with ``restore_best=False``, the last ones). The
    best-validation state is tracked among the last level's epochs only (coarser levels have
    other shapes and other fidelity); a run stopped in a coarser level reports that level's best
    and returns its weights deepened to the final depths.

    Returns:
        The history, the best validation accuracy and its weights.

    Raises:
        Diverged: The training loss (checked every `CHECK_EVERY` steps and at the end of each
            epoch) or the validation loss became non-finite.
        OutOfMemory: The device or host ran out of memory.
        Both carry the completed epochs' metrics as ``history``.
    """
    result = FitResult() if result is None else result
    try:
        return _fit(model, data, config, torch.device(device), callback, seed, restore_best, result,
                    deadline)
    except TrainingFailed as failure:
        failure.history = list(result.history)
        if isinstance(failure, TimedOut):
            failure.result = result
            result.best_state = final_depth_state(result, model, config)
            if restore_best and result.best_state:
                model.load_state_dict(result.best_state)
        raise


def final_depth_state(result: FitResult, model: nn.Module, config: TrainConfig
                      ) -> dict[str, torch.Tensor]:
    """The best weights of a run that stopped early, or {} when it stopped in a coarser level
    of coarse-to-fine training (the weights have another depth than ``model``)."""
    levels = result.levels
    if levels and config.multilevel is not None and tuple(levels[-1]["depths"]) != tuple(
            u.depth for u in pde_units(model)):
        return {}
    return result.best_state


def _fit(
    model: nn.Module,
    data: Splits,
    config: TrainConfig,
    device: torch.device,
    callback: Callback | None,
    seed: int,
    restore_best: bool,
    result: FitResult,
    deadline: float | None = None,
) -> FitResult:
    if len(data.val.y) == 0:
        raise InputError("fit needs a non-empty validation split")
    cuda = device.type == "cuda"
    channels_last = True if config.channels_last is None else config.channels_last
    amp = amp_mode(config.amp, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    work = model  # the network being trained: a resampled copy of model in multilevel runs
    plan: list[Level] = []
    if config.multilevel is not None:
        plan = config.multilevel.plan([u.depth for u in pde_units(model)], config.epochs)
    level: Level | None = None
    step: _Step | None = None
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    steps_per_epoch = _steps_per_epoch(len(data.train.y), config.batch_size)
    for epoch in range(1, config.epochs + 1):
        lr = learning_rate(config, epoch - 1, 0, steps_per_epoch)
        epoch_start = time.perf_counter()
        if plan and (level is None or epoch == level.first_epoch + level.epochs):
            level = plan[0 if level is None else level.index]
            work = _start_level(resample_model(work, level.depths), level, result, channels_last)
            level_start, step = epoch_start, None
        if step is None:  # once, or again for each level's new parameters (fresh state)
            step = _Step(work, config, device, amp, channels_last)
        batches = _until(deadline, _training_batches(data, config, generator), epoch)
        with _out_of_memory(f"at epoch {epoch}"):
            train_loss, train_accuracy = step.epoch(
                batches, epoch,
                lambda i, e=epoch - 1: learning_rate(config, e, i, steps_per_epoch))
            val_loss, val_accuracy = evaluate(
                work, data.val, device, amp=amp, channels_last=channels_last
            )
        if not math.isfinite(val_loss):
            raise Diverged(f"diverged: non-finite validation loss at epoch {epoch}")
        metrics = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - epoch_start,
        }
        if step.compile_seconds is not None and not step.compile_reported:
            metrics["compile_seconds"] = step.compile_seconds
            step.compile_reported = True
        if level is not None:
            metrics.update(level=level.index, depth=sum(level.depths))
        result.history.append(metrics)
        result.epochs_trained = epoch
        logger.info("epoch %d: %s", epoch, metrics)
        if config.keep == "last" or (
                (val_accuracy, -val_loss) > (result.best_val_accuracy, -result.best_val_loss)):
            result.best_val_accuracy, result.best_val_loss = val_accuracy, val_loss
            result.best_epoch = epoch
            result.best_state = _cpu_state(work)
        if level is not None:
            result.levels[-1]["epochs"] += 1
            result.levels[-1]["seconds"] = time.perf_counter() - level_start
        if callback is not None and callback(epoch, dict(metrics)):
            result.stopped = True
            break
    if plan:
        work = _finish_levels(work, plan[-1].depths, result)
    if restore_best and result.best_state:
        model.load_state_dict(result.best_state)
    elif work is not model:
        model.load_state_dict(work.state_dict())
    model.train(work.training)
    result.seconds = time.perf_counter() - start
    return result


def _steps_per_epoch(images: int, batch_size: int) -> int:
    """Training steps per epoch (``_training_batches`` drops a last partial batch)."""
    return max(1, images // batch_size)


def _until(deadline: float | None, batches: Iterable[Any], epoch: int) -> Iterator[Any]:
    """``batches``, ending with ``TimedOut`` at the first step after ``deadline``, and with
    ``KeyboardInterrupt`` at the first step after a Ctrl-C that was swallowed elsewhere
    (``pdenas._interrupt``)."""
    for step, batch in enumerate(batches, start=1):
        raise_if_interrupted()
        if deadline is not None and time.monotonic() >= deadline:
            raise TimedOut(f"timeout: reached the time limit at epoch {epoch} step {step}")
        yield batch


def estimate_seconds(model: nn.Module, data: Splits, config: TrainConfig,
                     device: torch.device | str, *, steps: int = 3) -> float:
    """Predicts the wall seconds of ``fit(model, data, config, device)`` from a short calibration.

    Runs three timed groups of ``steps`` real training steps each (the run's optimiser,
    regulariser, clipping and precision) on a copy of the model after one untimed warm-up step,
    and times one validation batch; the prediction scales the median group and the batch to the
    whole run (plus, with ``config.compile``, the warm-up's
    compilation, which the run repeats). The model is left as it was.

    Args:
        steps: Training steps in each of the three timed groups.

    Returns:
        The predicted seconds (training steps plus validation passes, all epochs).
    """
    import copy

    device = torch.device(device)
    cuda = device.type == "cuda"
    channels_last = True if config.channels_last is None else config.channels_last
    amp = amp_mode(config.amp, device)
    probe = copy.deepcopy(model).to(device)
    if channels_last:
        probe.to(memory_format=torch.channels_last)
    step = _Step(probe, config, device, amp, channels_last)
    size = min(config.batch_size, len(data.train.y))
    batch = (data.train.x[:size], data.train.y[:size])
    step.epoch([batch], 1)  # warm-up: allocator, kernels, lazy state
    _sync(device)
    times = []
    # The median of three groups: one stall (another process on the core) is not taken for the
    # network's speed. Groups, not single steps: each epoch() call ends with a few host syncs,
    # which a real epoch makes once every 50 steps.
    for _ in range(3):
        start = time.perf_counter()
        step.epoch([batch] * steps, 1)
        _sync(device)
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times) / steps
    val_size = min(_EVAL_BATCH, len(data.val.y))
    start = time.perf_counter()
    evaluate(probe, type(data.val)(data.val.x[:val_size], data.val.y[:val_size]), device,
             amp=amp, channels_last=channels_last)
    per_eval = time.perf_counter() - start
    train_steps = _steps_per_epoch(len(data.train.y), config.batch_size)
    eval_batches = -(-len(data.val.y) // _EVAL_BATCH)
    compiling = step.compile_seconds or 0.0  # the run compiles its own model again
    return compiling + config.epochs * (train_steps * per_step + eval_batches * per_eval)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in model.state_dict().items()
    }


def _start_level(
    work: nn.Module, level: Level, result: FitResult, channels_last: bool
) -> nn.Module:
    """Enters a multilevel run's level: the resampled network, a fresh best-state tracking (the
    best is kept per level), and the level's entry in ``result.levels``."""
    if channels_last:
        work.to(memory_format=torch.channels_last)
    result.best_val_accuracy, result.best_val_loss = -math.inf, math.inf
    result.best_epoch, result.best_state = 0, {}
    units = pde_units(work)
    result.levels.append({
        "level": level.index, "depths": list(level.depths),
        "step_sizes": [u.step_size for u in units], "first_epoch": level.first_epoch,
        "epochs": 0, "seconds": 0.0,
    })
    return work


def _finish_levels(work: nn.Module, final: tuple[int, ...], result: FitResult) -> nn.Module:
    """Brings a multilevel run that stopped before its last level to the final depths: the last
    weights and the best state are deepened. Returns the network at the final depths."""
    if tuple(u.depth for u in pde_units(work)) == final:
        return work
    last = resample_model(work, final)
    if result.best_state:
        work.load_state_dict(result.best_state)
        result.best_state = _cpu_state(resample_model(work, final))
    return last


def evaluate(
    model: nn.Module,
    split: Split,
    device: torch.device | str,
    batch_size: int = _EVAL_BATCH,
    *,
    amp: str = "off",
    channels_last: bool = False,
) -> tuple[float, float]:
    """Computes the mean cross-entropy and the accuracy of a model on a split.

    Args:
        model: The network, on ``device``; evaluated in eval mode, then put back in its mode.
        split: The images ``x`` and labels ``y``.
        device: Where to evaluate.
        batch_size: Images per forward pass.
        amp: "off", "bf16" or "fp16" autocast, as ``amp_mode`` gives it for ``device``.
        channels_last: Feed batches in channels-last memory format.

    Returns:
        (loss, accuracy); the loss is NaN when the model's outputs are non-finite.

    Raises:
        ValueError: The split is empty.
    """
    n = len(split.y)
    if n == 0:
        raise ValueError("cannot evaluate on an empty split")
    device = torch.device(device)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    try:
        with torch.no_grad(), _autocast(device, amp):
            for i in range(0, n, batch_size):
                batch = split.x[i : i + batch_size], split.y[i : i + batch_size]
                x, y = _to_device(*batch, device, channels_last)
                logits = model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
    finally:
        for module, training in modes.items():
            module.train(training)
    return loss_sum.item() / n, correct.item() / n


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups: weight decay on all but the normalisations' parameters.

    Meganet.m's ``cnnDriver`` decays the kernels of the opening, the units and the connectors
    (``tikhonovReg`` / ``l1Reg`` with ``regD`` = 1 on a kernel's entries, 0 on its norm layer's)
    and the classifier ``W`` (bias column included), but not the scales and shifts of the
    normalisation layers. Here: every parameter owned by a batch/group/layer norm or by a
    ``families`` normalisation (TV's or the bare affine's scale and shift) gets no decay; the
    rest (convolution kernels, the symmetric layers' K, the classifier's weight and bias) does.

    Args:
        model: The network.
        weight_decay: The decay of the first group.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others,
        "weight_decay": 0.0}]``, each parameter once, in ``model.parameters()`` order; an empty
        group is left out.
    """
    from pdenas.families._layers import AffineOnly

    norm_types = (*_NORM_TYPES, AffineOnly)
    undecayed = {
        id(p)
        for m in model.modules()
        if isinstance(m, norm_types)
        for p in m.parameters(recurse=False)
    }
    decayed, others = [], []
    for p in model.parameters():
        (others if id(p) in undecayed else decayed).append(p)
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class _Step:
    """The optimiser, scaler, regulariser and clipping of one run; trains one epoch at a time."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device,
        amp: str,
        channels_last: bool,
    ) -> None:
        self.model, self.config, self.device = model, config, device
        self.amp, self.channels_last = amp, channels_last
        params = weight_decay_groups(model, config.weight_decay)
        # torch's fused update (one kernel for all parameters) where it has one: the same update,
        # 0-8 % shorter trials of the CPU study's nets (benchmarks/fused_optimizer.md).
        fused = True if device.type in FUSED_DEVICES else None
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                weight_decay=config.weight_decay, fused=fused,
            )
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
            )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        # The compiled module shares the model's parameters; the regulariser and clipping work
        # on those. compile_seconds: the first compiled step's wall time (compiling included).
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if config.compile else model)
        self.compile_seconds: float | None = None
        self.compile_reported = False
        if config.clip_weights is not None or config.time_smoothness > 0:
            from pdenas.families import clip_weights_, time_smoothness
            from pdenas.families._stability import consecutive_step_parameters

            self.clip_weights_, self.time_smoothness = clip_weights_, time_smoothness
            self.step_pairs = consecutive_step_parameters(model)  # once per run, not per step

    def epoch(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        epoch: int,
        rate: Callable[[int], float] | None = None,
    ) -> tuple[float, float]:
        """Trains one epoch; returns (mean training loss, training accuracy).

        Args:
            batches: The epoch's training batches.
            epoch: The epoch, from 1 (for messages).
            rate: The learning rate of each step (from 0), or None to keep the optimiser's.
        """
        config, model = self.config, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for step, (x, y) in enumerate(batches, start=1):
            if rate is not None:
                lr = rate(step - 1)
                for group in self.optimizer.param_groups:
                    if config.momentum_form == "meganet" and group["lr"] != lr:
                        _rescale_velocity(self.optimizer, group, group["lr"] / lr)
                    group["lr"] = lr
            x, y = _to_device(x, y, self.device, self.channels_last)
            timing = config.compile and self.compile_seconds is None
            if timing:
                _sync(self.device)
                compile_start = time.perf_counter()
            with _autocast(self.device, self.amp):
                logits = self.forward(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                total = loss
                if config.time_smoothness > 0:
                    total = total + config.time_smoothness * self.time_smoothness(
                        model, self.step_pairs, form=config.time_smoothness_form
                    )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if config.clip_weights is not None:
                self.clip_weights_(model, config.clip_weights)
            if timing:
                _sync(self.device)
                self.compile_seconds = time.perf_counter() - compile_start
            detached = total.detach()
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(detached), step, first_bad)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % CHECK_EVERY == 0:
                _raise_if_diverged(first_bad, epoch)
        _raise_if_diverged(first_bad, epoch)
        if seen == 0:
            raise ValueError("the training split gave no batches")
        return loss_sum.item() / seen, correct.item() / seen


def _rescale_velocity(optimizer: torch.optim.Optimizer, group: dict[str, Any],
                      ratio: float) -> None:
    """Meganet.m's momentum under torch's SGD: before a step at a new rate, multiply the
    momentum buffers by ``old rate / new rate``.

    Meganet keeps ``V = lr g + μ V`` and steps ``θ -= V``; torch keeps ``b = μ b + g`` and steps
    ``θ -= lr b``. With ``b_k = V_k / lr_k`` the two agree when ``b_{k-1}`` is scaled by
    ``lr_{k-1} / lr_k`` before step k, and only then (nothing changes while the rate is constant).
    """
    buffers = [optimizer.state[p]["momentum_buffer"] for p in group["params"]
               if optimizer.state.get(p, {}).get("momentum_buffer") is not None]
    if buffers:
        torch._foreach_mul_(buffers, ratio)


def _raise_if_diverged(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step:
        raise Diverged(f"diverged: non-finite loss at epoch {epoch} step {step}")


def _training_batches(
    data: Splits, config: TrainConfig, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    from pdenas.data import batches

    return batches(
        data.train,
        config.batch_size,
        shuffle=True,
        augment=config.augment,
        flip=bool(getattr(data, "flip", False)),
        generator=generator,
        drop_last=len(data.train.y) > config.batch_size,  # no batch of one for batch norm
    )


def _to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def amp_mode(amp: str, device: torch.device | str) -> str:
    """The precision a run asking for ``amp`` trains in on ``device``.

    CUDA: as asked. CPU: "bf16" where the processor computes bf16 natively (oneDNN's check: AMX
    or AVX512-BF16), else "off"; "fp16" is "off" (CPU autocast to fp16 is emulated).

    Returns:
        "off", "bf16" or "fp16".
    """
    device = torch.device(device)
    if device.type == "cuda" or amp == "off":
        return amp
    if device.type == "cpu" and amp == "bf16" and _cpu_has_native_bf16():
        return "bf16"
    return "off"


@functools.cache
def _cpu_has_native_bf16() -> bool:
    # torch exposes no public check; this is the one its own CPU autocast tests use.
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, amp: str) -> torch.autocast:
    dtype = _AMP_DTYPES.get(amp) if device.type in ("cuda", "cpu") else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextmanager
def _out_of_memory(where: str) -> Iterator[None]:
    """Turns torch's CUDA and host out-of-memory errors into `OutOfMemory` with a reason."""
    try:
        yield
    except RuntimeError as error:
        text = str(error).strip()
        if not (isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise OutOfMemory(f"out of memory {where}: {first_line}") from error
