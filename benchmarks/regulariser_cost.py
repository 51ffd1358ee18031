"""Per-step cost of the smoothness-in-time regulariser and of the weight clipping.

At the paper's CIFAR-10 layout (widths 32, 64, 112, 112; n_t = 3), batch 125, 32x32 inputs, one
thread: the median time of (a) the regulariser's forward and backward, (b) the box clipping of all
weights, (c) one whole SGD step with both, and (d) the same step with neither (a bare loop).

Run: OMP_NUM_THREADS=1 python benchmarks/regulariser_cost.py [--device cpu|cuda] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pdenas import build_model, paper_architecture
from pdenas.families import clip_weights_, time_smoothness
from pdenas.families._stability import consecutive_step_parameters


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=125)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
    print("| family | regulariser fwd+bwd ms | clip ms | step ms (bare) | step ms (reg + clip) |"
          " ratio bare / full |")
    print("|---|---|---|---|---|---|")
    for family in ("parabolic", "hamiltonian", "second_order"):
        model = build_model(paper_architecture("cifar10", family)).to(device)
        pairs = consecutive_step_parameters(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(args.batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)

        def regulariser() -> None:
            time_smoothness(model, pairs).backward()

        def clip() -> None:
            clip_weights_(model, 1.0)

        def step(full: bool) -> None:
            loss = F.cross_entropy(model(x), y)
            if full:
                loss = loss + 2e-4 * time_smoothness(model, pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if full:
                clip_weights_(model, 1.0)

        reg = _median_ms(regulariser, args.repeats, device)
        clipped = _median_ms(clip, args.repeats, device)
        bare = _median_ms(lambda: step(False), args.step_repeats, device)
        full = _median_ms(lambda: step(True), args.step_repeats, device)
        print(f"| {family} | {reg:.3f} | {clipped:.3f} | {bare:.1f} | {full:.1f} |"
              f" {bare / full:.3f} |")


if __name__ == "__main__":
    main()
