"""Each paper setting's own cost inside pdenas's training step, in one process.

The paper's CIFAR-10 ResNet, one batch of 125 synthetic CIFAR-shaped images, pdenas's ``_Step`` (the
step ``fit`` runs) with one setting of the paper's recipe at a time: augmentation (per-image
crops and flips), weight clipping, the time-smoothness regulariser. Prints the median of 6 steps
per setting; the plain setting runs first and last to show the noise. Usage::

    OMP_NUM_THREADS=1 python benchmarks/trainer_parts.py
"""

from __future__ import annotations

import statistics
import time

import torch

from pdenas import build_model, paper_architecture
from pdenas.data import TensorSplit, batches
from pdenas.train import TrainConfig, _Step

PLAIN = {"augment": False, "clip_weights": None, "time_smoothness": 0.0}
SETTINGS = (("plain", PLAIN), ("+ augmentation", {**PLAIN, "augment": True}),
            ("+ weight clipping", {**PLAIN, "clip_weights": 1.0}),
            ("+ time smoothness", {**PLAIN, "time_smoothness": 2e-4}), ("plain again", PLAIN))


def step_seconds(split: TensorSplit, settings: dict, generator: torch.Generator) -> float:
    torch.manual_seed(0)
    model = build_model(paper_architecture("cifar10", "resnet"))
    config = TrainConfig.from_dict({"epochs": 1, "batch_size": 125, "lr": 0.1, **settings})
    step = _Step(model, config, torch.device("cpu"), "off", False)
    step.epoch([(split.x, split.y)], 1)  # warm-up
    times = []
    for _ in range(6):
        batch = list(batches(split, 125, shuffle=True, augment=config.augment, flip=True,
                             generator=generator))
        start = time.perf_counter()
        step.epoch(batch, 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(125, 3, 32, 32, generator=g),
                        torch.randint(0, 10, (125,), generator=g))
    print("| setting | ms per step |\n|---|---:|")
    for name, settings in SETTINGS:
        print(f"| {name} | {1000 * step_seconds(split, settings, g):.0f} |", flush=True)


if __name__ == "__main__":
    main()
