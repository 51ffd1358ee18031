"""Tests for the verdict of ``pdenas compare --verdict``: the decision and its sentence on
synthetic per-seed results, verdict.json, candidates at an equal search budget, paired
retraining (the same seed gives the same network to the same code under two names), the
sequential rule's three endings, and the command end to end on a tiny real run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from test_compare import single_thread  # noqa: F401  (autouse: one thread)
from test_results import make_synthetic_run

from pdenas.architecture import Architecture
from pdenas.cli import main
from pdenas.compare import Candidate, VerdictOptions, run_verdict
from pdenas.compare._verdict import (Verdict, decide, first_look_seeds, look_schedule,
                                     select_candidates, verdict_sentence)
from pdenas.data import DataConfig, load_data
from pdenas.errors import InputError
from pdenas.families import register_family
from pdenas.families._registry import _FAMILIES
from pdenas.families.parabolic import ParabolicUnit
from pdenas.results import load_trials
from pdenas.train import TrainConfig


def _correct(rng: np.random.Generator, accuracy: list[float], seeds: int = 5, images: int = 2000) -> np.ndarray:
    """(F, S, N) correctness: images of graded difficulty, each family's accuracy shifted."""
    difficulty = rng.uniform(0, 1, images)
    return np.stack([np.stack([(difficulty + rng.normal(0, 0.02, images) < a).astype(float)
                               for _ in range(seeds)]) for a in accuracy])


def _decide(correct: np.ndarray, names: list[str]) -> tuple:
    return decide(correct, [[i] for i in range(len(names))], names, alpha=0.05, looks=1, margin=0.005,
                  n_boot=1000, costs=[2.1e6] * len(names))


def test_a_clearly_worse_family_is_named_with_its_interval() -> None:
    names = ["parabolic", "hamiltonian", "second_order", "resnet"]
    correct = _correct(np.random.default_rng(0), [0.90, 0.91, 0.88, 0.905])
    families, pairs, settled, level = _decide(correct, names)
    assert families.set_index("family")["p_best"].idxmax() == "hamiltonian"
    assert families["p_best"].sum() == pytest.approx(1.0)
    assert families["low"].between(0, 1).all() and families["high"].between(0, 1).all()
    worse = pairs.set_index(["a", "against"]).loc[("second_order", "best")]
    assert worse["different"] and worse["high"] < 0 and worse["p_holm"] < 0.05
    assert worse["effect"] < -2  # d_z: the same 3 points at every seed
    # every family against the best, and the two PDE families that are not best against resnet
    assert sorted(zip(pairs["a"], pairs["b"])) == sorted([
        ("parabolic", "hamiltonian"), ("second_order", "hamiltonian"), ("resnet", "hamiltonian"),
        ("parabolic", "resnet"), ("second_order", "resnet")])
    assert (pairs["p_holm"] >= pairs["p"]).all()
    sentence = verdict_sentence(families, pairs, level, cost="flops", data="digits")
    assert sentence.startswith("At most 2.1 MFLOPs per image on digits, hamiltonian is best (P = ")
    diff = -100 * worse["diff"]
    assert f"second_order is {diff:.1f} points worse (95 % interval " in sentence
    assert f"{-100 * worse['high']:.1f}-{-100 * worse['low']:.1f})" in sentence


def test_two_identical_families_cannot_be_told_apart() -> None:
    one = _correct(np.random.default_rng(1), [0.9])
    families, pairs, settled, level = _decide(np.concatenate([one, one]), ["parabolic", "twin"])
    assert pairs["diff"].tolist() == [0.0] and not pairs["different"].any()
    assert settled  # the interval (0 to 0) lies within the margin
    assert families["p_best"].tolist() == pytest.approx([0.5, 0.5])
    assert verdict_sentence(families, pairs, level).startswith("No family can be told apart from the others")


