"""Speed and activation memory of one PDE unit per family, against the resnet unit.

Two tables:

1. Training throughput: forward + backward images/s of one unit (ReLU, TV norm for the PDE
   families as in the paper, batch norm for resnet, h = 1) at equal width, depth and input, as
   the ratio to the resnet unit measured in the same process (rounds interleaved; the fastest
   round counts, which is the steadiest figure on a shared, busy machine).
   The reversible modes of hamiltonian and second_order are timed too.
2. Activation memory: bytes autograd saves for backward during one unit's forward pass
   (``torch.autograd.graph.saved_tensors_hooks``; unique storages, parameters excluded), per
   image, at depths 1, 4, 16 and 64, plain and reversible.

Run from the repository root: ``python benchmarks/units.py`` (two to three minutes on 2 cores);
it prints the tables and writes them to ``benchmarks/units.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdenas.families import PDEUnit, build_unit, list_families  # noqa: E402

__all__ = ["VARIANTS", "make_unit", "saved_bytes", "time_units", "main"]

# (label, family, reversible)
VARIANTS: tuple[tuple[str, str, bool], ...] = (
    *((family, family, False) for family in list_families()),
    ("hamiltonian (rev)", "hamiltonian", True),
    ("second_order (rev)", "second_order", True),
)
SPEED_SETUPS = ((32, 4, 32, 64), (16, 4, 96, 16), (64, 4, 16, 64))  # width, depth, side, batch
MEMORY_DEPTHS = (1, 4, 16, 64)


def make_unit(family: str, width: int, depth: int, reversible: bool) -> PDEUnit:
    """One unit as the paper trains it: h = 1, ReLU, TV norm (batch norm for resnet)."""
    torch.manual_seed(0)
    norm = "batch" if family == "resnet" else "tv"
    return build_unit(family, width, depth, 1.0, norm=norm, reversible=reversible).train()


def saved_bytes(unit: PDEUnit, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages the unit's forward saves for backward."""
    params = {p.untyped_storage().data_ptr() for p in unit.parameters()}
    storages: dict[int, int] = {}
    kept = []  # keeps the storages alive, so no address is reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
            kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unit(x)
    return sum(storages.values())


def time_units(width: int, depth: int, side: int, batch: int, rounds: int) -> dict[str, float]:
    """Fastest seconds of one forward + backward per variant (interleaved rounds)."""
    units = {label: make_unit(f, width, depth, rev) for label, f, rev in VARIANTS}
    x = torch.randn(batch, width, side, side, requires_grad=True)
    times: dict[str, list[float]] = {label: [] for label in units}
    for r in range(rounds + 1):  # round 0 warms up
        for label, unit in units.items():
            start = time.perf_counter()
            unit(x).square().mean().backward()
            elapsed = time.perf_counter() - start
            if r:
                times[label].append(elapsed)
            unit.zero_grad(set_to_none=True)
            x.grad = None
    return {label: min(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> str:
    """Runs both measurements, prints the tables and writes them to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("units.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()

    lines = [
        "# One unit per family: speed and activation memory",
        "",
        f"Command: `python benchmarks/units.py` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} CPU, float32; "
        f"{args.rounds} interleaved rounds after a warm-up, fastest round; load average "
        f"{os.getloadavg()[0]:.1f} at the start on a shared machine).",
        "",
        "## Training throughput relative to the resnet unit (forward + backward, h = 1)",
        "",
        "Ratio = resnet seconds / unit seconds (above 1: faster than resnet); img/s in brackets.",
        "PDE families: TV norm; resnet: batch norm.",
        "",
    ]
    header = "| width, depth, input, batch | " + " | ".join(v[0] for v in VARIANTS) + " |"
    lines += [header, "|---" * (len(VARIANTS) + 1) + "|"]
    print("\n".join(lines), flush=True)
    for width, depth, side, batch in SPEED_SETUPS:
        seconds = time_units(width, depth, side, batch, args.rounds)
        base = seconds["resnet"]
        cells = [f"{base / seconds[v[0]]:.2f} ({batch / seconds[v[0]]:.0f})" for v in VARIANTS]
        row = f"| {width}, {depth}, {side}x{side}, {batch} | " + " | ".join(cells) + " |"
        lines.append(row)
        print(row, flush=True)

    width, side, batch = 32, 32, 2
    memory_lines = [
        "",
        f"## Saved activation bytes per image (width {width}, {side}x{side}, KiB)",
        "",
        "Unique storages autograd keeps for backward during the unit's forward, parameters "
        "excluded; measured at batch 2, exactly linear in the batch.",
        "",
        "| unit | " + " | ".join(f"depth {d}" for d in MEMORY_DEPTHS) + " |",
        "|---" * (len(MEMORY_DEPTHS) + 1) + "|",
    ]
    x = torch.randn(batch, width, side, side, requires_grad=True)
    for label, family, reversible in VARIANTS:
        cells = []
        for depth in MEMORY_DEPTHS:
            unit = make_unit(family, width, depth, reversible)
            cells.append(f"{saved_bytes(unit, x) / batch / 1024:.0f}")
        memory_lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += memory_lines
    lines += ["", f"Total time {time.perf_counter() - start:.0f} s."]
    print("\n".join(memory_lines + lines[-2:]))
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
