"""Tests for pdenas.train: config validation, schedules, fitting, best weights, failures."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pdenas import train as train_module
from pdenas.architecture import Architecture
from pdenas.data import DataConfig, TensorSplit, load_data
from pdenas.families import time_smoothness
from pdenas.network import build_model
from pdenas.train import (
    Diverged,
    OutOfMemory,
    TrainConfig,
    TrainingFailed,
    amp_mode,
    evaluate,
    fit,
    learning_rate,
    learning_rates,
    weight_decay_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int, seed: int, noise: float = 1.0) -> TensorSplit:
    """Two classes of 1x4x4 images whose pixel means are -1 and +1: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) * noise + (2.0 * y - 1.0).view(-1, 1, 1, 1)
    return TensorSplit(x, y)


def toy_data(noise: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(train=blobs(256, 1, noise), val=blobs(128, 2, noise), flip=True)


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def config(**overrides: object) -> TrainConfig:
    base = {
        "epochs": 4,
        "batch_size": 32,
        "lr": 0.05,
        "schedule": "constant",
        "clip_weights": None,
        "time_smoothness": 0.0,
        "augment": False,
    }
    internal = {k: overrides.pop(k) for k in ("momentum_form", "time_smoothness_form", "nesterov")
                if k in overrides}  # not study keys: the Python API sets them
    return dataclasses.replace(TrainConfig.from_dict({**base, **overrides}), **internal)


# --- TrainConfig -------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    cfg = TrainConfig.from_dict(
        {"optimizer": "adamw", "milestones": [0.5, 0.75], "amp": "fp16", "grad_clip": 5}
    )
    assert cfg.milestones == (0.5, 0.75) and cfg.grad_clip == 5.0
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({}) == TrainConfig()


def test_config_paper_defaults() -> None:
    cfg = TrainConfig()
    assert cfg.clip_weights == 1.0 and cfg.time_smoothness == pytest.approx(2e-4)
    assert cfg.optimizer == "sgd" and cfg.momentum == 0.9


def test_unknown_key_names_key_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"^train\.learning_rate: unknown key; allowed:.*\blr\b.*time_smoothness"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("optimizer", "rmsprop", "sgd | adamw"),
        ("schedule", "linear", "cosine | step | constant"),
        ("amp", "fp8", "off | bf16 | fp16"),
        ("epochs", 0, ">= 1"),
        ("epochs", 2.5, "integer"),
        ("epochs", "3", "integer"),
        ("lr", -1.0, "> 0"),
        ("lr", float("nan"), "a finite number"),
        ("lr", float("inf"), "a finite number"),
        ("momentum", 1.0, r"\[0, 1\)"),
        ("milestones", [0.8, 0.5], "increasing"),
        ("milestones", [1.5], r"\(0, 1\)"),
        ("milestones", "0.5", "list"),
        ("clip_weights", 0.0, "> 0 or null"),
        ("clip_weights", "1", "number or null"),
        ("augment", 1, "true or false"),
        ("label_smoothing", 1.0, r"\[0, 1\)"),
        ("schedule_interval", "batch", "epoch | step"),
        ("warmup_epochs", -0.5, ">= 0"),
        ("warmup_epochs", 11, "<= train.epochs"),
    ],
)
def test_bad_values_name_key_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"train\.{key}.*allowed: .*{allowed}"):
        TrainConfig.from_dict({key: value})


def test_nesterov_needs_momentum_and_amp_accepts_bools() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(nesterov=True, momentum=0.0)
    assert TrainConfig.from_dict({"amp": True}).amp == "bf16"
    assert TrainConfig.from_dict({"amp": False}).amp == "off"
    assert TrainConfig.from_dict({"clip_weights": None}).clip_weights is None


# --- schedules ---------------------------------------------------------------------------------


def test_step_schedule_drops_at_fractions_of_the_epochs() -> None:
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="step", milestones=(0.5, 0.8), gamma=0.1)
    assert learning_rates(cfg) == pytest.approx([1.0] * 5 + [0.1] * 3 + [0.01] * 2)
    paper = TrainConfig(epochs=100, lr=0.1, schedule="step", milestones=(0.6, 0.8), gamma=0.2)
    lrs = learning_rates(paper)
    assert lrs[59] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.02)
    assert lrs[79] == pytest.approx(0.02) and lrs[80] == pytest.approx(0.004)


