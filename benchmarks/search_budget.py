"""pdenas against the plain Optuna + PyTorch script a user would otherwise write, in one wall-clock
budget on the same CPU, over several paired runs, alone and beside a busy process.

In each run both searches run side by side, each in its own process on one torch thread, for the
same number of minutes, on the same data: Debian's Fashion-MNIST files, 15,000 images of the
official training set (12,000 train, 3,000 validation: pdenas's fixed split, which the plain script
reuses), the official 10,000 test images, 6 epochs per trial.

- pdenas: ``pdenas search studies/fashion_mnist_cpu.yaml --timeout T --workers 1 --seed S``
  (balanced families, TPE, median early stopping, per-trial time prediction), the shipped CPU
  study as the README names it, on one worker (the study would start one per core).
- The plain script (``plain_search`` below, in the plainest PyTorch): Optuna's TPE sampler and
  median pruner over a small ResNet (conv-BN-ReLU stem, residual blocks of conv-BN-ReLU-conv-BN,
  global pooling, linear classifier) with its width, blocks per stage and AdamW learning rate,
  trained 6 epochs with flips and 2-pixel shifts, like a 40-line script. Its sampler is seeded
  with S and trial n's weights with S * 100003 + n (S = 0: the script of the earlier runs).

Run i (i = 0 .. --runs - 1) gives both sides the seed ``--seed + i``; with ``--busy both`` each
seed runs twice, alone and beside one busy process (a one-thread torch matrix-product loop that
the benchmark starts with the searches and kills when they end), so the two conditions see the
same seeds. Runs follow one another, never overlap.

Reported per run: each side's trials, the share of the budget it used (when its last trial ended,
counted from the run's start, over the budget; a plain trial that runs over counts beyond 1.0),
the test accuracy of the trial chosen by validation accuracy, and when pdenas first reached the
plain script's final best validation accuracy against when the script reached it; then the median
and range of each over the runs of each condition, and the issue's criteria. Both sides' times
count from the run's start (starting Python, importing and loading the data included). The
output is printed (markdown: the summary table, then each run's trials) for appending to
``benchmarks/search_budget.md`` by hand; ``--out FILE`` also writes it to FILE. Usage::

    python benchmarks/search_budget.py [--minutes 30] [--runs 3] [--busy no|yes|both] [--seed 0]
    python benchmarks/search_budget.py --minutes 30 --runs 1 --busy no   # one run, as before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "fashion_mnist_cpu.yaml"
EPOCHS = 6
# The busy neighbour: one thread of matrix products, as another user's job would be.
BUSY_LOOP = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n"
             "while True:\n    a @ a\n")
# Statuses of pdenas trials that trained (all or part of their epochs), so used the budget.
TRAINED = ("completed", "stopped", "timeout", "diverged", "oom", "failed")


def _data():
    from pdenas.data import DataConfig, load_data

    return load_data(DataConfig(name="fashion_mnist", train_limit=15_000, val_fraction=0.2, seed=0))


def plain_search(minutes: float, out: Path, started: float, seed: int = 0) -> None:
    """The plain Optuna + PyTorch search; writes one JSON line per trial to ``out`` (a pruned
    one with ``"pruned": true``), its time counted from ``started`` (the run's start, as
    pdenas's is). ``seed`` seeds the sampler and, with the trial's number, its weights."""
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
        torch.manual_seed(seed * 100_003 + trial.number)
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
                with out.open("a") as handle:
                    handle.write(json.dumps({"number": trial.number, "pruned": True,
                                             "finished_at_s": time.time() - started}) + "\n")
                raise optuna.TrialPruned()
        model.load_state_dict(best_state)
        line = {"number": trial.number, "val_accuracy": best,
                "finished_at_s": time.time() - started,
                "test_accuracy": accuracy(model, data.test.x, data.test.y)}
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    study.optimize(objective, timeout=minutes * 60 - (time.time() - started))


def _pdenas_rows(run: Path, started: float) -> tuple[list[dict], float | None]:
    """pdenas's fully trained trials with the test accuracy of their saved weights, and when its
    last trial that trained (fully or stopped early) ended, both from ``started``."""
    import torch

    from pdenas.architecture import Architecture
    from pdenas.export._select import saved_model
    from pdenas.results import load_trials
    from pdenas.train import evaluate

    if not (run / "run.json").exists():
        return [], None
    torch.set_num_threads(2)
    trials = load_trials(run)
    ends = [t.timestamp() - started for t, status in zip(trials["datetime_complete"], trials["status"])
            if status in TRAINED and t is not None and t == t]
    data = _data() if trials["comparable"].astype(bool).any() else None
    rows = []
    for _, trial in trials.iterrows():
        if not trial["comparable"]:
            continue
        record = json.loads((run / "trials" / str(trial["number"]) / "record.json").read_text())
        model = saved_model(run, int(trial["number"]), Architecture.from_dict(record["architecture"]))
        finished = trial["datetime_complete"].timestamp() - started
        rows.append({"number": int(trial["number"]), "val_accuracy": float(trial["val_accuracy"]),
                     "finished_at_s": finished, "family": trial["family"],
                     "test_accuracy": evaluate(model, data.test, "cpu")[1]})
    return rows, (max(ends) if ends else None)


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"trials": 0}
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["finished_at_s"]))
    return {"trials": len(rows), "best_val": best["val_accuracy"], "test": best["test_accuracy"],
            "reached_at": best["finished_at_s"], "chosen": best}


def _first_reaching(rows: list[dict], target: float) -> float | None:
    times = [r["finished_at_s"] for r in rows if r["val_accuracy"] >= target]
    return min(times) if times else None


def one_run(minutes: float, seed: int, busy: bool, keep: Path | None) -> dict:
    """One paired run: pdenas and the plain script side by side (and the busy loop beside them
    when ``busy``), each seeded with ``seed``; what the report needs of it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain_log = folder / "plain.jsonl"
        plain_log.touch()
        run = keep if keep is not None else folder / "pdenas-run"
        neighbour = plain = None
        load_before = os.getloadavg()[0]
        started = time.time()
        try:
            if busy:
                neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env,
                                             stdout=subprocess.DEVNULL)
            plain = subprocess.Popen([sys.executable, __file__, "--minutes", str(minutes),
                                      "--plain-only", str(plain_log), "--started", repr(started),
                                      "--seed", str(seed)], env=env)
            # One worker: the study says one per core, and the plain script has only one.
            ours_rc = subprocess.run(
                [sys.executable, "-m", "pdenas.cli", "search", str(STUDY), "--out", str(run),
                 "--timeout", str(minutes * 60), "--workers", "1", "--seed", str(seed), "--quiet"],
                env=env, stdout=subprocess.DEVNULL).returncode
            plain_rc = plain.wait()
        finally:
            for process in (neighbour, plain):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        ours, ours_end = _pdenas_rows(run, started)
        logged = [json.loads(line) for line in plain_log.read_text().splitlines()]
    theirs = [r for r in logged if not r.get("pruned")]
    return {"seed": seed, "busy": busy, "budget_s": minutes * 60, "ours": ours, "theirs": theirs,
            "ours_end": ours_end, "theirs_end": max((r["finished_at_s"] for r in logged), default=None),
            "ours_rc": ours_rc, "plain_rc": plain_rc,
            # The 1-minute load average just before the run and at its end (both searches, and the
            # busy loop, count in the second: about 2 alone, 3 beside it, on an otherwise idle machine).
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)], "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
            + time.strftime("-%H:%M")}