def test_verdict_json_has_exactly_the_keys_of_the_issue(tmp_path: Path) -> None:
    names = ["parabolic", "resnet"]
    correct = _correct(np.random.default_rng(2), [0.9, 0.8], seeds=3, images=300)
    families, pairs, _, level = _decide(correct, names)
    verdict = Verdict(families=families, pairs=pairs, sentence="s", stopped="settled", seeds=3,
                      seconds=1.0, level=level, correct=correct)
    data = json.loads(verdict.write(tmp_path).read_text())
    assert set(data) == {"families", "pairs", "sentence"}
    assert set(data["families"]) == set(names)
    assert all(set(v) == {"mean", "low", "high", "p_best", "seeds"} for v in data["families"].values())
    assert [set(p) for p in data["pairs"]] == [{"a", "b", "diff", "low", "high", "p_holm"}]
    assert data["families"]["resnet"]["seeds"] == 3
    assert np.load(tmp_path / "verdict_correct.npy").shape == (2, 3, 300)


def test_look_schedule_and_options() -> None:
    assert look_schedule(3, 8) == [3, 6, 8]
    assert look_schedule(4, 4) == [4]
    assert look_schedule(2, 16) == [2, 4, 8, 16]
    with pytest.raises(InputError, match=r"^--max-seeds: got 2; allowed: an integer >= --seeds$"):
        VerdictOptions(min_seeds=3, max_seeds=2)
    with pytest.raises(InputError, match=r"^--budget: got 'money'; allowed: flop_epochs \| seconds \| trials$"):
        VerdictOptions(budget="money")


