"""Float32 drift of the reversible families: how exact is recomputing the states backwards?

For hamiltonian and second_order units at depths 1 to 300 this measures, in float32:

- the reconstruction error ``||x_rec - x|| / ||x||`` after running the unit forward and then
  backwards with ``inverse_step`` from its last state (what the reversible backward pass does);
- the relative error of the reversible gradients (input and every parameter together) against
  plain autograd in float32, next to plain float32's own error against float64 (the noise floor);
- the growth of the state, ``||Y_n|| / ||x||``.

Weights (TV norm, ReLU): "init" is the default init (Kaiming normal). The paper's box clipping to
[-1, 1] changes none of those weights (the script checks and prints the fraction), so clipping at
init is the same row. To see what clipping does once weights have grown in training, "x4" scales
every conv weight by 4 (a stand-in for grown weights) and "x4+clip" then clips to [-1, 1].
The input is ReLU(N(0, 1)) feature maps, as after a connector.

Run from the repository root: ``python benchmarks/reversible_drift.py`` (about a minute, one
thread); it prints a table and writes it to ``benchmarks/reversible_drift.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdenas.families import PDEUnit, SymmetricLayer, build_unit, clip_weights_  # noqa: E402

__all__ = ["measure", "main"]

DEPTHS = (1, 3, 10, 30, 100, 300)
FAMILIES = ("hamiltonian", "second_order")
STEP_SIZES = (1.0, 0.1)
WEIGHTS = ("init", "x4", "x4+clip")
GROWTH = 4.0


def make_unit(family: str, width: int, depth: int, h: float, weights: str) -> tuple[PDEUnit, float]:
    """A unit with seeded weights; returns it and the fraction of entries clipping changed."""
    torch.manual_seed(0)
    unit = build_unit(family, width, depth, h, norm="tv", reversible=True)
    if weights.startswith("x4"):
        with torch.no_grad():
            for layer in unit.modules():
                if isinstance(layer, SymmetricLayer):
                    layer.weight.mul_(GROWTH)
    before = torch.cat([p.detach().flatten().clone() for p in unit.parameters()])
    if weights in ("init", "x4+clip"):
        clip_weights_(unit, 1.0)
    after = torch.cat([p.detach().flatten() for p in unit.parameters()])
    changed = float((before != after).float().mean())
    return unit.train(), changed


def _grads(unit: PDEUnit, x: torch.Tensor, g: torch.Tensor, reversible: bool) -> torch.Tensor:
    unit.reversible = reversible
    x = x.clone().requires_grad_(True)
    out = unit(x)
    grads = torch.autograd.grad((out * g).sum(), [x, *unit.parameters()])
    return torch.cat([t.flatten() for t in grads])


def measure(family: str, depth: int, h: float, weights: str, width: int, size: int,
            batch: int) -> dict[str, float]:
    """One row: reconstruction error, state growth and gradient errors in float32."""
    unit, changed = make_unit(family, width, depth, h, weights)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, width, size, size, generator=gen).relu()
    g = torch.randn(batch, width, size, size, generator=gen)
    with torch.no_grad():
        state = unit.init_state(x)
        for j in range(depth):
            state = unit.step(j, state)
        last = unit.output(state)
        x_rec = unit.output(unit.reverse(last, state))
    rec = float((x_rec - x).norm() / x.norm())
    growth = float(last.norm() / x.norm())

    plain = _grads(unit, x, g, reversible=False)
    rev = _grads(unit, x, g, reversible=True)
    unit64 = unit.double()
    ref = _grads(unit64, x.double(), g.double(), reversible=False)
    return {
        "rec": rec,
        "growth": growth,
        "grad_rev": float((rev - plain).norm() / plain.norm()),
        "grad_fp32": float((plain.double() - ref).norm() / ref.norm()),
        "clipped": changed,
    }


def main(argv: list[str] | None = None) -> str:
    """Runs the sweep, prints the table and writes it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for these small tensors)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("reversible_drift.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    lines = [
        "# Float32 drift of the reversible schemes",
        "",
        f"Command: `python benchmarks/reversible_drift.py` (width {args.width}, "
        f"{args.size}x{args.size}, batch {args.batch}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} CPU).",
        "",
        "rec = ||x_rec - x|| / ||x|| after forward then reverse; growth = ||Y_n|| / ||x||; "
        "grad rev = reversible vs plain autograd gradients (input and all parameters, float32); "
        "grad fp32 = plain float32 vs float64 (the noise floor of float32 itself).",
        "",
        "| family | h | weights | depth | rec | growth | grad rev | grad fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines[-2:]), flush=True)
    notes = []
    for family in FAMILIES:
        for h in STEP_SIZES:
            for weights in WEIGHTS:
                for depth in args.depths:
                    r = measure(family, depth, h, weights, args.width, args.size, args.batch)
                    if weights != "x4" and depth == args.depths[-1]:
                        notes.append(f"{family}, {weights}: clipping to [-1, 1] changed "
                                     f"{r['clipped']:.2%} of the weights")
                    row = (f"| {family} | {h:g} | {weights} | {depth} | {r['rec']:.1e} | "
                           f"{r['growth']:.3g} | {r['grad_rev']:.1e} | {r['grad_fp32']:.1e} |")
                    lines.append(row)
                    print(row, flush=True)
    lines += ["", *[f"- {n}" for n in sorted(set(notes))]]
    lines.append(f"- total time {time.perf_counter() - start:.0f} s")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print("\n".join(lines[-len(set(notes)) - 1:]))
    return text


if __name__ == "__main__":
    main()