def _measures(result: dict) -> dict:
    """The figures of one run that the table shows (None where a side has no trial)."""
    a, b = _summary(result["ours"]), _summary(result["theirs"])
    budget = result["budget_s"]
    m = {"ours_trials": a["trials"], "theirs_trials": b["trials"],
         "ours_share": None if result["ours_end"] is None else result["ours_end"] / budget,
         "theirs_share": None if result["theirs_end"] is None else result["theirs_end"] / budget,
         "ours_test": a.get("test"), "theirs_test": b.get("test"), "difference": None,
         "reached": None, "theirs_best_at": b.get("reached_at"), "ratio": None}
    if a["trials"] and b["trials"]:
        m["difference"] = a["test"] - b["test"]
        when = _first_reaching(result["ours"], b["best_val"])
        # Never reached: infinitely late, so that a median still says it.
        m["reached"] = when if when is not None else float("inf")
        m["ratio"] = m["reached"] / b["reached_at"]
    return m


COLUMNS = (  # key, heading, format of one value
    ("ours_trials", "pdenas trials", "{:g}"),
    ("ours_share", "pdenas budget used", "{:.2f}"),
    ("ours_test", "pdenas test", "{:.2%}"),
    ("theirs_trials", "plain trials", "{:g}"),
    ("theirs_share", "plain budget used", "{:.2f}"),
    ("theirs_test", "plain test", "{:.2%}"),
    ("difference", "test difference (points)", "{:+.2f}"),
    ("reached", "pdenas reached plain's best (min)", "{:.1f}"),
    ("theirs_best_at", "plain reached its best (min)", "{:.1f}"),
    ("ratio", "time ratio", "{:.2f}"),
)


