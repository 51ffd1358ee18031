"""pdenas's ``fit`` against a bare PyTorch training loop on the same model, data and settings.

For a ResNet and a PDE (parabolic) candidate of the paper's CIFAR-10 layout, with data already in
memory (synthetic CIFAR-shaped tensors: the content does not change the speed), the same batch
size, optimiser, epochs and validation pass, once with plain settings (no augmentation, clipping
or regulariser) and once with the paper's (flips and 2-pixel crops, weight clipping to [-1, 1]
after every step, Meganet's time-smoothness regulariser at 2e-4), the bare loop doing the same in
the plainest PyTorch. Reported: images per second of each and their ratio (fit / bare), run
alternately in one process (the median of the repeats' ratios), and the bare loop's per-step
cost broken down into augmentation, forward + loss, regulariser, backward, optimiser step and
clipping. Usage::

    OMP_NUM_THREADS=1 python benchmarks/trainer.py [--images 1024] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pdenas import build_model, paper_architecture
from pdenas.data import TensorSplit
from pdenas.families import PDEUnit
from pdenas.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
BATCH = 125  # the paper's


class Data:
    """What ``fit`` needs of the data, in memory."""

    def __init__(self, images: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.train = TensorSplit(torch.randn(images, 3, 32, 32, generator=g),
                                 torch.randint(0, 10, (images,), generator=g))
        self.val = TensorSplit(torch.randn(images // 4, 3, 32, 32, generator=g),
                               torch.randint(0, 10, (images // 4,), generator=g))
        self.flip = True


def _pairs(model: torch.nn.Module) -> list[tuple[float, list[torch.Tensor], list[torch.Tensor]]]:
    """(h, θ_j tensors, θ_{j+1} tensors) per unit, the plain way."""
    out = []
    for unit in model.modules():
        if isinstance(unit, PDEUnit) and unit.depth > 1:
            steps = [[p for layer in unit.step_layers(j) for p in layer.parameters()]
                     for j in range(unit.depth)]
            before = [p for j in range(unit.depth - 1) for p in steps[j]]
            after = [p for j in range(1, unit.depth) for p in steps[j]]
            out.append((unit.step_size, before, after))
    return out


def bare(model: torch.nn.Module, data: Data, config: TrainConfig, paper: bool,
         times: dict[str, float] | None = None) -> float:
    """The bare loop; returns seconds. With ``times``, adds each part's seconds to it."""
    decay = [p for n, p in model.named_parameters() if "norm" not in n and "bn" not in n]
    rest = [p for n, p in model.named_parameters() if "norm" in n or "bn" in n]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=config.lr,
                                momentum=config.momentum)
    pairs = _pairs(model) if paper else []
    eps = 1e-3
    g = torch.Generator().manual_seed(0)
    clock = time.perf_counter
    start = clock()
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        model.train()
        order = torch.randperm(len(data.train.y), generator=g)
        for i in order.split(BATCH)[: len(order) // BATCH]:
            t0 = clock()
            x, y = data.train.x[i], data.train.y[i]
            if paper:  # as fit does: each image its own flip and its own crop window
                flip = torch.rand(len(i), generator=g) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                x = F.pad(x, (2, 2, 2, 2))
                shifts = torch.randint(0, 5, (len(i), 2), generator=g).tolist()
                x = torch.stack([image[:, dy:dy + 32, dx:dx + 32]
                                 for image, (dy, dx) in zip(x, shifts)])
            ta = clock()
            loss = F.cross_entropy(model(x), y)
            t1 = clock()
            if paper:
                reg = sum((torch.sqrt(((b - a) / h) ** 2 + eps) - math.sqrt(eps)).sum()
                          for h, before, after in pairs for a, b in zip(before, after))
                loss = loss + config.time_smoothness * reg
            t2 = clock()
            optimizer.zero_grad()
            loss.backward()
            t3 = clock()
            optimizer.step()
            t4 = clock()
            if paper:
                with torch.no_grad():
                    for p in model.parameters():
                        p.clamp_(-1.0, 1.0)
            t5 = clock()
            if times is not None:
                for key, value in (("augmentation", ta - t0), ("forward + loss", t1 - ta),
                                   ("regulariser", t2 - t1),
                                   ("backward", t3 - t2), ("optimiser step", t4 - t3),
                                   ("clipping", t5 - t4)):
                    times[key] = times.get(key, 0.0) + value
        model.eval()
        with torch.no_grad():
            for j in range(0, len(data.val.y), 512):
                F.cross_entropy(model(data.val.x[j:j + 512]), data.val.y[j:j + 512])
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "trainer.md"))
    args = parser.parse_args()
    data = Data(args.images)
    steps = args.epochs * (args.images // BATCH)
    rows, breakdowns = [], []
    for family in ("resnet", "parabolic"):
        arch = paper_architecture("cifar10", family)
        for paper in (False, True):
            config = TrainConfig.from_dict({
                "epochs": args.epochs, "batch_size": BATCH, "optimizer": "sgd", "lr": 0.1,
                "momentum": 0.9, "weight_decay": 2e-4, "schedule": "cosine",
                "augment": paper, "clip_weights": 1.0 if paper else None,
                "time_smoothness": 2e-4 if paper else 0.0, "channels_last": False})
            ours, theirs = [], []
            torch.manual_seed(0)  # untimed warm-up of both (allocator, kernels, lazy state)
            fit(build_model(arch), data, config, "cpu")
            bare(build_model(arch), data, config, paper)
            for _ in range(args.repeats):  # alternate, so load on the machine hits both alike
                torch.manual_seed(0)
                model = build_model(arch)
                start = time.perf_counter()
                fit(model, data, config, "cpu")
                ours.append(time.perf_counter() - start)
                torch.manual_seed(0)
                theirs.append(bare(build_model(arch), data, config, paper))
            times: dict[str, float] = {}
            torch.manual_seed(0)
            bare(build_model(arch), data, config, paper, times)
            images = args.epochs * (args.images // BATCH) * BATCH
            a, b = statistics.median(ours), statistics.median(theirs)
            # Each repeat's fit and bare run follow each other, so their ratio shares the
            # machine's load of that moment; the median of those ratios is what is reported.
            ratios = sorted(t / o for o, t in zip(ours, theirs))
            rows.append((family, "paper" if paper else "plain", images / a, images / b,
                         statistics.median(ratios), ratios[0], ratios[-1]))
            breakdowns.append((family, "paper" if paper else "plain",
                               {k: 1000 * v / steps for k, v in times.items()}))
    lines = ["# fit against a bare PyTorch loop", "",
             f"`OMP_NUM_THREADS={torch.get_num_threads()} python benchmarks/trainer.py --images "
             f"{args.images} --epochs {args.epochs} --repeats {args.repeats}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s); the paper's CIFAR-10 layout, batch {BATCH}, "
             "SGD, cosine, a validation pass per epoch. Images per second: the median of the "
             "repeats; ratio: the median of the repeats' ratios (bare seconds / fit seconds of "
             "the runs made one after the other), with the lowest and highest.", "",
             "| candidate | settings | fit img/s | bare img/s | ratio (fit / bare) | "
             "lowest – highest |",
             "|---|---|---:|---:|---:|---|"]
    lines += [f"| {f} | {s} | {a:,.0f} | {b:,.0f} | {r:.3f} | {lo:.3f} – {hi:.3f} |"
              for f, s, a, b, r, lo, hi in rows]
    lines += ["", "Bare loop, milliseconds per step:", "",
              "| candidate | settings | " + " | ".join(breakdowns[0][2]) + " |",
              "|---|---|" + "---:|" * len(breakdowns[0][2])]
    lines += [f"| {f} | {s} | " + " | ".join(f"{v:.1f}" for v in t.values()) + " |"
              for f, s, t in breakdowns]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