def test_candidates_come_from_an_equal_search_budget(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    trials = load_trials(run)
    picked, budgets = select_candidates(run, trials, 1, "trials", "flops")
    # B = 3 trials (second_order's); parabolic's best of its first 3 is #2, not its overall best #5
    assert [(c.family, c.trial) for c in picked] == [("parabolic", 2), ("hamiltonian", 6), ("second_order", 11)]
    assert budgets["budget"].tolist() == [3, 3, 3] and budgets["trials_within"].tolist() == [3, 3, 3]
    picked, budgets = select_candidates(run, trials, 2, "flop_epochs", "flops")
    # second_order spent the least FLOP-epochs; no other family finished a trial within it
    assert [(c.family, c.trial) for c in picked] == [("parabolic", 0), ("hamiltonian", 6), ("second_order", 11)]
    assert budgets["finished_within"].tolist() == [0, 0, 1]
    assert picked[0].cost == 1.0e5 and isinstance(picked[0].architecture, Architecture)
    picked, _ = select_candidates(run, trials, 1, "trials", "flops", max_cost=2.0e5)
    # at most 0.2 MFLOPs: parabolic's best of #0-#2 that cheap is #1; hamiltonian has none
    assert [(c.family, c.trial) for c in picked] == [("parabolic", 1), ("second_order", 11)]


@pytest.fixture(scope="module")
def twin() -> Iterator[str]:
    """The parabolic unit registered again under a second name: the same code, two families."""
    register_family("parabolic_twin")(type("TwinUnit", (ParabolicUnit,), {}))
    try:
        yield "parabolic_twin"
    finally:
        _FAMILIES.unregister("parabolic_twin")


@pytest.fixture(scope="module")
def digits() -> object:
    return load_data(DataConfig(name="digits", train_limit=300), device="cpu")


def _candidate(family: str, width: int = 8, step: float = 0.5, trial: int = 0) -> Candidate:
    arch = Architecture(family=family, widths=(width, width, width), depths=(1, 1), step_size=step,
                        in_channels=1, num_classes=10)
    train = TrainConfig(epochs=2, batch_size=64, optimizer="adamw", lr=0.01, time_smoothness=0.0,
                        augment=True)
    return Candidate(family=family, trial=trial, architecture=arch, train=train, search_val=0.5, cost=1e5)


def test_paired_seeds_give_the_same_code_the_same_network(twin: str, digits: object) -> None:
    """One seed fixes initialisation, data order and augmentation for every family: the same
    unit under two names trains to the same predictions, so the first look settles it."""
    verdict = run_verdict([_candidate("parabolic"), _candidate(twin)], digits, "cpu",
                          VerdictOptions(min_seeds=2, max_seeds=4, n_boot=500))
    assert verdict.stopped == "settled" and verdict.seeds == 2 and verdict.looks == [2]
    assert np.array_equal(verdict.correct[0], verdict.correct[1])
    assert not np.array_equal(verdict.correct[0, 0], verdict.correct[0, 1])  # seeds differ
    assert verdict.sentence.startswith("No family can be told apart")
    runs = verdict.runs
    assert len(runs) == 4 and runs["weight"].eq(1.0).all() and runs["epochs"].eq(2).all()
    assert runs["test_accuracy"].tolist() == pytest.approx(verdict.correct.mean(axis=2).T.ravel())


def test_the_rule_spends_the_seed_budget_or_stops_on_time(digits: object) -> None:
    candidates = [_candidate("parabolic", trial=0), _candidate("parabolic", width=4, step=0.3, trial=1),
                  _candidate("hamiltonian", step=0.5, trial=2)]
    verdict = run_verdict(candidates, digits, "cpu", VerdictOptions(
        candidates=2, min_seeds=2, max_seeds=3, margin=0.0, n_boot=500))
    assert verdict.stopped in ("seeds", "settled") and verdict.seeds in (2, 3)
    if verdict.stopped == "seeds":
        assert verdict.looks == [2, 3] and verdict.level == pytest.approx(0.975)
    assert len(verdict.runs) == 3 * verdict.seeds  # every candidate at every seed
    assert verdict.correct.shape[:2] == (3, verdict.seeds)
    parabolic = verdict.runs[verdict.runs["family"] == "parabolic"]
    # the search's best on validation (search_val ties: the lower trial) weighs 3/4, the other 1/4
    assert parabolic.groupby("trial")["weight"].first().to_dict() == {0: 0.75, 1: 0.25}
    means = parabolic.groupby("trial")["test_accuracy"].mean()
    assert verdict.families.set_index("family").loc["parabolic", "mean"] == pytest.approx(
        0.75 * means[0] + 0.25 * means[1])
    timed = run_verdict(candidates[::2], digits, "cpu", VerdictOptions(
        min_seeds=2, max_seeds=8, max_seconds=1e-3, margin=0.0, n_boot=500))
    # no search seconds to predict the first look from: it runs, and the rule stops after it
    assert timed.predicted is None and timed.first_seeds == 2
    assert timed.stopped == "seconds" and timed.seeds == 2 and timed.looks == [2]
    # their search trials took 1 s each: 3 seeds of 2 candidates would need 6 s, over 4.5 s
    searched = [dataclasses.replace(c, seconds=1.0) for c in candidates[::2]]
    cut = run_verdict(searched, digits, "cpu", VerdictOptions(
        min_seeds=3, max_seeds=8, max_seconds=4.5, margin=0.0, n_boot=500))
    assert cut.predicted == pytest.approx(2.0) and cut.first_seeds == 2 and cut.looks[0] == 2
    assert cut.level == pytest.approx(1 - 0.05 / len(look_schedule(2, 8)))  # planned from 2


def test_the_first_look_is_predicted_from_the_search_and_refused_when_it_cannot_fit() -> None:
    pool = [dataclasses.replace(_candidate("parabolic"), seconds=100.0),
            dataclasses.replace(_candidate("resnet"), seconds=200.0)]
    assert first_look_seeds(pool, VerdictOptions(min_seeds=3)) == (3, 300.0)  # no budget
    assert first_look_seeds(pool, VerdictOptions(min_seeds=3, max_seconds=1000)) == (3, 300.0)
    assert first_look_seeds(pool, VerdictOptions(min_seeds=3, max_seconds=700)) == (2, 300.0)
    with pytest.raises(InputError, match=r"^--max-seconds: got 500; allowed: at least 600 \(the "
                                         r"first look's 2 seeds of the 2 candidates"):
        first_look_seeds(pool, VerdictOptions(min_seeds=3, max_seconds=500))
    unknown = [pool[0], _candidate("resnet")]  # a candidate not from a run: no prediction
    assert first_look_seeds(unknown, VerdictOptions(min_seeds=3, max_seconds=1)) == (3, None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of records (``test_results.SPEC``: 3 families with finished trials, small
    nets, 300 digits): the verdict retrains them without a search."""
    return make_synthetic_run(tmp_path_factory.mktemp("verdict") / "run")


def test_compare_verdict_writes_json_report_and_plots(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_run / "verdict"
    code = main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--seeds", "2",
                 "--max-seeds", "2", "--device", "cpu", "--budget", "trials"])
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "verdict.json").read_text())
    assert set(data) == {"families", "pairs", "sentence"}
    assert set(data["families"]) == {"parabolic", "hamiltonian", "second_order"}
    assert f"Verdict: {data['sentence']}" in printed
    report = (out / "report.md").read_text()
    assert report.index("## Estimand") < report.index("## Verdict") < report.index("## Families")
    assert "search this space with budget B, then select on validation" in report
    assert f"**{data['sentence']}**" in report and "It stopped because the budget in seeds was spent" in report
    # the synthetic trials took 1 + number seconds: #2, #6 and #11 (the best within 3 trials)
    assert "The candidates' search trials predicted 44 s for the first look (2 seeds); it took" in report
    assert "## Expected best accuracy against the number of trials" in report
    for name in ("verdict.png", "verdict_cost.png", "expected_max.png"):
        assert f"]({name})" in report
        assert imread(out / name)[..., :3].std() > 0.05


def test_a_first_look_cut_to_the_seconds_is_reported_as_planned(tiny_run: Path) -> None:
    """--seeds 3 with --max-seconds 60: the candidates' search trials (22 s a seed) fit 2 seeds,
    so the first look has 2 and the report plans its looks from there."""
    out = tiny_run / "cut"
    assert main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--seeds", "3",
                 "--max-seeds", "3", "--max-seconds", "60", "--device", "cpu", "--budget",
                 "trials"]) == 0
    report = (out / "report.md").read_text()
    assert "looks at 2" in report and "of the planned 2, 3 (budget: 3 seeds, 60 s)" in report
    assert "it was cut from --seeds 3 to 2, as 3 were predicted to need 66 s" in report


def test_the_verdict_at_the_users_cost(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_run / "at_cost"
    assert main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--seeds", "2", "--max-seeds",
                 "2", "--device", "cpu", "--budget", "trials", "--cost-levels", "2e5"]) == 0
    printed = capsys.readouterr().out
    at_cost = pd.read_csv(out / "verdict_at_cost.csv")
    assert at_cost["family"].tolist() == ["parabolic", "second_order"] and at_cost["level"].eq(2e5).all()
    sentence = at_cost["sentence"].iloc[0]
    assert sentence.startswith("At most 0.2 MFLOPs per image") and sentence in printed
    assert "## The verdict at the user's cost" in (out / "report.md").read_text()
    assert set(json.loads((out / "verdict.json").read_text())["families"]) == {
        "parabolic", "hamiltonian", "second_order"}  # the verdict itself is unchanged


def test_compare_verdict_refuses_bad_options_with_one_line(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_run / "bad"
    assert main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--budget", "money"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--budget: got 'money'; allowed: flop_epochs | seconds | trials" in error
    assert main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--cost-levels", "cheap"]) == 2
    assert "--cost-levels: got 'cheap'; allowed: auto, or numbers" in capsys.readouterr().err
    assert main(["compare", str(tiny_run), str(tiny_run), "--verdict"]) == 2
    assert "--verdict compares the families of one run" in capsys.readouterr().err
    # 2 seeds of the candidates #2, #6 and #11, at the 3 + 7 + 12 s their search trials took
    assert main(["compare", str(tiny_run), "--out", str(out), "--verdict", "--budget", "trials",
                 "--max-seconds", "40", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--max-seconds: got 40; allowed: at least 44 (" in error
    assert not out.exists()


def test_the_python_api_returns_the_verdict(tiny_run: Path) -> None:
    import pdenas

    comparison = pdenas.open_run(tiny_run).compare(verdict=True, seeds=2, max_seeds=2, device="cpu",
                                                   out=tiny_run / "api", budget="trials")
    verdict = comparison.verdict
    assert verdict.to_dict() == json.loads((tiny_run / "api" / "verdict.json").read_text())
    assert verdict.seeds == 2 and verdict.stopped in ("seeds", "settled")
    assert list(verdict.families["family"]) == ["parabolic", "hamiltonian", "second_order"]
    assert sorted(verdict.runs["trial"].unique()) == [2, 6, 11]  # the best within 3 trials each
    assert pdenas.open_run(tiny_run).compare(out=tiny_run / "plain").verdict is None