def _cell(key: str, fmt: str, value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "never"
    if key == "difference":
        value = 100 * value
    elif key in ("reached", "theirs_best_at"):
        value = value / 60
    return fmt.format(value).replace("%", " %")


def _table(results: list[dict]) -> list[str]:
    """The summary: one row per run, then the median and the range per condition."""
    lines = ["| run | seed | beside | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---:|---:|---|" + "---:|" * len(COLUMNS)]
    measured = [(r, _measures(r)) for r in results]
    for i, (r, m) in enumerate(measured):
        lines.append(f"| {i + 1} | {r['seed']} | {'busy loop' if r['busy'] else 'alone'} | "
                     + " | ".join(_cell(k, f, m[k]) for k, _, f in COLUMNS) + " |")
    for busy in (False, True):
        group = [m for r, m in measured if r["busy"] == busy]
        if len(group) < 2:
            continue
        name = "busy loop" if busy else "alone"
        medians, ranges = [], []
        for key, _, fmt in COLUMNS:
            values = [m[key] for m in group if m[key] is not None]
            if not values:
                medians.append("-")
                ranges.append("-")
                continue
            medians.append(_cell(key, fmt, statistics.median(values)))
            low, high = _cell(key, fmt, min(values)), _cell(key, fmt, max(values))
            ranges.append(low if low == high else f"{low} – {high}")
        lines.append(f"| median | | {name} | " + " | ".join(medians) + " |")
        lines.append(f"| range | | {name} | " + " | ".join(ranges) + " |")
    return lines


def _criteria(results: list[dict]) -> list[str]:
    """The issue's three criteria, per condition."""
    lines = []
    for busy in (False, True):
        group = [_measures(r) for r in results if r["busy"] == busy]
        if not group:
            continue
        late = sum(1 for m in group if m["ours_share"] is not None and m["ours_share"] >= 0.9)
        differences = [m["difference"] for m in group if m["difference"] is not None]
        ratios = [m["ratio"] for m in group if m["ratio"] is not None]
        lines.append(
            f"- {'Beside the busy loop' if busy else 'Alone'}: pdenas's last trial ended in the final 10 % "
            f"of the budget in {late} of {len(group)} runs; median test difference "
            + (f"{100 * statistics.median(differences):+.2f} points" if differences else "-")
            + " (at least +3 asked); median time ratio "
            + (_cell("ratio", "{:.2f}", statistics.median(ratios)) if ratios else "-")
            + " (at most 0.20 asked)"
            + (f"; left out of both medians: {len(group) - len(differences)} of the runs, where a side "
               "finished no trial" if len(differences) < len(group) else "") + ".")
    return lines


def _details(i: int, result: dict) -> list[str]:
    """One run's trials, as the single-run report printed them."""
    a, b = _summary(result["ours"]), _summary(result["theirs"])
    lines = [f"### Run {i + 1}: seed {result['seed']}, "
             f"{'beside a busy one-thread loop' if result['busy'] else 'alone'} ({result['when']})", "",
             "| search | trials finished | best val acc | test acc (chosen by val) | reached its best at |",
             "|---|---:|---:|---:|---:|"]
    for name, s in (("pdenas (fashion_mnist_cpu)", a), ("plain Optuna + PyTorch ResNet", b)):
        if s["trials"]:
            lines.append(f"| {name} | {s['trials']} | {100 * s['best_val']:.2f} % | "
                         f"{100 * s['test']:.2f} % | {s['reached_at'] / 60:.1f} min |")
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    if a["trials"] and b["trials"]:
        when = _first_reaching(result["ours"], b["best_val"])
        lines += ["", f"pdenas first reached the plain script's final best validation accuracy "
                  f"({100 * b['best_val']:.2f} %) at "
                  + (f"{when / 60:.1f} min ({when / b['reached_at']:.2f} of the script's time)."
                     if when is not None else "no point of its run."),
                  f"Test accuracy difference (pdenas − plain): {100 * (a['test'] - b['test']):+.2f} points."]
        lines += ["", f"pdenas's chosen trial: {a['chosen']}", f"plain script's: {b['chosen']}"]
    if result["ours_rc"] or result["plain_rc"]:
        lines += ["", f"Exit statuses: pdenas {result['ours_rc']}, plain script {result['plain_rc']}."]
    if "load" in result:
        lines += ["", "Load average (1 min) before the run and at its end: "
                  f"{result['load'][0]:.2f}, {result['load'][1]:.2f}."]
    lines += ["", "Every finished trial (val / test accuracy, when it finished):", ""]
    for name, rows in (("pdenas", result["ours"]), ("plain", result["theirs"])):
        lines.append(f"- {name}: " + (", ".join(
            f"{r['number']} {r.get('family', 'resnet')} {100 * r['val_accuracy']:.2f} / "
            f"{100 * r['test_accuracy']:.2f} at {r['finished_at_s'] / 60:.1f} min"
            for r in sorted(rows, key=lambda r: r["number"])) or "none"))
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--minutes", type=float, default=30.0, help="the budget of each side per run")
    parser.add_argument("--runs", type=int, default=3, help="paired runs (seeds) per condition")
    parser.add_argument("--busy", choices=("no", "yes", "both"), default="both",
                        help="run alone, beside a busy one-thread process, or both (each seed twice)")
    parser.add_argument("--seed", type=int, default=0, help="run i seeds both sides with SEED + i")
    parser.add_argument("--out", help="also write the printed report to this file")
    parser.add_argument("--keep", help="keep pdenas's run folders under this folder, one per run "
                                       "(for pdenas compare); a fresh one: pdenas resumes a run folder")
    parser.add_argument("--report", help="print the report of the runs saved in this JSON file (--out "
                                         "FILE saves them in FILE.json after each run) and exit")
    parser.add_argument("--plain-only", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:
        plain_search(args.minutes, Path(args.plain_only), args.started, args.seed)
        return
    if args.report:
        print(_report(json.loads(Path(args.report).read_text())))
        return
    if args.runs < 1 or args.minutes <= 0:
        parser.error("--runs must be at least 1 and --minutes above 0")
    _data()  # the data is there (else its error now, not after the first run's minutes)
    conditions = {"no": (False,), "yes": (True,), "both": (False, True)}[args.busy]
    results = []
    for i in range(args.runs):
        for busy in conditions:
            seed = args.seed + i
            keep = (Path(args.keep) / f"seed{seed}-{'busy' if busy else 'alone'}") if args.keep else None
            results.append(one_run(args.minutes, seed, busy, keep))
            if args.out:  # each run as it ends, so that a stopped benchmark keeps the runs it made
                Path(args.out + ".json").write_text(json.dumps(results))
    text = _report(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _report(results: list[dict]) -> str:
    """The printed report of ``results``: the summary table, the criteria, then each run."""
    minutes = results[0]["budget_s"] / 60
    seeds = sorted({r["seed"] for r in results})
    busy = {r["busy"] for r in results}
    command = (f"python benchmarks/search_budget.py --minutes {minutes:g} --runs {len(seeds)} "
               f"--busy {'both' if len(busy) == 2 else 'yes' if True in busy else 'no'} --seed {seeds[0]}")
    lines = [f"`{command}`, {results[0]['when'][:10]}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; in each run both searches side by side on one torch thread each"
             + (", and in the busy runs a one-thread matrix-product loop beside them" if True in busy else "")
             + f"; budget {minutes:g} min per side. Budget used: when the side's last trial ended, over "
             "the budget. Time ratio: when pdenas first reached the plain script's final best validation "
             "accuracy, over when the script reached it.", "", *_table(results), "", *_criteria(results), ""]
    for i, result in enumerate(results):
        lines += _details(i, result)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
