"""One unattended GPU benchmark: throughput, precision, compilation, reversible memory and trials
per hour with several trials sharing the GPU.

Prints (and writes to ``benchmarks/gpu.md``) one table per question:

1. Training images per second of the paper's CIFAR-10 layout of each family (and the ResNet
   baseline) at batch 128 and 512, fp32 and bf16 autocast, eager and ``torch.compile``d (with the
   compile time), channels-last on CUDA. Synthetic CIFAR-shaped tensors on the device: the data's
   content does not change the speed.
2. Peak CUDA memory of one training step of a plain against a reversible unit (hamiltonian,
   width 64, 32x32, batch 128) at 4, 16 and 64 time steps.
3. Trials per hour of a Fashion-MNIST study (images padded to 32x32, 6,000 training images, 2
   epochs, small nets) with 1, 2, 4 and 8 ``pdenas search --workers`` processes sharing the GPU,
   with the GPU's mean utilisation (``nvidia-smi``) while they ran.

``--smoke`` runs every part at toy sizes on whatever device there is (the CPU here), so the script
is known to run end to end before a GPU machine is lent. Usage::

    python benchmarks/gpu.py [--smoke] [--minutes-per-row 1.5] [--out benchmarks/gpu.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pdenas import Architecture, build_model, paper_architecture

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("parabolic", "hamiltonian", "second_order", "resnet")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(family: str, batch: int, dtype: str, compiled: bool, device: torch.device,
               steps: int, size: int) -> tuple[float, float]:
    """(training images per second, compile seconds) of one configuration."""
    torch.manual_seed(0)
    arch = paper_architecture("cifar10", family)
    if size != 32:
        arch = Architecture.from_dict({**arch.to_dict(), "widths": [8, 16, 16, 16]})
    model = build_model(arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(run(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()  # the first step compiles
    _sync(device)
    compile_seconds = time.perf_counter() - start if compiled else 0.0
    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start), compile_seconds


def reversible_memory(depth: int, reversible: bool, device: torch.device, size: int,
                      batch: int) -> float | None:
    """Peak CUDA MiB of one training step of a hamiltonian unit (None off CUDA)."""
    if device.type != "cuda":
        return None
    from pdenas import build_unit

    unit = build_unit("hamiltonian", width=64, depth=depth, step_size=0.1, norm="tv",
                      reversible=reversible).to(device).train()
    x = torch.randn(batch, 64, size, size, device=device, requires_grad=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    unit(x).square().mean().backward()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _gpu_utilisation(stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5).stdout
            samples.append(float(out.split()[0]))


def trials_per_hour(workers: int, minutes: float, smoke: bool, device: str) -> tuple[int, float, float | None]:
    """(trials finished, trials per hour, mean GPU utilisation %) of ``workers`` processes."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "space.yaml").write_text(yaml.safe_dump({
            "families": list(FAMILIES), "num_units": 3, "depth": {"low": 1, "high": 3},
            "width": {"base": [8, 16], "growth": [2], "last": "same"},
            "step_size": {"low": 0.2, "high": 1.0, "log": True}, "norm": "tv",
            "family_overrides": {"resnet": {"norm": "batch"}},
            "train": {"optimizer": "adamw", "lr": {"low": 1e-3, "high": 1e-2, "log": True}}}))
        data = ({"name": "digits", "image_size": 16} if smoke else
                {"name": "fashion_mnist", "train_limit": 7500, "image_size": 32})
        (folder / "study.yaml").write_text(yaml.safe_dump({
            "name": f"gpu-{workers}", "data": data, "space": "space.yaml",
            "train": {"epochs": 1 if smoke else 2, "batch_size": 128, "amp": "bf16"},
            "sampler": "random", "early_stop": "none", "n_trials": 1000, "device": device,
            "threads": 1}))
        samples: list[float] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_gpu_utilisation, args=(stop, samples), daemon=True)
        watcher.start()
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "pdenas.cli", "search", str(folder / "study.yaml"),
                        "--out", str(folder / "run"), "--workers", str(workers),
                        "--timeout", str(minutes * 60)], stdout=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        hours = (time.monotonic() - start) / 3600
        stop.set()
        from pdenas.results import load_trials

        finished = int(load_trials(folder / "run")["status"].eq("completed").sum())
    return finished, finished / hours, (sum(samples) / len(samples) if samples else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device")
    parser.add_argument("--minutes-per-row", type=float, default=1.5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.md"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    smoke = args.smoke
    size, steps = (8, 2) if smoke else (32, 20)
    batches = (16,) if smoke else (128, 512)
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    lines = ["# GPU benchmark", "", f"`python benchmarks/gpu.py{' --smoke' if smoke else ''}`, "
             f"{time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}"
             + (f", CUDA {torch.version.cuda}" if cuda else "") + ".", "",
             "## Training images per second (paper CIFAR-10 layout)", "",
             "| family | batch | precision | mode | img/s | compile s |", "|---|---:|---|---|---:|---:|"]
    for family in FAMILIES:
        for batch in batches:
            for dtype in ("fp32", "bf16"):
                for compiled in ((False,) if smoke else (False, True)):
                    rate, compile_s = throughput(family, batch, dtype, compiled, device, steps, size)
                    lines.append(f"| {family} | {batch} | {dtype} | "
                                 f"{'compiled' if compiled else 'eager'} | {rate:,.0f} | "
                                 f"{compile_s:.1f} |")
                    print(lines[-1], flush=True)
    lines += ["", "## Peak CUDA memory of one training step, hamiltonian unit (width 64)", "",
              "| steps | plain MiB | reversible MiB | reversible / plain |", "|---:|---:|---:|---:|"]
    for depth in ((4,) if smoke else (4, 16, 64)):
        plain = reversible_memory(depth, False, device, size, batches[0])
        rev = reversible_memory(depth, True, device, size, batches[0])
        if plain is None:
            lines.append(f"| {depth} | n/a (no CUDA) | n/a | n/a |")
        else:
            lines.append(f"| {depth} | {plain:,.1f} | {rev:,.1f} | {rev / plain:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", f"## Trials per hour with several trials sharing the device "
              f"({args.minutes_per_row:g} min per row)", "",
              "| workers | trials finished | trials per hour | GPU utilisation |",
              "|---:|---:|---:|---:|"]
    for workers in ((1, 2) if smoke else (1, 2, 4, 8)):
        done, rate, used = trials_per_hour(workers, args.minutes_per_row, smoke, device.type)
        lines.append(f"| {workers} | {done} | {rate:,.0f} | "
                     f"{'n/a' if used is None else f'{used:.0f} %'} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
