"""bf16 autocast on the CPU: the seconds of a CPU study's trial in fp32 and in bf16, same process.

For candidates of the ``cpu_small`` space (every family, the smallest and the largest widths),
``pdenas.train.estimate_seconds`` predicts the seconds of one trial of
``studies/fashion_mnist_cpu.yaml``'s protocol (12,000 training and 3,000 validation images of
28x28, 6 epochs, channels-last batches, AdamW, the rate moved every step) from timed real
training steps, once with ``amp: off`` and once with ``amp: bf16``, at batch 32 and 64, on one
torch thread. The two precisions alternate and each figure is the lower of two calibrations, so
both meet the same machine state. Synthetic images: the data's content does not change the speed.
On a processor without native bf16 (``amp_mode`` says "off") both columns are the fp32 run.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_bf16.py [--steps 20] [--out benchmarks/cpu_bf16.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import torch

from pdenas import build_model
from pdenas.architecture import Architecture
from pdenas.data import TensorSplit
from pdenas.train import TrainConfig, amp_mode, estimate_seconds

CANDIDATES = [  # (name, family options, widths, steps per unit)
    ("resnet 16-32-64 x1", {"family": "resnet"}, (16, 32, 64, 64), (1, 1, 1)),
    ("resnet 32-64-128 x1", {"family": "resnet"}, (32, 64, 128, 128), (1, 1, 1)),
    ("resnet 32-64-128 x2", {"family": "resnet"}, (32, 64, 128, 128), (2, 2, 2)),
    ("resnet 48-96-192 x1", {"family": "resnet"}, (48, 96, 192, 192), (1, 1, 1)),
    ("parabolic 16-32-64 x1, TV", {"family": "parabolic", "norm": "tv"}, (16, 32, 64, 64),
     (1, 1, 1)),
    ("parabolic 48-96-192 x2, batch norm", {"family": "parabolic", "norm": "batch"},
     (48, 96, 192, 192), (2, 2, 2)),
    ("hamiltonian 32-64-128 x2, batch norm", {"family": "hamiltonian", "norm": "batch"},
     (32, 64, 128, 128), (2, 2, 2)),
    ("second_order 16-32-64 x2, TV", {"family": "second_order", "norm": "tv"}, (16, 32, 64, 64),
     (2, 2, 2)),
]


def study_protocol(batch: int, amp: str) -> TrainConfig:
    """fashion_mnist_cpu's training settings that bear on speed, at ``batch`` and ``amp``."""
    return TrainConfig(epochs=6, batch_size=batch, optimizer="adamw", lr=2e-3,
                       schedule_interval="step", warmup_epochs=0.3, channels_last=True,
                       label_smoothing=0.1, clip_weights=None, time_smoothness=0.0,
                       augment=False, amp=amp)


def _data() -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorSplit(torch.randn(n, 1, 28, 28, generator=g),  # noqa: E731
                                  torch.randint(0, 10, (n,), generator=g))
    return SimpleNamespace(train=split(12_000), val=split(3_000), flip=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per calibration")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = _data()
    lines = [f"`OMP_NUM_THREADS=1 python benchmarks/cpu_bf16.py --steps {args.steps}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
             f"one thread; bf16 here: {amp_mode('bf16', 'cpu')}.", "",
             "| candidate | batch | fp32 s / trial | bf16 s / trial | fp32 / bf16 |",
             "|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name, family, widths, depths in CANDIDATES:
        torch.manual_seed(0)
        model = build_model(Architecture(widths=widths, depths=depths, in_channels=1,
                                         num_classes=10, step_size=0.5, **family))
        for batch in (32, 64):
            seconds: dict[str, float] = {"off": float("inf"), "bf16": float("inf")}
            for _ in range(2):
                for amp in seconds:
                    seconds[amp] = min(seconds[amp], estimate_seconds(
                        model, data, study_protocol(batch, amp), "cpu", steps=args.steps))
            line = (f"| {name} | {batch} | {seconds['off']:.0f} | {seconds['bf16']:.0f} | "
                    f"{seconds['off'] / seconds['bf16']:.2f} |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("# bf16 autocast on the CPU\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
