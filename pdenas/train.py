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
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pdenas.multilevel import Level, MultilevelConfig, pde_units, resample_model

__all__ = [
    "CHECK_EVERY",
    "Diverged",
    "FitResult",
    "OutOfMemory",
    "TrainConfig",
    "TrainingFailed",
    "evaluate",
    "fit",
    "learning_rates",
]

logger = logging.getLogger(__name__)

CHECK_EVERY = 50
"""Training steps between two host reads of the divergence flag (besides the end of an epoch)."""

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_EVAL_BATCH = 512

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

    def __init__(self, reason: str, history: Sequence[Mapping[str, float]] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = [dict(h) for h in history]


class Diverged(TrainingFailed):
    """The training or validation loss became non-finite."""


class OutOfMemory(TrainingFailed):
    """The device (or host) ran out of memory during training or evaluation."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one candidate.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Training images per step.
        optimizer: "sgd" (momentum, optionally Nesterov) or "adamw".
        lr: The peak learning rate.
        momentum: SGD momentum (ignored by AdamW).
        nesterov: Nesterov momentum for SGD (needs momentum > 0).
        weight_decay: L2 penalty for SGD, decoupled weight decay for AdamW.
        schedule: Learning rate per epoch: "cosine" (to zero), "step" (times ``gamma`` at each
            milestone) or "constant".
        milestones: For "step": the epochs of the drops as increasing fractions of ``epochs`` in
            (0, 1); the paper's 60/20/20 epochs is (0.6, 0.8).
        gamma: Factor of each drop (the paper: 0.2).
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        clip_weights: Box-clip every parameter to [-bound, bound] after each step (the paper:
            1.0), or None for no clipping.
        time_smoothness: Weight of the total variation in time of the per-step weights added to
            the loss (the paper: about 2e-4); 0 turns it off.
        augment: Random flips (where the data allows) and padded crops of training batches.
        amp: Mixed precision on CUDA: "off", "bf16", or "fp16" (with a gradient scaler). Ignored
            on the CPU.
        channels_last: Channels-last memory format for the model and batches; None means on
            CUDA only.
        grad_clip: Clip the global gradient norm to this value, or None.
        multilevel: Coarse-to-fine training (``pdenas.multilevel.MultilevelConfig``; from
            plain data ``{levels: 3, factor: 2, shares: null}``), or None to train at the
            model's depth throughout.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.2
    label_smoothing: float = 0.0
    clip_weights: float | None = 1.0
    time_smoothness: float = 2e-4
    augment: bool = True
    amp: str = "off"
    channels_last: bool | None = None
    grad_clip: float | None = None
    multilevel: MultilevelConfig | None = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, " | ".join(SCHEDULES))
        _check(self.amp in AMP_MODES, "amp", self.amp, " | ".join(AMP_MODES))
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        nesterov_ok = self.momentum > 0 or not self.nesterov
        _check(nesterov_ok, "nesterov", self.nesterov, "false when momentum is 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 < self.gamma <= 1, "gamma", self.gamma, "a number in (0, 1]")
        smoothing = self.label_smoothing
        _check(0 <= smoothing < 1, "label_smoothing", smoothing, "a number in [0, 1)")
        _check(self.time_smoothness >= 0, "time_smoothness", self.time_smoothness, "a number >= 0")
        ms = self.milestones
        ok = all(0 < m < 1 for m in ms) and all(a < b for a, b in zip(ms, ms[1:]))
        _check(ok, "milestones", ms, "increasing fractions of the epochs in (0, 1)")
        for name in ("clip_weights", "grad_clip"):
            value = getattr(self, name)
            _check(value is None or value > 0, name, value, "a number > 0 or null")
        if isinstance(self.multilevel, Mapping):
            object.__setattr__(self, "multilevel", MultilevelConfig.from_dict(self.multilevel))
        multilevel = self.multilevel
        ok = multilevel is None or isinstance(multilevel, MultilevelConfig)
        _check(ok, "multilevel", multilevel, "a mapping with levels, factor, shares, or null")
        if multilevel is not None:
            multilevel.epochs_per_level(self.epochs)  # at least one epoch per level

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Builds a validated config from plain data (a YAML/JSON mapping).

        Args:
            data: Field names to values; missing fields keep their defaults. ``amp`` also accepts
                true (bf16) and false/null (off); ``milestones`` any sequence of numbers.

        Raises:
            ValueError: An unknown key or a bad value, naming the key and what is allowed.
        """
        annotations = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in annotations:
                raise ValueError(f"unknown train key {key!r}; allowed: {', '.join(annotations)}")
            values[key] = _coerce(key, value, annotations[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as JSON-ready data that `from_dict` reads back."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["multilevel"] = None if self.multilevel is None else self.multilevel.to_dict()
        return d


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"bad train.{key}: {value!r}; allowed: {allowed}")


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Checks one `from_dict` value against its field's annotation and normalises it."""
    if key == "amp" and not isinstance(value, str):
        _check(value in (True, False, None), key, value, " | ".join(AMP_MODES) + " | true | false")
        return "bf16" if value else "off"
    optional = annotation.endswith("| None")
    if value is None and optional:
        return None
    kind = annotation.split(" |")[0]
    if kind == "MultilevelConfig":
        return MultilevelConfig.from_dict(value)
    null = " or null" if optional else ""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        _check(isinstance(value, bool), key, value, "true or false" + null)
    elif kind == "str":
        _check(isinstance(value, str), key, value, "a string")
    elif kind == "int":
        _check(number and float(value).is_integer(), key, value, "an integer")
        return int(value)
    elif kind == "float":
        _check(number, key, value, "a number" + null)
        return float(value)
    else:  # milestones
        ok = isinstance(value, Sequence) and not isinstance(value, str)
        ok = ok and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in value)
        _check(ok, key, value, "a list of fractions of the epochs in (0, 1)")
        return tuple(float(m) for m in value)
    return value


def learning_rates(config: TrainConfig) -> list[float]:
    """The learning rate of each epoch (index 0 is the first epoch).

    Args:
        config: The training config.

    Returns:
        ``config.epochs`` learning rates.
    """
    n = config.epochs
    if config.schedule == "constant":
        return [config.lr] * n
    if config.schedule == "cosine":
        return [config.lr * 0.5 * (1 + math.cos(math.pi * e / n)) for e in range(n)]
    drops = [round(m * n) for m in config.milestones]
    return [config.lr * config.gamma ** sum(e >= d for d in drops) for e in range(n)]


@dataclass
class FitResult:
    """What a training run produced.

    Attributes:
        history: One dict per epoch: epoch (from 1), lr, train_loss, train_accuracy, val_loss,
            val_accuracy, seconds; with multilevel training also level (from 1) and depth (the
            time steps of all units together).
        best_val_accuracy: The best validation accuracy (ties broken by the lower loss); with
            multilevel training among the epochs of the last level trained (the final one
            unless the callback stopped the run earlier).
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
    result = FitResult()
    try:
        return _fit(model, data, config, torch.device(device), callback, seed, restore_best, result)
    except TrainingFailed as failure:
        failure.history = list(result.history)
        raise


def _fit(
    model: nn.Module,
    data: Splits,
    config: TrainConfig,
    device: torch.device,
    callback: Callback | None,
    seed: int,
    restore_best: bool,
    result: FitResult,
) -> FitResult:
    if len(data.val.y) == 0:
        raise ValueError("fit needs a non-empty validation split")
    cuda = device.type == "cuda"
    channels_last = cuda if config.channels_last is None else config.channels_last
    amp = config.amp if cuda else "off"
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
    for epoch, lr in enumerate(learning_rates(config), start=1):
        epoch_start = time.perf_counter()
        if plan and (level is None or epoch == level.first_epoch + level.epochs):
            level = plan[0 if level is None else level.index]
            work = _start_level(resample_model(work, level.depths), level, result, channels_last)
            level_start, step = epoch_start, None
        if step is None:  # once, or again for each level's new parameters (fresh state)
            step = _Step(work, config, device, amp, channels_last)
        for group in step.optimizer.param_groups:
            group["lr"] = lr
        batches = _training_batches(data, config, generator)
        with _out_of_memory(f"at epoch {epoch}"):
            train_loss, train_accuracy = step.epoch(batches, epoch)
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
        if level is not None:
            metrics.update(level=level.index, depth=sum(level.depths))
        result.history.append(metrics)
        result.epochs_trained = epoch
        logger.info("epoch %d: %s", epoch, metrics)
        if (val_accuracy, -val_loss) > (result.best_val_accuracy, -result.best_val_loss):
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
        amp: "off", "bf16" or "fp16" autocast (CUDA only).
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
        params = list(model.parameters())
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                weight_decay=config.weight_decay,
            )
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=config.lr, weight_decay=config.weight_decay
            )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        if config.clip_weights is not None or config.time_smoothness > 0:
            from pdenas.families import clip_weights_, time_smoothness
            from pdenas.families._stability import consecutive_step_parameters

            self.clip_weights_, self.time_smoothness = clip_weights_, time_smoothness
            self.step_pairs = consecutive_step_parameters(model)  # once per run, not per step

    def epoch(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int
    ) -> tuple[float, float]:
        """Trains one epoch; returns (mean training loss, training accuracy)."""
        config, model = self.config, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for step, (x, y) in enumerate(batches, start=1):
            x, y = _to_device(x, y, self.device, self.channels_last)
            with _autocast(self.device, self.amp):
                logits = model(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                total = loss
                if config.time_smoothness > 0:
                    total = total + config.time_smoothness * self.time_smoothness(
                        model, self.step_pairs
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


def _autocast(device: torch.device, amp: str) -> torch.autocast:
    dtype = _AMP_DTYPES.get(amp) if device.type == "cuda" else None
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
