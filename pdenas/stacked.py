"""Paired seeds trained together: one architecture over S seeds as one stacked model.

``fit_seeds(arch, data, config, device, seeds)`` does what S separate runs of
``torch.manual_seed(s); model = build_model(arch); fit(model, data, config, device, seed=s)`` do,
as one model: the S networks' parameters and buffers are stacked along a new leading dimension
(``torch.func.stack_module_state``), and every training step is one ``torch.func.vmap`` of
``functional_call`` over the seeds, with autograd through the vmap and one optimiser over the
stacked tensors. Each seed keeps what its separate run would have had:

- its initialisation (``torch.manual_seed(seed)`` before ``build_model``, as the retraining does);
- its data order and augmentation (a ``torch.Generator`` seeded with ``seed``, drawn through
  ``fit``'s own batching: ``pdenas.train._training_batches``);
- its optimiser step: the summed loss ``Σ_s (CE_s + α R_s)`` has gradient ``∂(CE_s + α R_s)/∂θ_s``
  in seed s's slice; SGD (momentum, Nesterov, both momentum forms: ``train.meganet``) and
  AdamW, their weight decay groups, the schedule and warm-up, and the box clipping of the
  weights are elementwise, so one optimiser over the stacked tensors steps each seed as its own
  would; ``grad_clip`` clips each seed's global gradient norm separately;
- its batch norm: the running statistics are stacked buffers that ``vmap`` updates per seed
  in place (torch.func's "functional_call with batched buffers"; measured equal to the separate
  modules' statistics), so evaluation uses each seed's own running statistics, as ``fit`` does;
- its outcome: a seed whose loss becomes non-finite fails with ``Diverged`` (its history: the
  epochs completed before, as ``fit``'s), while the other seeds train on (a seed's NaNs do not
  reach another seed's slice); its best-validation weights and ``FitResult`` are its own.

Agreement with separate runs (``tests/test_stacked.py``, two epochs on 240 digits): the same up
to floating-point rounding (vmap runs the convolutions as grouped convolutions, which sum in
another order). In float64 the weights agree to 1e-15 (SGD) and 3e-12 (AdamW with batch norm),
the losses to 6e-7 (``fit`` computes the loss of a float64 network in float32) and the
accuracies exactly. In float32 they agree to about 1e-7, except where training amplifies
rounding: to 1e-3 in the weights under TV norm with SGD on digits, for 2 of 8 seeds (the flat
background gives many equal pre-activations, which round to one side of a ReLU or the other;
with 1 % noise added to the images all 8 agree to 2e-7) and 1e-2 with AdamW (it normalises
every gradient entry, so one that is rounding noise takes a full step): as far as ``fit`` is
from itself with channels-last memory format (``benchmarks/stacked_seeds.md``). Speed against
separate runs: the same file.

Limits (``stacking_problems`` names them; ``fit_seeds`` refuses them with ``InputError``):
``multilevel`` training (the shapes change between levels), ``amp: fp16`` (one gradient scaler
would skip every seed's step when one seed overflows) and reversible units (their
``autograd.Function`` has no vmap rule). Two settings that change speed, not results, are not
applied: the stacked step runs eagerly (``compile``, ``PDENAS_COMPILE``) and in the contiguous
memory format (``channels_last``, which ``fit`` uses by default: a stacked batch is 5-d, and
per-seed channels-last tensors made a vmapped step 1.2 times slower on the CPU).
There is no per-seed pruning: the callback sees all seeds' metrics and may stop all of them.
``FitResult.seconds`` and each epoch's ``seconds`` are the stacked run's wall time, shared by
its S seeds. Memory grows with S (S networks' activations at once).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pdenas.architecture import Architecture
from pdenas.errors import InputError

# With fit's own private steps (the underscored names): the stacked run batches, augments,
# schedules and guards exactly as fit does.
from pdenas.train import (
    _EVAL_BATCH,
    CHECK_EVERY,
    FUSED_DEVICES,
    Diverged,
    FitResult,
    Splits,
    TimedOut,
    TrainConfig,
    TrainingFailed,
    _autocast,
    _out_of_memory,
    _rescale_velocity,
    _steps_per_epoch,
    _to_device,
    _training_batches,
    _until,
    amp_mode,
    learning_rate,
    weight_decay_groups,
)

__all__ = ["SeedRun", "StackedCallback", "fit_seeds", "fit_stacked", "stacking_problems"]

StackedCallback = Callable[[int, list[dict[str, float] | None]], bool | None]
"""Called after each epoch with (epoch from 1, each seed's metrics, None for a failed seed);
returning True stops every seed."""


@dataclass
class SeedRun:
    """One seed's run within a stacked training.

    Attributes:
        seed: The seed (initialisation, data order and augmentation).
        model: The seed's network, on the device, holding its best-validation weights (or, with
            ``restore_best=False``, its last ones), as ``fit`` leaves its model.
        result: What the run produced (as ``fit``'s ``FitResult``; for a failed seed the epochs
            before the failure).
        failure: The ``TrainingFailed`` that ``fit`` would have raised for this seed (its
            ``history``: the completed epochs), or None.
    """

    seed: int
    model: nn.Module
    result: FitResult
    failure: TrainingFailed | None = None


def stacking_problems(config: TrainConfig, arch: Architecture | None = None) -> list[str]:
    """What keeps a run from being trained stacked, as ``key: problem`` lines (empty: none).

    Args:
        config: How to train.
        arch: The architecture, when known (reversible units cannot be stacked).
    """
    problems = []
    if config.multilevel is not None:
        problems.append("train.multilevel: the network's shape changes between levels")
    if config.amp == "fp16":
        problems.append("train.amp: fp16's gradient scaler would skip all seeds' steps together")
    if arch is not None and arch.reversible:
        problems.append("architecture.reversible: the reversible backward pass has no vmap rule")
    return problems


def fit_seeds(
    arch: Architecture,
    data: Splits,
    config: TrainConfig,
    device: torch.device | str,
    seeds: Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    callback: StackedCallback | None = None,
    restore_best: bool = True,
    deadline: float | None = None,
) -> list[SeedRun]:
    """Trains ``arch`` once per seed, all seeds as one stacked model.

    Seed s's run is that of ``torch.manual_seed(s); model = build_model(arch).to(device)`` and
    ``fit(model, data, config, device, seed=s, restore_best=restore_best)`` up to floating-point
    rounding (module docstring).

    Args:
        arch: The architecture.
        data: The splits (``train``, ``val``; ``data.flip`` as ``fit`` reads it), of ``dtype``.
        config: How to train (``stacking_problems`` must be empty).
        device: Where to train.
        seeds: One seed per run (at least one).
        dtype: The networks' floating-point type (None: as built, float32).
        callback: See ``StackedCallback``.
        restore_best: Each seed's model ends with its best-validation weights (else its last).
        deadline: A ``time.monotonic()`` value; every running seed stops before the first step
            after it with ``TimedOut`` (``failure.result`` holds its run so far).

    Returns:
        One ``SeedRun`` per seed, in the order of ``seeds``.

    Raises:
        InputError: No seeds, an empty validation split, or a run that cannot be stacked.
    """
    from pdenas.network import build_model

    problems = stacking_problems(config, arch)
    if problems:
        raise InputError(f"fit_seeds: cannot train these seeds stacked: {'; '.join(problems)} "
                         "(train them with fit one by one)")
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(arch)
        models.append(model.to(device, dtype) if dtype is not None else model.to(device))
    return fit_stacked(models, data, config, device, seeds, callback=callback,
                       restore_best=restore_best, deadline=deadline)


def fit_stacked(
    models: Sequence[nn.Module],
    data: Splits,
    config: TrainConfig,
    device: torch.device | str,
    seeds: Sequence[int],
    *,
    callback: StackedCallback | None = None,
    restore_best: bool = True,
    deadline: float | None = None,
) -> list[SeedRun]:
    """Trains S networks of one architecture, initialised by the caller, as one stacked model.

    Model s trains as ``fit(models[s], data, config, device, seed=seeds[s])`` would; each model
    is written at the end as ``fit`` writes its model. Arguments and returns as ``fit_seeds``.
    """
    if not models or len(models) != len(seeds):
        raise InputError(f"seeds: need one seed per model and at least one; got {len(seeds)} seeds "
                         f"for {len(models)} models")
    problems = stacking_problems(config)
    if any(getattr(u, "reversible", False) for m in models for u in m.modules()):
        problems.append("architecture.reversible: the reversible backward pass has no vmap rule")
    if problems:
        raise InputError(f"fit_stacked: cannot train these seeds stacked: {'; '.join(problems)}")
    if len(data.val.y) == 0:
        raise InputError("fit needs a non-empty validation split")
    trainer = _Stacked(models, data, config, torch.device(device), list(seeds), deadline)
    try:
        trainer.train(callback)
    except TrainingFailed as failure:  # out of memory or the deadline: every running seed
        trainer.fail_running(failure)
    return trainer.finish(restore_best)


class _Stacked:
    """The stacked parameters, buffers, optimiser and per-seed bookkeeping of one run."""

    def __init__(self, models: Sequence[nn.Module], data: Splits, config: TrainConfig,
                 device: torch.device, seeds: list[int], deadline: float | None) -> None:
        self.models, self.data, self.config, self.device = list(models), data, config, device
        self.seeds, self.deadline = seeds, deadline
        self.amp = amp_mode(config.amp, device)
        for model in self.models:
            model.to(device)
        self.params, self.buffers = stack_module_state(self.models)
        # The module whose code runs for every seed; its own tensors are never used.
        self.base = copy.deepcopy(self.models[0]).to("meta")
        names = {id(p): n for n, p in self.base.named_parameters()}
        groups = [
            {**group, "params": [self.params[names[id(p)]] for p in group["params"]]}
            for group in weight_decay_groups(self.base, config.weight_decay)
        ]
        fused = True if device.type in FUSED_DEVICES else None  # as fit's _Step
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                weight_decay=config.weight_decay, fused=fused)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=config.lr,
                                               weight_decay=config.weight_decay, fused=fused)
        self.step_pairs = self._stacked_step_pairs(names) if config.time_smoothness > 0 else []
        self.results = [FitResult() for _ in seeds]
        self.failures: list[TrainingFailed | None] = [None] * len(seeds)
        self.start = time.perf_counter()

    def _stacked_step_pairs(self, names: dict[int, str]) -> list[Any]:
        """``consecutive_step_parameters`` of the base module, its tensors replaced by the
        stacked ones: ``time_smoothness`` over them is the sum of every seed's regulariser."""
        from pdenas.families._stability import StepPairs, consecutive_step_parameters

        return [
            StepPairs(pair.unit, tuple(self.params[names[id(p)]] for p in pair.before),
                      tuple(self.params[names[id(p)]] for p in pair.after))
            for pair in consecutive_step_parameters(self.base)
        ]

    # --- the vmapped functions ------------------------------------------------------------------
    def _seed_loss(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(self.base, (params, buffers), (x,)).float()
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing), logits

    def _seed_eval(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(self.base, (params, buffers), (x,)).float()
        return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()

    @staticmethod
    def _clip_coefficient(grads: dict[str, torch.Tensor], max_norm: float) -> torch.Tensor:
        # nn.utils.clip_grad_norm_'s coefficient, for one seed's gradients (vmapped over seeds).
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])
        return torch.clamp(max_norm / (torch.linalg.vector_norm(norms) + 1e-6), max=1.0)

    # --- training ------------------------------------------------------------------------------
    def running(self) -> list[int]:
        return [i for i, f in enumerate(self.failures) if f is None]

    def train(self, callback: StackedCallback | None) -> None:
        config, data = self.config, self.data
        generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        steps_per_epoch = _steps_per_epoch(len(data.train.y), config.batch_size)
        self.start = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            batches = _until(self.deadline, _zip_batches(
                [_training_batches(data, config, g) for g in generators]), epoch)
            with _out_of_memory(f"at epoch {epoch}"):
                train_loss, train_accuracy, first_bad = self._epoch(
                    batches, lambda i, e=epoch - 1: learning_rate(config, e, i, steps_per_epoch))
                val_loss, val_accuracy = self._evaluate()
            seconds = time.perf_counter() - epoch_start
            lr = learning_rate(config, epoch - 1, 0, steps_per_epoch)
            metrics: list[dict[str, float] | None] = [None] * len(self.seeds)
            for i in self.running():
                if first_bad[i]:
                    self._fail(i, Diverged(
                        f"diverged: non-finite loss at epoch {epoch} step {first_bad[i]}"))
                    continue
                if not math.isfinite(val_loss[i]):
                    self._fail(i, Diverged(
                        f"diverged: non-finite validation loss at epoch {epoch}"))
                    continue
                metrics[i] = self._record(i, epoch, {
                    "epoch": epoch, "lr": lr, "train_loss": train_loss[i],
                    "train_accuracy": train_accuracy[i], "val_loss": val_loss[i],
                    "val_accuracy": val_accuracy[i], "seconds": seconds})
            if not self.running():
                break
            if callback is not None and callback(epoch, [None if m is None else dict(m)
                                                         for m in metrics]):
                for i in self.running():
                    self.results[i].stopped = True
                break

    def _epoch(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               rate: Callable[[int], float]) -> tuple[list[float], list[float], list[int]]:
        """One epoch of every seed; returns per-seed training loss, accuracy and the first step
        with a non-finite loss (0: none)."""
        config, device = self.config, self.device
        self.base.train()
        params = list(self.params.values())
        n = len(self.seeds)
        loss_sum = torch.zeros(n, device=device)
        correct = torch.zeros(n, dtype=torch.long, device=device)
        first_bad = torch.zeros(n, dtype=torch.long, device=device)
        regulariser_bad = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        step_loss = torch.func.vmap(self._seed_loss)
        for step, (x, y) in enumerate(batches, start=1):
            lr = rate(step - 1)
            for group in self.optimizer.param_groups:
                if config.momentum_form == "meganet" and group["lr"] != lr:
                    _rescale_velocity(self.optimizer, group, group["lr"] / lr)
                group["lr"] = lr
            x, y = _to_device(x, y, device, False)
            with _autocast(device, self.amp):
                losses, logits = step_loss(self.params, self.buffers, x, y)
                # Σ_s (CE_s + α R_s): seed s's slice of its gradient is that of seed s's loss.
                total = losses.sum()
                if self.step_pairs:
                    from pdenas.families import time_smoothness

                    regulariser = config.time_smoothness * time_smoothness(
                        self.base, self.step_pairs, form=config.time_smoothness_form)
                    total = total + regulariser
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip is not None:
                grads = {k: v.grad for k, v in self.params.items() if v.grad is not None}
                coefficients = vmap(self._clip_coefficient, in_dims=(0, None))(
                    grads, config.grad_clip)
                for g in grads.values():
                    g.mul_(coefficients.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
            self.optimizer.step()
            if config.clip_weights is not None:
                with torch.no_grad():  # fit's clip_weights_, over the stacked tensors
                    torch._foreach_clamp_min_(params, -config.clip_weights)
                    torch._foreach_clamp_max_(params, config.clip_weights)
            # On the device, no host read per step (as fit's first_bad).
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(losses.detach()), step,
                                    first_bad)
            if self.step_pairs:
                regulariser_bad = torch.where(
                    (regulariser_bad == 0) & ~torch.isfinite(regulariser.detach()), step,
                    regulariser_bad)
            loss_sum += losses.detach().float() * y.shape[1]
            correct += (logits.detach().argmax(-1) == y).sum(1)
            seen += y.shape[1]
            if step % CHECK_EVERY == 0 and bool((first_bad > 0).all()):
                break  # every seed has diverged
        if seen == 0:
            raise ValueError("the training split gave no batches")
        first = [int(v) for v in first_bad.tolist()]
        step = int(regulariser_bad)
        if step:  # the summed regulariser went non-finite: whose was it?
            owners = self._nonfinite_seeds() or self.running()
            first = [min(f or step, step) if i in owners else f for i, f in enumerate(first)]
        return (loss_sum / seen).tolist(), (correct.double() / seen).tolist(), first

    def _nonfinite_seeds(self) -> list[int]:
        """The running seeds with a non-finite weight. The regulariser is summed over the seeds
        (``time_smoothness`` runs ``torch._foreach_*`` kernels, which have no vmap rule), so
        when it is non-finite while a seed's loss is finite (a non-finite weight no output
        depends on), its owner is found here, once per epoch."""
        bad = torch.zeros(len(self.seeds), dtype=torch.bool, device=self.device)
        for p in self.params.values():
            bad |= ~torch.isfinite(p.detach()).flatten(1).all(1)
        return [i for i in self.running() if bool(bad[i])]

    def _evaluate(self) -> tuple[list[float], list[float]]:
        """``evaluate`` of every seed on the validation split (eval mode: running statistics)."""
        split, device = self.data.val, self.device
        n = len(split.y)
        self.base.eval()
        evaluate = vmap(self._seed_eval, in_dims=(0, 0, None, None))
        loss_sum = torch.zeros(len(self.seeds), device=device)
        correct = torch.zeros(len(self.seeds), dtype=torch.long, device=device)
        with torch.no_grad(), _autocast(device, self.amp):
            for i in range(0, n, _EVAL_BATCH):
                x, y = _to_device(split.x[i: i + _EVAL_BATCH], split.y[i: i + _EVAL_BATCH],
                                  device, False)
                losses, hits = evaluate(self.params, self.buffers, x, y)
                loss_sum += losses
                correct += hits
        self.base.train()
        return [v / n for v in loss_sum.tolist()], [v / n for v in correct.tolist()]

    # --- per-seed bookkeeping -----------------------------------------------------------------
    def _state(self, i: int) -> dict[str, torch.Tensor]:
        """Seed i's state_dict (as ``fit``'s ``_cpu_state``: detached CPU copies)."""
        keys = self.models[i].state_dict().keys()
        tensors = {**self.params, **self.buffers}
        return {k: tensors[k][i].detach().to("cpu", copy=True) for k in keys}

    def _record(self, i: int, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        result = self.results[i]
        result.history.append(metrics)
        result.epochs_trained = epoch
        if self.config.keep == "last" or (
                (metrics["val_accuracy"], -metrics["val_loss"])
                > (result.best_val_accuracy, -result.best_val_loss)):
            result.best_val_accuracy, result.best_val_loss = (metrics["val_accuracy"],
                                                              metrics["val_loss"])
            result.best_epoch = epoch
            result.best_state = self._state(i)
        result.seconds = time.perf_counter() - self.start
        return metrics

    def _fail(self, i: int, failure: TrainingFailed) -> None:
        failure.history = [dict(h) for h in self.results[i].history]
        self.failures[i] = failure

    def fail_running(self, failure: TrainingFailed) -> None:
        """Gives every running seed the run-wide failure (out of memory, the deadline)."""
        for i in self.running():
            own = type(failure)(failure.reason)
            own.history = [dict(h) for h in self.results[i].history]
            if isinstance(own, TimedOut):
                own.result = self.results[i]
            self.failures[i] = own

    def finish(self, restore_best: bool) -> list[SeedRun]:
        """Writes each seed's weights into its model, as ``fit`` leaves its model."""
        runs = []
        for i, (seed, model) in enumerate(zip(self.seeds, self.models)):
            result, failure = self.results[i], self.failures[i]
            if restore_best and result.best_state:
                state = result.best_state
            else:
                state = self._state(i)
            model.load_state_dict(state)
            model.train()
            result.seconds = time.perf_counter() - self.start
            runs.append(SeedRun(seed, model, result, failure))
        return runs


def _zip_batches(
    seeds: Sequence[Iterator[tuple[torch.Tensor, torch.Tensor]]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's batches of all seeds, stacked: (S, B, C, H, W) images and (S, B) labels."""
    for batch in zip(*seeds, strict=True):
        yield torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])