def test_cosine_and_constant_schedules() -> None:
    cosine = learning_rates(TrainConfig(epochs=4, lr=2.0, schedule="cosine"))
    assert cosine == pytest.approx([2.0, 1.0 + math.sqrt(0.5), 1.0, 1.0 - math.sqrt(0.5)])
    assert learning_rates(TrainConfig(epochs=3, lr=0.3, schedule="constant")) == [0.3] * 3


@pytest.fixture
def step_rates() -> Iterator[list[float]]:
    """The learning rate that each optimiser step of the test runs with."""
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"]))
    yield seen
    handle.remove()


def test_fit_applies_the_schedule_to_the_optimizer(step_rates: list[float]) -> None:
    cfg = config(epochs=5, lr=1.0, schedule="step", milestones=[0.4], gamma=0.5)
    result = fit(toy_model(), toy_data(), cfg, "cpu")
    per_epoch = [1.0, 1.0, 0.5, 0.5, 0.5]
    assert step_rates == pytest.approx([r for r in per_epoch for _ in range(256 // 32)])
    assert [h["lr"] for h in result.history] == pytest.approx(per_epoch)


def test_a_per_step_cosine_reaches_zero_at_the_last_step(step_rates: list[float]) -> None:
    cfg = config(epochs=3, lr=1.0, schedule="cosine", schedule_interval="step")
    result = fit(toy_model(), toy_data(), cfg, "cpu")
    total = 3 * (256 // 32)
    assert step_rates == pytest.approx([0.5 * (1 + math.cos(math.pi * t / total))
                                        for t in range(total)])
    assert step_rates[-1] < 0.04  # the per-epoch cosine's last rate is 0.25
    assert [h["lr"] for h in result.history] == pytest.approx(learning_rates(cfg))


def test_warmup_rises_linearly_then_follows_the_schedule(step_rates: list[float]) -> None:
    cfg = config(epochs=2, lr=0.8, schedule="constant", warmup_epochs=0.5)
    fit(toy_model(), toy_data(), cfg, "cpu")
    # 8 steps an epoch, so 4 warm-up steps: 0.2, 0.4, 0.6, 0.8, then the constant rate
    assert step_rates == pytest.approx([0.2, 0.4, 0.6] + [0.8] * 13)


def test_learning_rate_per_step_meets_the_per_epoch_rates_at_epoch_starts() -> None:
    for schedule in ("cosine", "step", "constant"):
        by_epoch = TrainConfig(epochs=10, lr=0.3, schedule=schedule)
        by_step = TrainConfig(epochs=10, lr=0.3, schedule=schedule, schedule_interval="step")
        assert learning_rates(by_step, 50) == pytest.approx(learning_rates(by_epoch, 50))
        assert learning_rate(by_epoch, 2, 30, 50) == learning_rate(by_epoch, 2, 0, 50)
    drops = TrainConfig(epochs=10, lr=1.0, schedule="step", milestones=(0.5,), gamma=0.1,
                        schedule_interval="step")
    assert learning_rate(drops, 4, 49, 50) == 1.0 and learning_rate(drops, 5, 0, 50) == 0.1


# --- fit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_loss_decreases_on_a_separable_problem(optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 0.01
    result = fit(toy_model(), toy_data(), config(optimizer=optimizer, lr=lr, epochs=5), "cpu")
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_val_accuracy > 0.95
    assert result.epochs_trained == 5 and not result.stopped
    assert set(result.history[0]) == {
        "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"
    }


def test_best_state_is_the_best_epochs_weights() -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    model = toy_model()

    def record(epoch: int, metrics: dict[str, float]) -> bool:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return False

    # A large constant rate on noisy data makes validation accuracy go up and down.
    result = fit(model, toy_data(noise=3.0), config(lr=0.5, epochs=6), "cpu", callback=record)
    ranked = max(result.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert result.best_epoch == ranked["epoch"]
    assert result.best_val_accuracy == ranked["val_accuracy"]
    for key, value in result.best_state.items():
        assert value.device.type == "cpu"
        assert torch.equal(value, snapshots[result.best_epoch][key]), key
    # restore_best loaded those weights back, so evaluating reproduces the best metrics.
    loss, accuracy = evaluate(model, toy_data(noise=3.0).val, "cpu")
    assert accuracy == result.best_val_accuracy
    assert loss == pytest.approx(result.best_val_loss, rel=1e-6)


def test_keep_last_ends_with_the_last_iterate() -> None:
    """keep "last" (the authors' drivers without validation): whatever the validation accuracy
    did, the run reports and keeps the last epoch."""
    model = toy_model()
    result = fit(model, toy_data(noise=3.0), config(lr=0.5, epochs=6, keep="last"), "cpu")
    last = result.history[-1]
    assert result.best_epoch == 6 and result.best_val_accuracy == last["val_accuracy"]
    assert result.best_val_loss == last["val_loss"]
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert best["epoch"] != 6  # this run's best epoch is another one: "best" would differ
    state = model.state_dict()
    for key, value in result.best_state.items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(ValueError, match=r"^train\.keep: .*allowed: best \| last$"):
        config(keep="final")


def test_callback_can_stop_training() -> None:
    calls: list[tuple[int, float]] = []

    def prune(epoch: int, metrics: dict[str, float]) -> bool:
        calls.append((epoch, metrics["val_accuracy"]))
        return epoch == 2

    result = fit(toy_model(), toy_data(), config(epochs=6), "cpu", callback=prune)
    assert result.stopped and result.epochs_trained == 2 and len(result.history) == 2
    assert [epoch for epoch, _ in calls] == [1, 2]


def test_huge_learning_rate_raises_diverged_with_reason() -> None:
    reason = r"^diverged: non-finite loss at epoch \d+ step \d+$"
    with pytest.raises(Diverged, match=reason) as info:
        fit(toy_model(), toy_data(), config(lr=1e6, epochs=20), "cpu")
    assert isinstance(info.value, TrainingFailed) and info.value.reason.startswith("diverged")


class NaNInEval(nn.Module):
    """Trains normally but produces NaN logits in eval mode (an exploding validation loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = toy_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out if self.training else out * float("nan")


def test_non_finite_validation_loss_raises_diverged() -> None:
    with pytest.raises(Diverged, match="non-finite validation loss at epoch 1"):
        fit(NaNInEval(), toy_data(), config(), "cpu")


def test_out_of_memory_becomes_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = toy_model()

    def oom(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(model, "forward", oom)
    with pytest.raises(OutOfMemory, match=r"^out of memory at epoch 1: CUDA out of memory\. Tried"):
        fit(model, toy_data(), config(), "cpu")


def test_other_errors_propagate_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    model = toy_model()

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        fit(model, toy_data(), config(), "cpu")


@pytest.mark.parametrize("augment", [False, True])
def test_seeded_runs_are_identical(augment: bool) -> None:
    cfg = config(augment=augment, epochs=2)
    first = fit(toy_model(), toy_data(), cfg, "cpu", seed=3)
    second = fit(toy_model(), toy_data(), cfg, "cpu", seed=3)
    other = fit(toy_model(), toy_data(), cfg, "cpu", seed=4)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in first.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in second.history]
    for key, value in first.best_state.items():
        assert torch.equal(value, second.best_state[key])
    assert first.history[0]["train_loss"] != other.history[0]["train_loss"]


def test_clip_weights_keeps_every_parameter_in_the_box() -> None:
    unclipped = toy_model()
    fit(unclipped, toy_data(), config(lr=2.0, weight_decay=0.0, epochs=2), "cpu")
    assert max(p.abs().max().item() for p in unclipped.parameters()) > 1.0
    clipped = toy_model()
    cfg = config(lr=2.0, weight_decay=0.0, epochs=2, clip_weights=1.0)
    fit(clipped, toy_data(), cfg, "cpu", restore_best=False)
    assert all(p.abs().max().item() <= 1.0 for p in clipped.parameters())


def test_gradient_clipping_tames_a_huge_learning_rate() -> None:
    cfg = config(lr=1e6, momentum=0.0, weight_decay=0.0, grad_clip=1e-9, epochs=2)
    result = fit(toy_model(), toy_data(), cfg, "cpu")
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_a_stalled_calibration_step_is_not_taken_for_the_networks_speed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``estimate_seconds`` times three groups of steps and scales the median: one group that
    stalls for a second (another process took the core) leaves the prediction of 32 steps far
    below the 3.6 s that the mean of its nine steps would give."""
    import time

    calls = []
    epoch = train_module._Step.epoch

    def stalling(self, batches, *args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 2:  # the first timed group (the first call is the warm-up step)
            time.sleep(1.0)
        return epoch(self, batches, *args, **kwargs)

    monkeypatch.setattr(train_module._Step, "epoch", stalling)
    predicted = train_module.estimate_seconds(toy_model(), toy_data(), config(), "cpu")
    assert len(calls) == 4  # the warm-up and three timed groups
    assert predicted < 32 * 1.0 / 9, predicted  # 4 epochs of 8 steps


def test_channels_last_on_cpu_trains_like_contiguous() -> None:
    plain = fit(toy_model(), toy_data(), dataclasses.replace(config(epochs=2), channels_last=False),
                "cpu")
    last = fit(toy_model(), toy_data(), config(epochs=2), "cpu")  # channels-last by default
    final = plain.history[-1]["train_loss"]
    assert last.history[-1]["train_loss"] == pytest.approx(final, rel=1e-3)


def test_fit_needs_a_validation_split() -> None:
    empty = TensorSplit(torch.zeros(0, 1, 4, 4), torch.zeros(0))
    data = SimpleNamespace(train=blobs(64, 1), val=empty)
    with pytest.raises(ValueError, match="validation"):
        fit(toy_model(), data, config(), "cpu")


# --- evaluate ----------------------------------------------------------------------------------


def test_evaluate_matches_a_direct_computation_and_restores_mode() -> None:
    model = toy_model()
    split = blobs(70, 5)
    model.train()
    loss, accuracy = evaluate(model, split, "cpu", batch_size=16)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(split.x)
    assert loss == pytest.approx(F.cross_entropy(logits, split.y).item(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == split.y).float().mean().item())
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, TensorSplit(torch.zeros(0, 1, 4, 4), torch.zeros(0)), "cpu")


# --- with the real data and network ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> object:
    return load_data(DataConfig.from_dict({"name": "digits"}), "cpu")


def digits_model(family: str = "parabolic") -> nn.Module:
    torch.manual_seed(0)
    arch = Architecture(
        family=family, widths=(8, 8, 8), depths=(3, 3), step_size=0.5, in_channels=1, num_classes=10
    )
    return build_model(arch)


def test_digits_with_the_paper_recipe(digits: object) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, schedule="step", milestones=(0.7,))
    model = digits_model("hamiltonian")
    result = fit(model, digits, cfg, "cpu")
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_val_accuracy > 0.3  # chance is 0.1
    assert all(p.abs().max().item() <= 1.0 for p in model.parameters())
    assert set(result.best_state) == set(model.state_dict())


def test_time_smoothness_regulariser_smooths_the_weights_in_time(digits: object) -> None:
    base = {"epochs": 2, "batch_size": 64, "lr": 0.05, "clip_weights": None, "augment": False}
    rough = digits_model()
    fit(rough, digits, TrainConfig.from_dict({**base, "time_smoothness": 0.0}), "cpu")
    smooth = digits_model()
    fit(smooth, digits, TrainConfig.from_dict({**base, "time_smoothness": 0.05}), "cpu")
    assert time_smoothness(smooth).item() < 0.8 * time_smoothness(rough).item()


def test_failures_carry_the_completed_epochs() -> None:
    class NaNFromEpoch3(NaNInEval):
        evals = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                NaNFromEpoch3.evals += 1
            out = self.inner(x)
            return out * float("nan") if NaNFromEpoch3.evals >= 3 else out

    with pytest.raises(Diverged, match="validation loss at epoch 3") as info:
        fit(NaNFromEpoch3(), toy_data(), config(epochs=5), "cpu")
    assert [h["epoch"] for h in info.value.history] == [1, 2]


@pytest.mark.parametrize("family", ["parabolic", "hamiltonian", "second_order", "resnet"])
def test_weight_decay_falls_on_kernels_and_classifier_only(family: str) -> None:
    model = build_model(Architecture(family=family, widths=(4, 8, 8), depths=(2, 1), in_channels=1))
    decayed, others = weight_decay_groups(model, 3e-4)
    assert (decayed["weight_decay"], others["weight_decay"]) == (3e-4, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    other_names = {names[id(p)] for p in others["params"]}
    assert decayed_names | other_names == set(names.values())
    assert not decayed_names & other_names
    # 4-d kernels and the classifier (weight and bias) decay; norm scales and shifts do not
    for name, p in model.named_parameters():
        kernel = p.dim() == 4
        classifier = name.startswith("classifier.")
        assert (name in decayed_names) == (kernel or classifier), name
    assert {"classifier.weight", "classifier.bias"} <= decayed_names
    unit_norm = {
        "resnet": "units.0.blocks.0.norm1.weight",
        "hamiltonian": "units.0.layers_y.0.norm.bias",
    }.get(family, "units.0.layers.0.norm.bias")
    assert {"opening.1.weight", "connectors.0.1.bias", unit_norm} <= other_names
    [only] = weight_decay_groups(nn.Linear(2, 2), 0.1)
    assert only["weight_decay"] == 0.1 and len(only["params"]) == 2


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_optimiser_uses_the_weight_decay_groups(optimizer: str) -> None:
    model = build_model(Architecture(family="parabolic", widths=(4, 4), depths=(2,), in_channels=1))
    step = train_module._Step(model, config(optimizer=optimizer, weight_decay=0.01),
                              torch.device("cpu"), "off", False)
    groups = step.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # a step with zero gradients: the decay moves the kernels and leaves the norms alone
    with torch.no_grad():
        norms = [p.clone() for p in groups[1]["params"]]
        kernels = [p.clone() for p in groups[0]["params"]]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    step.optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(norms, groups[1]["params"]))
    moved = [not torch.equal(a, b) for a, b in zip(kernels, groups[0]["params"]) if a.abs().sum() > 0]
    assert moved and all(moved)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_fused_step_updates_as_the_default_one(monkeypatch: pytest.MonkeyPatch,
                                                    optimizer: str) -> None:
    """On the CPU the run uses torch's fused update; with the run's settings (weight-decay groups,
    Nesterov momentum) it moves the weights as the default update does."""
    models, steps = [], []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(train_module, "FUSED_DEVICES", devices)
        torch.manual_seed(0)
        models.append(build_model(Architecture(family="parabolic", widths=(4, 4), depths=(2,),
                                               in_channels=1)))
        steps.append(train_module._Step(models[-1], config(optimizer=optimizer, lr=0.05,
                                                           weight_decay=0.01, nesterov=True),
                                        torch.device("cpu"), "off", False))
    assert steps[0].optimizer.defaults["fused"] is True
    assert not steps[1].optimizer.defaults["fused"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in models[0].parameters()]
        for model, step in zip(models, steps):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            step.optimizer.step()
    for fused, default in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-6)


def _momentum_run(form: str, rates: list[float]) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    step = train_module._Step(model, config(momentum_form=form, weight_decay=0.0),
                              torch.device("cpu"), "off", False)
    data = blobs(40, 3)
    batches = [(data.x[i:i + 8], data.y[i:i + 8]) for i in range(0, 40, 8)]
    step.epoch(batches, 1, lambda i: rates[i])
    return [p.detach().clone() for p in model.parameters()]


def test_meganet_momentum_is_meganets_sgd_update() -> None:
    """momentum_form "meganet": V = lr g + μ V, θ -= V (Meganet.m's sgd), with the rate changing
    between steps; "torch" differs once the rate changes, and agrees while it is constant."""
    rates = [0.1, 0.1, 0.05, 0.02, 0.02]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    data = blobs(40, 3)
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    for k, i in enumerate(range(0, 40, 8)):
        model.zero_grad()
        F.cross_entropy(model(data.x[i:i + 8]), data.y[i:i + 8]).backward()
        with torch.no_grad():
            for p, v in zip(model.parameters(), velocity):
                v.mul_(0.9).add_(rates[k] * p.grad)
                p.sub_(v)
    meganet = _momentum_run("meganet", rates)
    for got, expected in zip(meganet, model.parameters()):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    plain = _momentum_run("torch", rates)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, meganet)) > 1e-3
    for a, b in zip(_momentum_run("torch", [0.1] * 5), _momentum_run("meganet", [0.1] * 5)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"^train\.momentum_form: .*allowed: torch, or meganet "
                                         r"with optimizer sgd and nesterov false"):
        config(momentum_form="meganet", optimizer="adamw")
    with pytest.raises(ValueError, match=r"^train\.momentum_form: .*allowed: torch \| meganet"):
        config(momentum_form="heavy_ball")


def test_the_trainer_uses_the_configured_time_smoothness_form(monkeypatch: pytest.MonkeyPatch,
                                                               digits: object) -> None:
    import pdenas.families as families

    forms = []
    real = families.time_smoothness

    def spy(model: nn.Module, pairs: object = None, **options: object) -> torch.Tensor:
        forms.append(options.get("form"))
        return real(model, pairs, **options)

    monkeypatch.setattr(families, "time_smoothness", spy)
    for form in ("total_variation", "meganet"):
        cfg = config(epochs=1, batch_size=256, time_smoothness=1e-3, time_smoothness_form=form)
        fit(digits_model(), digits, cfg, "cpu")
        assert forms and set(forms) == {form}
        forms.clear()
    assert TrainConfig().time_smoothness_form == "total_variation"


@pytest.mark.parametrize("native", [True, False])
def test_amp_mode_on_the_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """bf16 autocast runs on a CPU only where the processor computes bf16 natively; fp16 never
    does; CUDA gets what was asked."""
    monkeypatch.setattr(train_module, "_cpu_has_native_bf16", lambda: native)
    assert amp_mode("bf16", "cpu") == ("bf16" if native else "off")
    assert amp_mode("fp16", "cpu") == "off" and amp_mode("off", "cpu") == "off"
    assert amp_mode("fp16", "cuda") == "fp16" and amp_mode("bf16", "cuda:0") == "bf16"


def _conv_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_trains_the_convolutions_in_bf16_and_keeps_fp32_weights(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """With native bf16 the convolutions of training and validation compute in bf16 (the weights
    and the recorded losses stay fp32, and the run learns); without it the same config is the
    fp32 run to the last bit."""
    monkeypatch.setattr(train_module, "_cpu_has_native_bf16", lambda: native)
    model = toy_model()
    seen = _conv_output_dtypes(model)
    result = fit(model, toy_data(), config(epochs=3, amp="bf16"), "cpu")
    plain = fit(toy_model(), toy_data(), config(epochs=3), "cpu")
    assert set(seen) == ({torch.bfloat16} if native else {torch.float32})
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for v in result.best_state.values() if v.is_floating_point())
    losses = [h["train_loss"] for h in result.history]
    if native:
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
        assert losses[0] == pytest.approx(plain.history[0]["train_loss"], rel=0.05)
        assert losses != [h["train_loss"] for h in plain.history]
    else:
        assert losses == [h["train_loss"] for h in plain.history]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_reports_its_compile_time() -> None:
    """``compile: true`` trains through torch.compile (inductor on the CPU): the same losses as
    eager up to float rounding, and the first epoch records the compiling step's seconds."""
    eager = fit(toy_model(), toy_data(), config(epochs=2), "cpu")
    compiled = fit(toy_model(), toy_data(), dataclasses.replace(config(epochs=2), compile=True),
                   "cpu")
    for a, b in zip(compiled.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1 / 128)
    assert compiled.history[0]["compile_seconds"] > 0
    assert "compile_seconds" not in compiled.history[1] and "compile_seconds" not in eager.history[0]


@pytest.mark.parametrize(("key", "replacement"), [
    ("compile", "PDENAS_COMPILE=1"), ("channels_last", "always on")])
def test_keys_that_left_the_study_name_what_replaces_them(key: str, replacement: str) -> None:
    with pytest.raises(ValueError, match=rf"^train\.{key}: removed; .*{replacement}"):
        TrainConfig.from_dict({key: True})


def test_meganet_sets_both_of_the_authors_forms() -> None:
    """One switch for reproducing the authors' runs: Meganet.m's momentum update and its
    time-smoothness regulariser; the default is torch's and the total variation in time."""
    authors = TrainConfig.from_dict({"meganet": True})
    assert (authors.momentum_form, authors.time_smoothness_form) == ("meganet", "meganet")
    plain = TrainConfig.from_dict({})
    assert (plain.momentum_form, plain.time_smoothness_form) == ("torch", "total_variation")
    assert TrainConfig.from_dict(authors.to_dict()) == authors  # a record's train reads back
    for key in ("momentum_form", "time_smoothness_form"):
        with pytest.raises(ValueError, match=rf"^train\.{key}: removed; use train\.meganet: true"):
            TrainConfig.from_dict({key: "meganet"})


def test_a_stored_train_section_of_an_earlier_version_reads() -> None:
    """A record written before keys left the study (channels_last, compile, the two forms,
    nesterov) still reads for retraining and export, with what it stored."""
    old = {"epochs": 3, "channels_last": True, "compile": False, "nesterov": False,
           "momentum_form": "meganet", "time_smoothness_form": "meganet"}
    train = TrainConfig.from_stored(old)
    assert train.epochs == 3 and train.momentum_form == "meganet" and train.channels_last is True
    with pytest.raises(ValueError, match="removed"):
        TrainConfig.from_dict(old)
