"""The GPU-only paths (issue 14): data resident on the device, bf16 autocast, channels-last,
compiled training, peak CUDA memory of reversible units, and the trial runner on CUDA.

Marked ``cuda`` and skipped where no CUDA device is present (CI has none; ``benchmarks/gpu.py``
measures the same paths' speed). Their CPU halves (autocast ignored with the same result,
channels-last, compiled training) are in ``test_train.py``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pdenas import build_model, build_unit
from pdenas.architecture import Architecture
from pdenas.data import DataConfig, load_data
from pdenas.train import TrainConfig, evaluate, fit

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")


def _train(**changes: object) -> TrainConfig:
    return TrainConfig.from_dict({"epochs": 3, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3,
                                  "augment": True, **changes})


def _digits():
    return load_data(DataConfig(name="digits", train_limit=800, seed=0), DEVICE)


def test_data_stays_on_the_device_and_bf16_channels_last_trains() -> None:
    data = _digits()
    assert data.train.x.device.type == "cuda" and data.val.y.device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(Architecture("parabolic", (16, 16, 16), (2, 2), 0.5, in_channels=1))
    result = fit(model, data, _train(amp="bf16"), DEVICE)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.best_val_accuracy > 0.5  # 10 classes: chance is 0.1
    loss, accuracy = evaluate(model, data.val, DEVICE, amp="bf16", channels_last=True)
    assert math.isfinite(loss) and accuracy == pytest.approx(result.best_val_accuracy, abs=0.05)


def test_bf16_reaches_the_accuracy_of_fp32() -> None:
    data = _digits()
    runs = {}
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        model = build_model(Architecture("resnet", (16, 16, 16), (1, 1), 1.0, in_channels=1,
                                         norm="batch"))
        runs[amp] = fit(model, data, _train(amp=amp), DEVICE).best_val_accuracy
    assert runs["bf16"] >= runs["off"] - 0.05


def test_compiled_training_on_cuda_reports_its_compile_time() -> None:
    torch.manual_seed(0)
    model = build_model(Architecture("hamiltonian", (16, 16, 16), (2, 2), 0.5, in_channels=1))
    result = fit(model, _digits(), dataclasses.replace(_train(amp="bf16"), compile=True), DEVICE)
    assert result.history[0]["compile_seconds"] > 0
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_reversible_units_need_a_tenth_of_the_memory_at_depth_64() -> None:
    """At depth 64 a reversible unit's peak CUDA memory for one training step is at most 10 % of
    the plain unit's. On the CPU it saves 1 state for backward against the plain unit's 265."""
    peaks = {}
    for reversible in (False, True):
        unit = build_unit("hamiltonian", width=32, depth=64, step_size=0.1, norm="tv",
                          reversible=reversible).to(DEVICE).train()
        x = torch.randn(64, 32, 16, 16, device=DEVICE, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        unit(x).square().mean().backward()
        torch.cuda.synchronize()
        peaks[reversible] = torch.cuda.max_memory_allocated() - before
    assert peaks[True] <= 0.10 * peaks[False], peaks
