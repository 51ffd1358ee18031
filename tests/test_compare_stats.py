"""Tests for pdenas.compare._stats: the two-level bootstrap's coverage, P(best), paired
differences, Holm's adjustment and the expected maximum of n trials."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import expit

from pdenas.compare._stats import (bootstrap_means, bootstrap_selection, expected_max,
                                   expected_max_curve, holm, paired_effect_size, percentile_p,
                                   seed_inflation, selection_weights)


def _population_draw(rng: np.random.Generator, seeds: int, images: int, shifts: tuple[float, ...],
                     seed_sd: float) -> np.ndarray:
    """(F, S, N) correctness: image logits ~ N(2.5, 2), a per-family logit shift, a per-seed
    logit effect, independent Bernoulli noise per (seed, image)."""
    z = rng.normal(2.5, 2.0, images)
    u = rng.normal(0.0, seed_sd, (len(shifts), seeds))
    p = expit(z[None, None, :] + np.array(shifts)[:, None, None] + u[:, :, None])
    return (rng.random(p.shape) < p).astype(float)


def test_the_interval_covers_a_known_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    truth = expit(rng.normal(2.5, 2.0, 400_000)).mean()  # the population mean accuracy
    reps, hits, null_hits = 200, 0, 0
    for r in range(reps):
        correct = _population_draw(rng, seeds=5, images=200, shifts=(0.0, 0.0), seed_sd=0.3)
        boot = bootstrap_means(correct, n_boot=300, seed=r)
        low, high = boot.interval(0.95)
        hits += low[0] <= truth <= high[0]
        _, lo, hi, _ = boot.difference(0, 1)
        null_hits += lo <= 0 <= hi
    assert 0.90 <= hits / reps <= 0.99  # nominal 0.95; 200 runs: ± 0.03 is two standard errors
    assert 0.90 <= null_hits / reps <= 0.99  # paired difference of two equal families


def test_a_naive_one_level_bootstrap_would_be_too_narrow() -> None:
    """What the seed stretching is for: with 3 seeds, Student's t is 2.2 times the normal width."""
    assert seed_inflation(3) == pytest.approx(4.303 / 1.960 * math.sqrt(1.5), rel=1e-3)
    assert seed_inflation(20) < 1.1 and seed_inflation(1) == 1.0


def test_p_best_and_differences_find_the_clearly_worse_family() -> None:
    rng = np.random.default_rng(1)
    correct = _population_draw(rng, seeds=5, images=500, shifts=(0.0, 0.0, -1.0), seed_sd=0.1)
    boot = bootstrap_means(correct, n_boot=1000)
    p_best = boot.p_best()
    assert p_best.sum() == pytest.approx(1.0)
    assert p_best[2] == 0.0 and min(p_best[:2]) > 0.1  # the two equal ones share it
    diff, low, high, p = boot.difference(2, 0)
    assert diff == pytest.approx(boot.estimate[2] - boot.estimate[0])
    assert low <= diff <= high < 0 and p < 0.01


def test_identical_families_give_a_zero_difference_and_p_one() -> None:
    rng = np.random.default_rng(2)
    one = _population_draw(rng, seeds=4, images=300, shifts=(0.0,), seed_sd=0.2)
    boot = bootstrap_means(np.concatenate([one, one]), n_boot=500)
    assert boot.difference(0, 1) == (0.0, 0.0, 0.0, 1.0)
    assert boot.p_best() == pytest.approx([0.5, 0.5])


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="correct: expected"):
        bootstrap_means(np.zeros((2, 3)))


def test_percentile_p_agrees_with_the_interval() -> None:
    diffs = np.random.default_rng(3).normal(0.5, 0.25, 4001)  # 0 is two sd below the centre
    p = percentile_p(diffs)
    assert p == pytest.approx(2 * 0.0228, abs=0.01)
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert (p < 0.05) == (low > 0)
    assert percentile_p(np.zeros(100)) == 1.0


def test_holm_on_known_p_values() -> None:
    # Holm (1979) by hand: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]).tolist() == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.001]).tolist() == [0.001]
    assert holm([]).tolist() == []


def test_paired_effect_size() -> None:
    assert paired_effect_size([0.9, 0.8, 0.85], [0.8, 0.8, 0.8]) == pytest.approx(
        np.mean([0.1, 0.0, 0.05]) / np.std([0.1, 0.0, 0.05], ddof=1))
    assert math.isnan(paired_effect_size([0.9], [0.8]))
    assert paired_effect_size([0.9, 0.8], [0.8, 0.7]) == math.inf
    assert paired_effect_size([0.9, 0.8], [0.9, 0.8]) == 0.0


@pytest.mark.parametrize("values", [[0.5, 0.7, 0.6], [0.9, 0.9, 0.1, 0.4], [0.3]])
def test_expected_maximum_against_brute_force(values: list[float]) -> None:
    for n in (1, 2, 3):
        maxima = [max(draw) for draw in itertools.product(values, repeat=n)]  # every n-tuple
        mean, var = expected_max(values, n)
        assert mean == pytest.approx(np.mean(maxima))
        assert var == pytest.approx(np.var(maxima), abs=1e-12)


def test_expected_maximum_curve_rises_to_the_best() -> None:
    values = np.random.default_rng(4).uniform(0.6, 0.9, 8)
    curve = expected_max_curve(values, 50)
    assert curve[0, 1] == pytest.approx(values.mean())
    assert np.all(np.diff(curve[:, 1]) >= -1e-12) and curve[-1, 1] == pytest.approx(values.max(), abs=1e-3)
    assert math.isnan(expected_max([], 3)[0])


def test_selection_weights_are_those_of_the_best_of_k_draws() -> None:
    for k in (1, 2, 3, 5):
        counts = np.zeros(k)
        for draw in itertools.product(range(k), repeat=k):  # every search of k draws
            counts[min(draw)] += 1
        assert selection_weights(k) == pytest.approx(counts / k**k)


def test_the_search_resampled_widens_the_interval_of_a_lucky_family() -> None:
    """A family whose second candidate is far worse: resampling its search puts weight there."""
    rng = np.random.default_rng(5)
    good, bad, other = (_population_draw(rng, seeds=4, images=400, shifts=(s,), seed_sd=0.1)
                        for s in (0.0, -2.0, 0.0))
    correct = np.concatenate([good, bad, other])
    alone = bootstrap_selection(correct, [[0], [2]], n_boot=1000)
    assert alone.estimate == pytest.approx(correct[[0, 2]].mean(axis=(1, 2)))
    searched = bootstrap_selection(correct, [[0, 1], [2]], n_boot=1000)
    weights = selection_weights(2)  # 3/4, 1/4
    assert searched.estimate[0] == pytest.approx(weights @ correct[:2].mean(axis=(1, 2)))
    low, high = searched.interval()
    alone_low, alone_high = alone.interval()
    assert high[0] - low[0] > 3 * (alone_high[0] - alone_low[0])
