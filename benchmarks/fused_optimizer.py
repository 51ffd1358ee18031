"""torch's fused optimiser step against its default (``foreach``) in pdenas's trainer, same process.

For the candidates of ``benchmarks/cpu_bf16.py`` (the ``cpu_small`` space: every family, the
smallest and the largest widths), ``pdenas.train.estimate_seconds`` predicts the seconds of one
trial of ``studies/fashion_mnist_cpu.yaml``'s protocol (12,000 training and 3,000 validation
images of 28x28, 6 epochs, batch 32, channels-last, bf16 autocast where the CPU has it, AdamW, the
rate moved every step) from timed real training steps through ``fit``'s step, once with the
default update (``pdenas.train.FUSED_DEVICES`` emptied) and once fused (pdenas's default on the
CPU and CUDA), on one torch thread. The two alternate and each figure is the lowest of three
calibrations, so both meet the same machine state. Synthetic images: the content does not change
the speed. Usage::

    OMP_NUM_THREADS=1 python benchmarks/fused_optimizer.py [--steps 20] [--out benchmarks/fused_optimizer.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from cpu_bf16 import CANDIDATES, _data, study_protocol  # the same candidates, data, settings
from pdenas import build_model, train
from pdenas.architecture import Architecture
from pdenas.train import amp_mode, estimate_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per calibration")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = _data()
    config = study_protocol(32, "bf16")
    lines = [f"`OMP_NUM_THREADS=1 python benchmarks/fused_optimizer.py --steps {args.steps}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
             f"one thread, AdamW, batch 32; autocast here: {amp_mode('bf16', 'cpu')}.", "",
             "| candidate | default s / trial | fused s / trial | default / fused |",
             "|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    ratios = []
    for name, family, widths, depths in CANDIDATES:
        torch.manual_seed(0)
        model = build_model(Architecture(widths=widths, depths=depths, in_channels=1,
                                         num_classes=10, step_size=0.5, **family))
        seconds = {"default": float("inf"), "fused": float("inf")}
        for _ in range(3):
            for kind in seconds:
                train.FUSED_DEVICES = ("cpu", "cuda") if kind == "fused" else ()
                seconds[kind] = min(seconds[kind], estimate_seconds(
                    model, data, config, "cpu", steps=args.steps))
        ratios.append(seconds["default"] / seconds["fused"])
        line = (f"| {name} | {seconds['default']:.0f} | {seconds['fused']:.0f} | "
                f"{ratios[-1]:.2f} |")
        lines.append(line)
        print(line, flush=True)
    ratios.sort()
    lines += ["", f"Median default / fused: {ratios[len(ratios) // 2]:.2f} "
              f"(lowest {ratios[0]:.2f}, highest {ratios[-1]:.2f})."]
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("# Fused optimiser step\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
