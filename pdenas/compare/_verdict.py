"""The verdict of ``pdenas compare RUN --verdict``: which family is best for this data and budget,
and how sure that is.

The estimand: for each family, the test accuracy of the network that "search this space with
budget B, then select on validation" gives. Each family's candidates (its most accurate
finished trials, from the trials that fit an equal compute budget) are retrained at the full
budget on paired seeds: seed s fixes the initialisation, the data order and the augmentation
for every family alike. The final weights are kept (no epoch picked on validation), and the
test split is touched once per retrained network. The family's network is the candidate the
search ranked best on validation; with several candidates per family, the bootstrap also
redraws the search among them (``_stats.bootstrap_selection``), so a family that was lucky in
its search is not taken at its word. Seeds are added by a sequential rule until the question is
settled or the budget in seeds or seconds is spent; ``_stats`` turns the per-image results into
intervals, P(best) and Holm-adjusted paired differences, and one sentence says what they mean.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdenas.compare._report import cost_text, pct
from pdenas.compare._stats import bootstrap_selection, holm, paired_effect_size, selection_weights
from pdenas.errors import InputError
from pdenas.results import family_order, fully_trained

__all__ = ["BUDGETS", "BASELINE", "Candidate", "CostVerdict", "Verdict", "VerdictOptions", "decide",
           "first_look_seeds", "format_verdict_tables", "look_schedule", "pooled", "retrain_network",
           "retrain_seeds", "run_verdict", "select_candidates", "verdict_sentence"]

BASELINE = "resnet"
"""The family every other is also compared with."""
BUDGETS = ("flop_epochs", "seconds", "trials")
"""How the search budget is made equal across families when their candidates are picked."""
VERDICT_SEED = 20_000
"""Seed offset of the verdict's retraining: seed s initialises, orders and augments with
``VERDICT_SEED + s`` for every family (apart from ``--retrain-top``'s seeds)."""


@dataclass(frozen=True)
class VerdictOptions:
    """How the verdict is reached.

    Attributes:
        candidates: Candidates per family (its best finished trials on the search's validation);
            with more than one, the bootstrap redraws the search among them.
        min_seeds: Seeds of the first look.
        max_seeds: The most seeds (the budget in seeds).
        max_seconds: The budget in seconds of retraining (None: no limit). The first look's
            seeds are predicted from the seconds the candidates' search trials took (fewer than
            ``min_seeds`` where those would not fit; an error where 2 would not); a later look's
            seeds are started only when the time measured so far says they fit.
        alpha: The family-wise error rate, over all pairs and all looks.
        margin: Two families whose difference lies within ± margin (accuracy, not points) at the
            pairs' level count as settled even though neither is declared better.
        budget: ``flop_epochs``, ``seconds`` or ``trials``: what the search budget B counts
            when each family's candidates are picked (equal compute, or equal trial counts).
        n_boot: Bootstrap replicates.
        cost_levels: Costs at which the verdict is also given (each family's candidates at most
            that costly), or ``auto``: the run's cost terciles; () for none.
    """

    candidates: int = 1
    min_seeds: int = 3
    max_seeds: int = 8
    max_seconds: float | None = None
    alpha: float = 0.05
    margin: float = 0.005
    budget: str = "flop_epochs"
    n_boot: int = 2000
    cost_levels: tuple[float, ...] | str = ()

    def __post_init__(self) -> None:
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        checks = [
            ("--candidates", self.candidates, whole(self.candidates) and self.candidates >= 1,
             "an integer >= 1"),
            ("--seeds", self.min_seeds, whole(self.min_seeds) and self.min_seeds >= 2, "an integer >= 2"),
            ("--max-seeds", self.max_seeds, whole(self.max_seeds) and whole(self.min_seeds)
             and self.max_seeds >= self.min_seeds, "an integer >= --seeds"),
            ("--max-seconds", self.max_seconds, self.max_seconds is None
             or (number(self.max_seconds) and self.max_seconds > 0), "a number > 0"),
            ("--alpha", self.alpha, number(self.alpha) and 0 < self.alpha < 0.5, "a number in (0, 0.5)"),
            ("--margin", self.margin, number(self.margin) and 0 <= self.margin < 1, "a number in [0, 1)"),
            ("--budget", self.budget, self.budget in BUDGETS, " | ".join(BUDGETS)),
            ("n_boot", self.n_boot, whole(self.n_boot) and self.n_boot >= 200, "an integer >= 200"),
            ("--cost-levels", self.cost_levels, self.cost_levels == "auto" or (
                isinstance(self.cost_levels, (tuple, list)) and len(self.cost_levels) <= 5
                and all(number(v) and v > 0 for v in self.cost_levels)),
             "auto, or up to 5 numbers > 0 (the run's cost objective, e.g. FLOPs per image)"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise InputError(f"{key}: got {value!r}; allowed: {allowed}")


def look_schedule(min_seeds: int, max_seeds: int) -> list[int]:
    """The seed counts at which the rule looks: ``min_seeds``, then doubling, then ``max_seeds``
    (3, 6, 8 for 3 and 8). Few looks keep the Bonferroni split of alpha over them affordable."""
    looks = [min_seeds]
    while looks[-1] < max_seeds:
        looks.append(min(max_seeds, 2 * looks[-1]))
    return looks


@dataclass(frozen=True)
class Candidate:
    """One network a family puts forward: a finished trial's architecture and training settings.

    Attributes:
        family: Its family.
        trial: The trial number (None when it did not come from a run).
        architecture: ``pdenas.architecture.Architecture``.
        train: ``pdenas.train.TrainConfig`` (its epochs are the full budget).
        search_val: The validation accuracy the search measured (the order of selection).
        cost: The run's cost objective for this network (NaN when unknown).
        seconds: The wall seconds its search trial took (NaN when unknown): with
            ``--max-seconds``, what the first look is predicted from.
    """

    family: str
    trial: int | None
    architecture: Any
    train: Any
    search_val: float = math.nan
    cost: float = math.nan
    seconds: float = math.nan


def _compute(trials: pd.DataFrame, budget: str, cost: str) -> pd.Series:
    """What each trial spent: FLOPs per image times epochs trained, wall seconds, or 1."""
    if budget == "trials":
        return pd.Series(1.0, index=trials.index)
    epochs = pd.to_numeric(trials["epochs_trained"], errors="coerce").fillna(0)
    if budget == "seconds":
        return pd.to_numeric(trials["seconds"], errors="coerce").fillna(0)
    return pd.to_numeric(trials["flops"], errors="coerce").fillna(0) * epochs


def select_candidates(run_dir: str | Path, trials: pd.DataFrame, per_family: int, budget: str,
                      cost: str, max_cost: float | None = None) -> tuple[list[Candidate], pd.DataFrame]:
    """Each family's ``per_family`` most accurate finished trials within an equal search budget.

    The budget B is the smallest compute any family with a finished trial spent over all its
    trials (stopped and failed ones count: they were paid for), in ``budget`` units; each family's
    trials are taken in the order they were numbered until B is spent, and its candidates are the
    best finished ones among those. A family with no finished trial within B keeps its first.
    With ``max_cost``, only trials whose cost is at most that are candidates (a family with none
    puts none forward).

    Returns:
        The candidates, and one row per family: ``family, spent, budget, trials_within,
        finished_within, candidates`` (the trial numbers).
    """
    from pdenas._config import reading_stored
    from pdenas.architecture import Architecture
    from pdenas.compare._families import NOT_FINAL
    from pdenas.results import load_record
    from pdenas.train import TrainConfig

    final = trials[~trials["status"].isin(NOT_FINAL)].sort_values("number")
    done = fully_trained(final)
    spent = _compute(final, budget, cost)
    families = [f for f in family_order(done)]
    totals = {f: float(spent[final["family"] == f].sum()) for f in families}
    limit = min(totals.values()) if totals else math.nan
    picked, rows = [], []
    for family in families:
        mine = final[final["family"] == family]
        within = mine[spent[mine.index].cumsum() <= limit * (1 + 1e-9)]
        pool = fully_trained(within)
        if pool.empty:
            pool = fully_trained(mine).head(1)
        if max_cost is not None:
            cheap = fully_trained(mine)
            pool = pool[pool[cost] <= max_cost]
            if pool.empty:  # nothing within B at this cost: its first finished trial at this cost
                pool = cheap[cheap[cost] <= max_cost].head(1)
            if pool.empty:
                continue
        best = pool.sort_values(["val_accuracy", "number"], ascending=[False, True])
        key = best[["step_size", "depths", "widths", "activation", "norm"]].astype(str).agg("|".join, axis=1)
        best = best[~key.duplicated()].head(per_family)
        for _, trial in best.iterrows():
            record = load_record(run_dir, int(trial["number"]))
            with reading_stored():  # written by this or an earlier version of pdenas
                arch, train = Architecture.from_dict(record["architecture"]), TrainConfig.from_stored(record["train"])
            picked.append(Candidate(family=family, trial=int(trial["number"]), architecture=arch, train=train,
                                    search_val=float(trial["val_accuracy"]),
                                    cost=float(trial.get(cost, math.nan)),
                                    seconds=_float(trial.get("seconds"))))
        rows.append({"family": family, "spent": totals[family], "budget": limit,
                     "trials_within": len(within), "finished_within": len(fully_trained(within)),
                     "candidates": ", ".join(f"#{int(n)}" for n in best["number"])})
    return picked, pd.DataFrame(rows, columns=["family", "spent", "budget", "trials_within",
                                               "finished_within", "candidates"])


def _float(value: Any) -> float:
    """A stored number as a float; NaN for a missing or unreadable one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pooled(*candidates: Sequence[Candidate]) -> list[Candidate]:
    """Every distinct candidate of the lists, each once (a candidate of the verdict that is also
    one at a cost level is trained once)."""
    pool: list[Candidate] = []
    for candidate in (c for group in candidates for c in group):
        if candidate not in pool:
            pool.append(candidate)
    return pool


def first_look_seeds(pool: Sequence[Candidate], options: VerdictOptions
                     ) -> tuple[int, float | None]:
    """The seeds of the first look and the seconds a seed of every candidate is predicted to take
    (the sum of their search trials' seconds; None when one is unknown).

    Without ``max_seconds``, or without a prediction, the first look has ``min_seeds``; with
    them, as many as fit (fewer than ``min_seeds`` when those would not).

    Raises:
        InputError: Not even two seeds (the fewest a look has) are predicted to fit.
    """
    per_seed = math.fsum(c.seconds for c in pool)
    if not pool or not per_seed == per_seed or per_seed <= 0:
        return options.min_seeds, None
    if options.max_seconds is None:
        return options.min_seeds, per_seed
    fits = int(options.max_seconds // per_seed)
    if fits < 2:
        raise InputError(
            f"--max-seconds: got {options.max_seconds:g}; allowed: at least {2 * per_seed:,.0f} "
            f"(the first look's 2 seeds of the {len(pool)} candidates, at the seconds their "
            "search trials took), or fewer --candidates")
    return min(options.min_seeds, fits), per_seed


def _correct(model: Any, split: Any, device: Any, batch: int = 1024) -> np.ndarray:
    """1 where the model classifies a test image right (one pass over the split, eval mode)."""
    import torch

    model.eval()
    hits = []
    with torch.no_grad():
        for i in range(0, len(split.y), batch):
            x = split.x[i:i + batch].to(device)
            hits.append((model(x).argmax(1) == split.y[i:i + batch].to(device)).cpu())
    return torch.cat(hits).numpy().astype(np.float64)


def _row(candidate: Candidate, seed: int) -> dict[str, Any]:
    return {"family": candidate.family, "trial": candidate.trial, "seed": seed,
            "status": "completed", "val_accuracy": math.nan, "val_loss": math.nan,
            "test_accuracy": 0.0, "cost": candidate.cost, "epochs": 0, "seconds": math.nan,
            "stacked": 1}


def _measured(row: dict[str, Any], model: Any, result: Any, data: Any, device: Any
              ) -> tuple[dict[str, Any], np.ndarray]:
    """A trained network's row completed: its last epoch's validation, its test split once."""
    last = result.history[-1]
    correct = _correct(model, data.test, device)
    row.update(val_accuracy=float(last["val_accuracy"]), val_loss=float(last["val_loss"]),
               test_accuracy=float(correct.mean()), epochs=result.epochs_trained)
    return row, correct


def retrain_network(candidate: Candidate, data: Any, seed: int, device: Any) -> tuple[dict[str, Any], np.ndarray]:
    """Trains one candidate at the full budget with seed ``VERDICT_SEED + seed`` (initialisation,
    data order and augmentation) and measures its final weights once on the test split.

    Returns:
        The run's row (``family, trial, seed, status, val_accuracy, val_loss, test_accuracy,
        cost, epochs, seconds, stacked``) and its per-image correctness on the test split (zeros
        when training failed: a network that did not train classifies nothing).
    """
    import torch

    from pdenas.network import build_model
    from pdenas.train import TrainingFailed, fit

    row = _row(candidate, seed)
    torch.manual_seed(VERDICT_SEED + seed)
    model = build_model(candidate.architecture).to(device)
    start = time.perf_counter()
    try:
        result = fit(model, data, candidate.train, device, seed=VERDICT_SEED + seed, restore_best=False)
    except TrainingFailed as failure:
        row.update(status=failure.status.value, epochs=len(failure.history),
                   seconds=time.perf_counter() - start)
        return row, np.zeros(len(data.test.y))
    row["seconds"] = float(result.seconds)
    return _measured(row, model, result, data, device)


def retrain_seeds(candidate: Candidate, data: Any, seeds: Sequence[int], device: Any
                  ) -> list[tuple[dict[str, Any], np.ndarray]]:
    """``retrain_network`` at each of ``seeds``, the seeds trained together as one stacked model
    (``pdenas.stacked.fit_seeds``) where the candidate allows it.

    Seed s's network is the one ``retrain_network`` trains at seed s (the same initialisation,
    data order and augmentation; equal up to floating-point rounding, ``pdenas.stacked``, which
    training can grow: on the quickstart, 8 epochs of AdamW, 5 of 12 networks' test accuracies
    moved by 1-5 of 360 images, either way), its final weights kept and measured once on the
    test split. One seed, or a candidate that cannot
    be stacked (multilevel training, ``amp: fp16``, reversible units: ``stacking_problems``),
    trains with ``fit`` seed by seed; so do the seeds of a stacked run that ran out of memory
    as a whole. A stacked row's ``seconds`` is its share of the stacked run's wall time, and its
    ``stacked`` the number of seeds trained together.

    Returns:
        One (row, correctness) per seed, in the order of ``seeds``.
    """
    from pdenas.stacked import fit_seeds, stacking_problems
    from pdenas.train import OutOfMemory

    seeds = list(seeds)
    if len(seeds) < 2 or stacking_problems(candidate.train, candidate.architecture):
        return [retrain_network(candidate, data, s, device) for s in seeds]
    runs = fit_seeds(candidate.architecture, data, candidate.train, device,
                     [VERDICT_SEED + s for s in seeds], restore_best=False)
    if all(isinstance(run.failure, OutOfMemory) for run in runs):
        return [retrain_network(candidate, data, s, device) for s in seeds]
    out = []
    for seed, run in zip(seeds, runs):
        row = _row(candidate, seed)
        row.update(seconds=float(run.result.seconds) / len(seeds), stacked=len(seeds))
        if run.failure is not None:
            row.update(status=run.failure.status.value, epochs=len(run.failure.history))
            out.append((row, np.zeros(len(data.test.y))))
        else:
            out.append(_measured(row, run.model, run.result, data, device))
    return out


@dataclass(frozen=True)
class CostVerdict:
    """The verdict among each family's candidates that cost at most ``level``.

    Attributes:
        level: The cost limit (the run's cost objective).
        families: As ``Verdict.families``.
        pairs: As ``Verdict.pairs``.
        sentence: As ``Verdict.sentence``.
    """

    level: float
    families: pd.DataFrame
    pairs: pd.DataFrame
    sentence: str


@dataclass
class Verdict:
    """The verdict and what it rests on.

    Attributes:
        families: One row per family: ``family, mean, low, high, p_best, seeds, candidates,
            failed`` (retrained networks that failed), ``max_cost`` (accuracies as fractions; the
            95 % interval; the mean is the expectation over the redrawn search).
        pairs: One row per comparison: ``a, b, against`` (``best`` or ``baseline``), ``diff``
            (a minus b), ``low, high`` (at ``level``), ``p, p_holm, effect`` (Cohen's d_z over
            seeds), ``different`` (p_holm < alpha per look).
        sentence: What it means, in one sentence.
        stopped: What ended the sequential rule: ``settled``, ``seeds`` or ``seconds``.
        seeds: Seeds run for every family.
        seconds: Wall time of the retraining.
        level: The level of the pairs' intervals (1 - alpha / looks planned).
        looks: The seed counts looked at.
        runs: One row per retrained network (``retrain_seeds``' rows, with ``weight``: how
            often the redrawn search selects that candidate), seed by seed.
        correct: (candidates, seeds, test images) every retrained network's correctness, the
            candidates in the order of ``runs``.
        cost: The cost objective's name.
        at_cost: The verdicts at the cost levels asked for (``VerdictOptions.cost_levels``).
        predicted: The seconds one seed of every candidate was predicted to take, from their
            search trials (None when unknown).
        first_seeds: The first look's seeds: ``min_seeds``, or fewer where ``max_seconds``
            would not fit them by that prediction.
    """

    families: pd.DataFrame
    pairs: pd.DataFrame
    sentence: str
    stopped: str
    seeds: int
    seconds: float
    level: float
    looks: list[int] = field(default_factory=list)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    correct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    cost: str = "flops"
    at_cost: list[CostVerdict] = field(default_factory=list)
    predicted: float | None = None
    first_seeds: int = 0

    def to_dict(self) -> dict[str, Any]:
        """What ``verdict.json`` holds: ``families`` (name -> mean, low, high, p_best, seeds),
        ``pairs`` (a, b, diff, low, high, p_holm) and ``sentence``."""
        return {
            "families": {r.family: {"mean": float(r.mean), "low": float(r.low), "high": float(r.high),
                                    "p_best": float(r.p_best), "seeds": int(r.seeds)}
                         for r in self.families.itertuples()},
            "pairs": [{"a": r.a, "b": r.b, "diff": float(r.diff), "low": float(r.low),
                       "high": float(r.high), "p_holm": float(r.p_holm)} for r in self.pairs.itertuples()],
            "sentence": self.sentence,
        }

    def write(self, folder: str | Path) -> Path:
        """Writes ``verdict.json`` and the tables behind it (``verdict_families.csv``,
        ``verdict_pairs.csv``, ``verdict_runs.csv``, ``verdict_correct.npy``, and with cost levels
        ``verdict_at_cost.csv`` and ``verdict_at_cost_pairs.csv``); returns the JSON's path."""
        folder = Path(folder)
        self.families.to_csv(folder / "verdict_families.csv", index=False)
        self.pairs.to_csv(folder / "verdict_pairs.csv", index=False)
        self.runs.to_csv(folder / "verdict_runs.csv", index=False)
        np.save(folder / "verdict_correct.npy", self.correct.astype(np.uint8))  # 0/1 per image
        if self.at_cost:
            pd.concat([v.families.assign(level=v.level, sentence=v.sentence) for v in self.at_cost]
                      ).to_csv(folder / "verdict_at_cost.csv", index=False)
            pd.concat([v.pairs.assign(level=v.level) for v in self.at_cost]
                      ).to_csv(folder / "verdict_at_cost_pairs.csv", index=False)
        path = folder / "verdict.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _cost_phrase(cost: str, value: float) -> str:
    if math.isnan(value):
        return ""
    if cost == "flops":
        return f"At most {value / 1e6:.3g} MFLOPs per image"
    return f"At most {cost_text(cost, value)} {cost}"


def _names(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict_sentence(families: pd.DataFrame, pairs: pd.DataFrame, level: float, *, cost: str = "flops",
                     data: str = "", limit: float | None = None) -> str:
    """The verdict in one sentence: the best family and its P(best), the families that cannot be
    told apart from it, and how much worse each other one is, with its interval. "At most" names
    ``limit`` when given, else the costliest candidate."""
    if len(families) < 2:
        only = families["family"].iloc[0] if len(families) else "none"
        return f"Only one family ({only}) has finished trials: there is nothing to compare."
    best = families.sort_values("mean", ascending=False).iloc[0]
    versus = pairs[pairs["against"] == "best"]
    worse = versus[versus["different"]].sort_values("diff")
    same = [a for a in versus.loc[~versus["different"], "a"]]
    if worse.empty:
        at = f"{_cost_phrase(cost, limit)}{f' on {data}' if data else ''}, n" if limit is not None else "N"
        return (f"{at}o family can be told apart from the others ({int(best.seeds)} seeds; the "
                f"highest mean test accuracy, {pct(best['mean'])}, is {best.family}'s).")
    head = _cost_phrase(cost, float(families["max_cost"].max()) if limit is None else limit)
    where = f" on {data}" if data else ""
    parts = [f"{head}{where}, " if head else "", f"{best.family} is best (P = {best.p_best:.2f})"]
    if same:
        parts.append(f"; {_names(same)} cannot be told apart from it")
    pct_level = f"{100 * level:.3g} %"
    for i, r in enumerate(worse.itertuples()):
        parts.append(f"{'; ' if i == 0 else ', '}{r.a} is {-100 * r.diff:.1f} points worse "
                     f"({pct_level} interval {-100 * r.high:.1f}-{-100 * r.low:.1f})")
    text = "".join(parts)
    return text[0].upper() + text[1:]


def decide(correct: np.ndarray, groups: Sequence[Sequence[int]], names: Sequence[str], *,
           alpha: float, looks: int, margin: float, n_boot: int, seed: int = 0,
           baseline: str = BASELINE, costs: Sequence[float] = (),
           failed: Sequence[int] = ()) -> tuple[pd.DataFrame, pd.DataFrame, bool, float]:
    """The statistics of one look.

    Args:
        correct: (C, S, N) every candidate's per-image correctness at every seed.
        groups: Per family, its candidates' rows of ``correct``, best search validation first.
        names: The families.
        alpha: The family-wise error rate over all pairs and looks.
        looks: Looks planned (alpha is split evenly over them: Bonferroni, so that stopping when
            the intervals settle the question does not raise the error rate).
        margin: Differences within ± margin at the pairs' level count as settled.

    Returns:
        The family table, the pair table, whether the question is settled (every other family is
        declared worse than the best, or lies within the margin of it), and the pairs' level.
    """
    boot = bootstrap_selection(correct, groups, n_boot=n_boot, seed=seed)
    level = 1 - alpha / looks
    low, high = boot.interval(0.95)
    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)  # stretched seed weights can overshoot
    families = pd.DataFrame({"family": list(names), "mean": boot.estimate, "low": low, "high": high,
                             "p_best": boot.p_best(), "seeds": correct.shape[1],
                             "candidates": [len(g) for g in groups],
                             "failed": list(failed) or [0] * len(names),
                             "max_cost": list(costs) or [math.nan] * len(names)})
    best = int(np.argmax(boot.estimate))
    index = {n: i for i, n in enumerate(names)}
    comparisons = [(i, best, "best") for i in range(len(names)) if i != best]
    if baseline in index and index[baseline] != best:
        comparisons += [(i, index[baseline], "baseline") for i in range(len(names))
                        if i not in (best, index[baseline])]
    per_seed = np.stack([selection_weights(len(g)) @ correct[list(g)].mean(axis=2) for g in groups])
    rows = []
    for a, b, against in comparisons:
        diff, lo, hi, p = boot.difference(a, b, level)
        rows.append({"a": names[a], "b": names[b], "against": against, "diff": diff, "low": lo,
                     "high": hi, "p": p, "effect": paired_effect_size(per_seed[a], per_seed[b])})
    pairs = pd.DataFrame(rows, columns=["a", "b", "against", "diff", "low", "high", "p", "effect"])
    pairs["p_holm"] = holm(pairs["p"].to_numpy())
    pairs["different"] = pairs["p_holm"] < alpha / looks
    versus = pairs[pairs["against"] == "best"]
    settled = bool(len(versus)) and bool(
        (versus["different"] | ((versus["low"] >= -margin) & (versus["high"] <= margin))).all())
    return families, pairs, settled, level


def _grouped(candidates: Sequence[Candidate], pool: list[Candidate]
             ) -> tuple[list[str], list[list[int]]]:
    """The families of ``candidates`` and, per family, its candidates' places in ``pool`` (added
    there when new), best search validation first."""
    names = family_order(pd.DataFrame({"family": [c.family for c in candidates]}))
    groups = []
    for family in names:
        mine = sorted((c for c in candidates if c.family == family),
                      key=lambda c: (-c.search_val if c.search_val == c.search_val else math.inf,
                                     c.trial if c.trial is not None else -1))
        rows = []
        for c in mine:
            if c not in pool:
                pool.append(c)
            rows.append(pool.index(c))
        groups.append(rows)
    return names, groups


def run_verdict(candidates: Sequence[Candidate], data: Any, device: Any, options: VerdictOptions,
                *, cost: str = "flops", data_name: str = "",
                log: Callable[[str], None] | None = None,
                at_cost: Sequence[tuple[float, Sequence[Candidate]]] = ()) -> Verdict:
    """Retrains the candidates on paired seeds, look by look, until the question is settled or
    the budget in seeds or seconds is spent, and gives the verdict.

    At each seed every candidate of every family is trained once and measured once on the test
    split; a look's new seeds of one candidate are trained together as one stacked model
    (``retrain_seeds``). The looks come at ``look_schedule``'s seed counts. ``at_cost`` adds
    verdicts among other candidates (each family's best at most ``level`` costly): their networks are trained at
    the same seeds, and the rule stops only when every verdict is settled.
    """
    pool: list[Candidate] = []
    views = [(math.nan, *_grouped(candidates, pool))]
    views += [(level, *_grouped(cands, pool)) for level, cands in at_cost]
    names, groups = views[0][1], views[0][2]
    if not names:
        raise InputError("--verdict: the run has no finished trials to retrain yet")
    weights = np.zeros(len(pool))
    for rows in groups:
        weights[rows] = selection_weights(len(rows))
    first_seeds, predicted = first_look_seeds(pool, options)
    looks = look_schedule(first_seeds, options.max_seeds)
    rows_out: list[dict[str, Any]] = []
    hits: list[list[np.ndarray]] = [[] for _ in pool]  # per candidate, per seed
    start = time.perf_counter()
    stopped, level = "seeds", 1 - options.alpha / len(looks)
    results: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    seed, done = 0, []
    for look, target in enumerate(looks):
        per_seed_time = (time.perf_counter() - start) / seed if seed else 0.0
        if (options.max_seconds is not None and seed
                and time.perf_counter() - start + per_seed_time * (target - seed) > options.max_seconds):
            stopped = "seconds"
            break
        if seed < target:  # the look's seeds, each candidate's trained together
            trained = []
            for c, candidate in enumerate(pool):
                trained.append(retrain_seeds(candidate, data, range(seed, target), device))
                for row, _ in trained[-1]:
                    row["weight"] = float(weights[c])
                    if log is not None:
                        log(f"verdict seed {row['seed'] + 1}: {candidate.family} "
                            f"#{candidate.trial} {row['status']}, val {pct(row['val_accuracy'])}, test "
                            f"{pct(row['test_accuracy'])}, {row['seconds']:.1f} s")
            for s in range(target - seed):  # rows seed by seed, the candidates in pool order
                for c in range(len(pool)):
                    row, correct = trained[c][s]
                    rows_out.append(row)
                    hits[c].append(correct)
            seed = target
        done.append(seed)
        correct = np.stack([np.stack(h) for h in hits])
        status = np.array([[r["status"] != "completed" for r in rows_out[s * len(pool):(s + 1) * len(pool)]]
                           for s in range(seed)])  # (seeds, candidates)
        results, all_settled = [], True
        for _, view_names, view_groups in views:
            families, pairs, settled, level = decide(
                correct, view_groups, view_names, alpha=options.alpha, looks=len(looks),
                margin=options.margin, n_boot=options.n_boot,
                costs=[max(pool[r].cost for r in g) for g in view_groups],
                failed=[int(status[:, g].sum()) for g in view_groups])
            results.append((families, pairs))
            all_settled = all_settled and settled
        if log is not None:
            log(f"verdict look {look + 1}/{len(looks)} at {seed} seeds: "
                f"{'settled' if all_settled else 'not settled'}")
        if all_settled:
            stopped = "settled"
            break
    families, pairs = results[0]
    extra = [CostVerdict(limit, f, p, verdict_sentence(f, p, level, cost=cost, data=data_name, limit=limit))
             for (limit, _, _), (f, p) in zip(views[1:], results[1:])]
    return Verdict(families=families, pairs=pairs,
                   sentence=verdict_sentence(families, pairs, level, cost=cost, data=data_name),
                   stopped=stopped, seeds=seed, seconds=time.perf_counter() - start, level=level,
                   looks=done, runs=pd.DataFrame(rows_out), correct=correct, cost=cost, at_cost=extra,
                   predicted=predicted, first_seeds=first_seeds)


STOP_TEXT = {
    "settled": "the intervals settled the question (every other family is declared worse than the "
               "best or lies within the margin of it)",
    "seeds": "the budget in seeds was spent",
    "seconds": "the budget in seconds would have been exceeded by the next look's seeds",
}


def format_verdict_tables(verdict: Verdict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The family and pair tables as display strings (percent and points)."""
    f = verdict.families
    families = pd.DataFrame({
        "family": f["family"],
        "test acc (95 % interval)": [f"{100 * m:.2f}% ({100 * lo:.2f}-{100 * hi:.2f})"
                                     for m, lo, hi in zip(f["mean"], f["low"], f["high"])],
        "P(best)": f["p_best"].map(lambda v: f"{v:.2f}"),
        "seeds": f["seeds"],
        "candidates": f["candidates"],
        "failed runs": f["failed"],
        "max cost": [cost_text(verdict.cost, v) for v in f["max_cost"]],
    })
    p = verdict.pairs
    level = f"{100 * verdict.level:.3g} %"
    pairs = pd.DataFrame({
        "a - b": [f"{a} - {b}" for a, b in zip(p["a"], p["b"])],
        "against": p["against"],
        f"diff, points ({level} interval)": [f"{100 * d:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f})"
                                             for d, lo, hi in zip(p["diff"], p["low"], p["high"])],
        "p (Holm)": p["p_holm"].map(lambda v: f"{v:.3g}"),
        "d_z": p["effect"].map(lambda v: "n/a" if v != v else f"{v:+.2f}"),
        "different": p["different"].map(lambda v: "yes" if v else "no"),
    })
    return families, pairs
