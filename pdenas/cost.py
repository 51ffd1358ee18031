"""Cost of a candidate network: parameters, FLOPs, latency and training memory.

Every function here measures a model without changing it: the model is left in its original
train/eval mode, its weights, buffers (batch-norm running statistics included) and gradients are
restored, and the global random state is not consumed. FLOPs come from
``torch.utils.flop_counter``, which (unlike hook-based counters) sees both convolutions of a PDE
unit's symmetric layer: the ``conv2d`` and the ``conv_transpose2d`` that share one weight.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Cost",
    "count_flops",
    "count_parameters",
    "measure_cost",
    "measure_latency",
    "training_memory",
]


@dataclass(frozen=True)
class Cost:
    """What a candidate costs to run and to train.

    Attributes:
        params: Number of parameters (all of them, trainable or not).
        flops: Floating-point operations of one forward pass per image (a multiply-add counts 2).
        latency_ms: Median inference latency of a batch of one, in milliseconds.
        latency_batch_ms: Median inference latency of a batch of the training batch size, in
            milliseconds.
        memory_bytes: On CUDA, the peak memory one training step (forward and backward) allocates
            above what was allocated before it, plus the parameters and buffers. On the CPU, the
            bytes of the tensors one training step saves for backward (parameters excluded).
    """

    params: int
    flops: int
    latency_ms: float
    latency_batch_ms: float
    memory_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-ready dict."""
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    """Counts the parameters of a model (shared parameters once).

    Args:
        model: The network.

    Returns:
        The total number of parameter elements.
    """
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Counts the FLOPs of one forward pass of one image.

    Args:
        model: The network; it stays in its mode and its state is untouched (run in eval mode
            without gradients).
        input_shape: Shape of one image, (C, H, W).

    Returns:
        FLOPs per image as counted by ``torch.utils.flop_counter.FlopCounterMode``.
    """
    x = _example_input(model, input_shape, 1)
    with _inference(model), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Measures the median inference latency of a batch.

    Args:
        model: The network, already on ``device``.
        input_shape: Shape of one image, (C, H, W).
        batch_size: Images per forward pass.
        device: Where to run; defaults to the device of the model's parameters.
        repeats: Timed forward passes (the median is returned).
        warmup: Untimed forward passes before timing.

    Returns:
        The median latency in milliseconds.

    Raises:
        ValueError: When ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    x = _example_input(model, input_shape, batch_size, device)
    cuda = x.device.type == "cuda"
    times = []
    with _inference(model):
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def training_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: torch.device | str | None = None,
) -> int:
    """Measures the memory one training step of a batch needs.

    On CUDA this is the peak of ``torch.cuda.max_memory_allocated`` during a forward and backward
    pass above what was allocated before it, plus the bytes of the parameters and buffers. On the
    CPU it is the bytes of the unique storages saved for backward during the forward pass
    (recorded with ``torch.autograd.graph.saved_tensors_hooks``; parameters excluded).

    Args:
        model: The network, already on ``device``; run in train mode, then restored (mode,
            buffers, gradients and random state).
        input_shape: Shape of one image, (C, H, W).
        batch_size: Images in the training batch.
        device: Where to run; defaults to the device of the model's parameters.

    Returns:
        The memory in bytes.
    """
    x = _example_input(model, input_shape, batch_size, device)
    with _preserved(model, x.device):
        model.train()
        if x.device.type == "cuda":
            return _cuda_step_memory(model, x)
        return _saved_tensor_bytes(model, x)


def measure_cost(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: torch.device | str | None = None,
    repeats: int = 20,
    warmup: int = 3,
) -> Cost:
    """Measures everything in :class:`Cost`.

    Args:
        model: The network, already on ``device``; left as it was found.
        input_shape: Shape of one image, (C, H, W).
        batch_size: The training batch size (for ``latency_batch_ms`` and ``memory_bytes``).
        device: Where to run; defaults to the device of the model's parameters.
        repeats: Timed forward passes per latency.
        warmup: Untimed forward passes before timing.

    Returns:
        The cost of the model.
    """
    return Cost(
        params=count_parameters(model),
        flops=count_flops(model, input_shape),
        latency_ms=measure_latency(model, input_shape, 1, device, repeats, warmup),
        latency_batch_ms=measure_latency(model, input_shape, batch_size, device, repeats, warmup),
        memory_bytes=training_memory(model, input_shape, batch_size, device),
    )


def _example_input(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A reproducible random batch in the model's floating dtype, made without the global RNG."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    dtype = floating[0].dtype if floating else torch.float32
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *shape), generator=generator, dtype=dtype).to(device)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients for the duration, then the model's own mode back."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.train(training)


@contextmanager
def _preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restores modes, buffers, gradients and the random state after a training step."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for param, grad in grads:
            param.grad = grad
        for module, training in modes.items():
            module.train(training)


def _saved_tensor_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages the forward pass saves for backward."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages:
            saved[ptr] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    del out
    return sum(saved.values())


def _cuda_step_memory(model: nn.Module, x: torch.Tensor) -> int:
    """Peak CUDA memory of a forward and backward pass above the memory allocated before it."""
    state_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    out = model(x)
    out.float().sum().backward()
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device)
    del out
    return int(peak - before + state_bytes)
