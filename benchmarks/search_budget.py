"""pdenas against the plain Optuna + PyTorch script a user would otherwise write, in one wall-clock
budget on the same CPU.

Both searches run side by side, each in its own process on one torch thread, for the same number
of minutes, on the same data: Debian's Fashion-MNIST files, 15,000 images of the official training
set (12,000 train, 3,000 validation: pdenas's seeded split, which the plain script reuses), the
official 10,000 test images, 6 epochs per trial.

- pdenas: ``pdenas search studies/fashion_mnist_cpu.yaml --timeout T --workers 1`` (balanced
  families, TPE, median pruning, per-trial time prediction), the shipped CPU study as the README
  names it, on one worker (the study would start one per core).
- The plain script (``plain_search`` below, in the plainest PyTorch): Optuna's TPE sampler and
  median pruner over a small ResNet (conv-BN-ReLU stem, residual blocks of conv-BN-ReLU-conv-BN,
  global pooling, linear classifier) with its width, blocks per stage and AdamW learning rate,
  trained 6 epochs with flips and 2-pixel shifts, like a 40-line script.

Reported per side: trials finished, the best validation accuracy, the test accuracy of the trial
chosen by validation accuracy, and the wall time at which it first reached its final best. Both
sides' times count from the benchmark's start (starting Python, importing and loading the data
included). Usage::

    python benchmarks/search_budget.py [--minutes 30] [--out benchmarks/search_budget.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "fashion_mnist_cpu.yaml"
EPOCHS = 6


def _data():
    from pdenas.data import DataConfig, load_data

    return load_data(DataConfig(name="fashion_mnist", train_limit=15_000, val_fraction=0.2, seed=0))


def plain_search(minutes: float, out: Path, started: float) -> None:
    """The plain Optuna + PyTorch search; writes one JSON line per finished trial to ``out``,
    its time counted from ``started`` (the benchmark's start, as pdenas's is)."""
    import optuna
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = _data()

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

        def forward(self, x):
            return F.relu(self.skip(x) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))

    def resnet(width: int, blocks: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
        for stage in range(3):
            for b in range(blocks):
                out = width * 2 ** stage
                layers.append(Block(c, out, 2 if b == 0 and stage > 0 else 1))
                c = out
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def accuracy(model, x, y) -> float:
        model.eval()
        with torch.no_grad():
            return sum((model(x[i:i + 512]).argmax(1) == y[i:i + 512]).sum().item()
                       for i in range(0, len(y), 512)) / len(y)

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        model = resnet(trial.suggest_categorical("width", [8, 16, 32]), trial.suggest_int("blocks", 1, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1e-2, log=True))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
        x, y = data.train.x, data.train.y
        best, best_state = 0.0, None
        for epoch in range(EPOCHS):
            model.train()
            for i in torch.randperm(len(y)).split(128):
                xb = x[i]
                flip = torch.rand(len(i)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
                xb = torch.roll(xb, (dx, dy), (2, 3))
                loss = F.cross_entropy(model(xb), y[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
            val = accuracy(model, data.val.x, data.val.y)
            if val > best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        model.load_state_dict(best_state)
        line = {"number": trial.number, "val_accuracy": best,
                "finished_at_s": time.time() - started,
                "test_accuracy": accuracy(model, data.test.x, data.test.y)}
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    study.optimize(objective, timeout=minutes * 60 - (time.time() - started))


def _pdenas_rows(run: Path, started: float) -> list[dict]:
    """pdenas's finished trials with the test accuracy of their saved weights."""
    import torch

    from pdenas.architecture import Architecture
    from pdenas.export._select import saved_model
    from pdenas.results import load_trials
    from pdenas.train import evaluate

    torch.set_num_threads(2)
    data = _data()
    rows = []
    for _, trial in load_trials(run).iterrows():
        if not trial["comparable"]:
            continue
        record = json.loads((run / "trials" / str(trial["number"]) / "record.json").read_text())
        model = saved_model(run, int(trial["number"]), Architecture.from_dict(record["architecture"]))
        finished = trial["datetime_complete"].timestamp() - started
        rows.append({"number": int(trial["number"]), "val_accuracy": float(trial["val_accuracy"]),
                     "finished_at_s": finished, "family": trial["family"],
                     "test_accuracy": evaluate(model, data.test, "cpu")[1]})
    return rows


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"trials": 0}
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["finished_at_s"]))
    return {"trials": len(rows), "best_val": best["val_accuracy"], "test": best["test_accuracy"],
            "reached_at": best["finished_at_s"], "chosen": best}


def _first_reaching(rows: list[dict], target: float) -> float | None:
    times = [r["finished_at_s"] for r in rows if r["val_accuracy"] >= target]
    return min(times) if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "search_budget.md"))
    parser.add_argument("--keep", help="keep pdenas's run folder here (for pdenas compare)")
    parser.add_argument("--plain-only", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:
        plain_search(args.minutes, Path(args.plain_only), args.started)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain_log = folder / "plain.jsonl"
        plain_log.touch()
        started = time.time()
        plain = subprocess.Popen([sys.executable, __file__, "--minutes", str(args.minutes),
                                  "--plain-only", str(plain_log), "--started", repr(started)],
                                 env=env)
        run = Path(args.keep) if args.keep else folder / "pdenas-run"
        # One worker: the study says one per core, and the plain script has only one.
        subprocess.run([sys.executable, "-m", "pdenas.cli", "search", str(STUDY), "--out", str(run),
                        "--timeout", str(args.minutes * 60), "--workers", "1", "--quiet"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        plain.wait()
        ours = _pdenas_rows(run, started)
        theirs = [json.loads(line) for line in plain_log.read_text().splitlines()]
    a, b = _summary(ours), _summary(theirs)
    lines = [f"# Search within a budget: pdenas against a plain Optuna + PyTorch script",
             "", f"`python benchmarks/search_budget.py --minutes {args.minutes:g}`, "
             f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, both searches side by side on one torch thread each.", "",
             "| search | trials finished | best val acc | test acc (chosen by val) | reached its best at |",
             "|---|---:|---:|---:|---:|"]
    for name, s in (("pdenas (fashion_mnist_cpu)", a), ("plain Optuna + PyTorch ResNet", b)):
        if s["trials"]:
            lines.append(f"| {name} | {s['trials']} | {100 * s['best_val']:.2f} % | "
                         f"{100 * s['test']:.2f} % | {s['reached_at'] / 60:.1f} min |")
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    if a["trials"] and b["trials"]:
        when = _first_reaching(ours, b["best_val"])
        lines += ["", f"pdenas first reached the plain script's final best validation accuracy "
                  f"({100 * b['best_val']:.2f} %) at "
                  + (f"{when / 60:.1f} min ({when / b['reached_at']:.2f} of the script's time)."
                     if when is not None else "no point of its run."),
                  f"Test accuracy difference (pdenas − plain): {100 * (a['test'] - b['test']):+.2f} points."]
        lines += ["", f"pdenas's chosen trial: {a['chosen']}", f"plain script's: {b['chosen']}"]
    lines += ["", "Every finished trial (val / test accuracy, when it finished):", ""]
    for name, rows in (("pdenas", ours), ("plain", theirs)):
        lines.append(f"- {name}: " + ", ".join(
            f"{r['number']} {r.get('family', 'resnet')} {100 * r['val_accuracy']:.2f} / "
            f"{100 * r['test_accuracy']:.2f} at {r['finished_at_s'] / 60:.1f} min"
            for r in sorted(rows, key=lambda r: r["number"])))
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
