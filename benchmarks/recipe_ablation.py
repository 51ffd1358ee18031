"""Which parts of a training recipe pay under ``search_budget.py``'s protocol, one candidate each.

A bare PyTorch loop (written here so that each lever is one flag) trains pdenas's ResNet candidate
32-64-128-128, one block per unit, on the same data as ``search_budget.py`` (Debian's
Fashion-MNIST, 12,000 train / 3,000 validation from the first 15,000 training images, the official
10,000 test images), 6 epochs, AdamW with pdenas's weight-decay groups, label smoothing 0.1, no
augmentation, one torch thread. The levers: the cosine per epoch (as ``CosineAnnealingLR`` stepped
each epoch, and pdenas before ``schedule_interval``) or per step with a linear warm-up over the
first 5 % of the steps; batch 64 or 32; an exponential moving average of the weights (evaluated in
its place); random flips in training with flip-averaged predictions at evaluation; SGD with
Nesterov momentum; decoupled weight decay 0.05; label smoothing 0.2. Prints one JSON line per run:
the validation curve, the best validation accuracy and the test accuracy of its epoch. Usage::

    OMP_NUM_THREADS=1 python benchmarks/recipe_ablation.py '[{"name": "base"},
        {"name": "per-step", "per_step": true, "warmup": 0.05, "seed": 1}]'

(Several processes side by side, one per core, for the table in ``recipe_ablation.md``.)
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from pdenas import build_model
from pdenas.architecture import Architecture
from pdenas.data import DataConfig, load_data
from pdenas.data.batching import random_flip
from pdenas.train import weight_decay_groups


def run(name: str, *, seed: int = 0, lr: float = 3e-3, bs: int = 64, per_step: bool = False,
        warmup: float = 0.0, ema: float = 0.0, flip: bool = False, tta: bool = False,
        ls: float = 0.1, wd: float = 2e-4, opt: str = "adamw", channels_last: bool = False,
        epochs: int = 6) -> dict:
    """Trains the candidate with one combination of levers and returns its figures."""
    data = load_data(DataConfig(name="fashion_mnist", train_limit=15_000, val_fraction=0.2, seed=0))
    torch.manual_seed(seed)
    model = build_model(Architecture(family="resnet", widths=(32, 64, 128, 128), depths=(1, 1, 1),
                                     in_channels=1, num_classes=10))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    groups = weight_decay_groups(model, wd)
    optimizer = (torch.optim.AdamW(groups, lr=lr, weight_decay=wd) if opt == "adamw" else
                 torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd))
    averaged = copy.deepcopy(model) if ema else None
    generator = torch.Generator().manual_seed(seed)
    n = len(data.train.y)
    steps = n // bs
    total = epochs * steps

    def rate(t: int, epoch: int) -> float:
        if not per_step:
            return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        ramp = warmup * total
        if t < ramp:
            return lr * (t + 1) / ramp
        return lr * 0.5 * (1 + math.cos(math.pi * (t - ramp) / max(1, total - ramp)))

    def accuracy(net: torch.nn.Module, split) -> float:  # type: ignore[no-untyped-def]
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(split.y), 512):
                x = split.x[i:i + 512]
                p = net(x).softmax(1)
                if tta:
                    p = p + net(x.flip(3)).softmax(1)
                correct += (p.argmax(1) == split.y[i:i + 512]).sum().item()
        return correct / len(split.y)

    t, best, curve, start = 0, (-1.0, None), [], time.monotonic()
    net = model
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            x, y = data.train.x[idx], data.train.y[idx]
            if flip:
                x = random_flip(x, generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = rate(t, epoch)
            loss = F.cross_entropy(model(x), y, label_smoothing=ls)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t += 1
            if averaged is not None:
                decay = min(ema, (1 + t) / (10 + t))
                with torch.no_grad():
                    for pa, pm in zip(averaged.parameters(), model.parameters()):
                        pa.lerp_(pm, 1 - decay)
                    for ba, bm in zip(averaged.buffers(), model.buffers()):
                        ba.copy_(bm)
        net = averaged if averaged is not None else model
        val = accuracy(net, data.val)
        curve.append(round(100 * val, 1))
        if val > best[0]:
            best = (val, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best[1])
    return {"name": name, "seed": seed, "val": curve, "best_val": best[0],
            "test": accuracy(net, data.test), "s": round(time.monotonic() - start)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in json.loads(sys.argv[1]):
        print(json.dumps(run(**spec)), flush=True)
