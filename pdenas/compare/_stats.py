"""The statistics of the verdict: a two-level bootstrap over seeds and test images, the
probability that each family is best, paired differences with intervals and Holm-adjusted
p-values, effect sizes, and the expected best accuracy of n trials (Dodge et al. 2019).

Pure numpy/scipy on arrays; nothing here trains or reads a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["BootstrapResult", "bootstrap_means", "bootstrap_selection", "expected_max",
           "expected_max_curve", "holm", "paired_effect_size", "percentile_p", "seed_inflation",
           "selection_weights"]

_CHUNK = 256
"""Bootstrap replicates drawn at once (bounds the (replicates, images) weight matrix)."""


def seed_inflation(seeds: int, level: float = 0.95) -> float:
    """How much the seed level's resampling weights are stretched around 1.

    The plain bootstrap of S values has variance (S-1)/S times the sampling variance of their
    mean and normal tails; Student's t with S-1 degrees of freedom is what a mean of S seeds
    needs. Stretching the seed weights by ``t_{S-1} / z * sqrt(S / (S-1))`` makes the seed part
    of the bootstrap as wide as the t interval at ``level`` (for S = 5, 1.58 times; for 20, 1.08).
    One seed has no spread to estimate: 1 (the interval then reflects the test images only).
    """
    if seeds < 2:
        return 1.0
    q = 0.5 + level / 2
    return float(stats.t.ppf(q, seeds - 1) / stats.norm.ppf(q) * math.sqrt(seeds / (seeds - 1)))


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap replicates of each family's mean accuracy.

    Attributes:
        estimate: (F,) the observed means over seeds and test images.
        replicates: (B, F) the means of each replicate (seeds and images resampled together for
            every family, so differences between families are paired).
    """

    estimate: np.ndarray
    replicates: np.ndarray

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) percentile intervals of each family's mean."""
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(self.replicates, [tail, 100 - tail], axis=0)
        return low, high

    def p_best(self) -> np.ndarray:
        """(F,) the share of replicates in which each family has the highest mean (ties split)."""
        top = self.replicates.max(axis=1, keepdims=True)
        winners = np.isclose(self.replicates, top, rtol=0, atol=1e-12)
        return (winners / winners.sum(axis=1, keepdims=True)).mean(axis=0)

    def difference(self, a: int, b: int, level: float = 0.95) -> tuple[float, float, float, float]:
        """Family ``a`` minus family ``b``: (difference, low, high, two-sided p)."""
        diffs = self.replicates[:, a] - self.replicates[:, b]
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(diffs, [tail, 100 - tail])
        return (float(self.estimate[a] - self.estimate[b]), float(low), float(high),
                percentile_p(diffs))


def _sqrtm(matrix: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The symmetric square root (or its pseudo-inverse) of a symmetric positive semi-definite
    matrix; eigenvalues below a relative 1e-10 count as 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    keep = values > 1e-10 * max(float(values.max(initial=0.0)), 1e-300)
    roots = np.zeros_like(values)
    roots[keep] = values[keep] ** (-0.5 if inverse else 0.5)
    return (vectors * roots) @ vectors.T


def _image_part(correct: np.ndarray) -> np.ndarray:
    """(N, F) each test image's own effect on each family's mean, without the seed-by-image noise.

    The mean over seeds of image i, k_i, varies as Σ_image + Σ_noise / S, where Σ_noise is the
    covariance of the residuals of the two-way (seed, image) layout. Resampling the k_i as they are
    would count that noise twice (the seed level already carries it), as Owen's pigeonhole
    bootstrap does; mapping them by A = Σ_image^½ Σ_k^-½ leaves the covariance Σ_image only,
    for every family and every difference of families alike. One seed: no noise to separate.
    """
    families, seeds, images = correct.shape
    columns = correct.mean(axis=1).T  # (N, F)
    centred = columns - columns.mean(axis=0)
    if seeds < 2 or images < 2:
        return centred
    rows = correct.mean(axis=2, keepdims=True)  # (F, S, 1)
    residual = correct - rows - columns.T[:, None, :] + correct.mean(axis=(1, 2))[:, None, None]
    flat = residual.reshape(families, -1)
    noise = flat @ flat.T / ((seeds - 1) * (images - 1))
    cov_k = centred.T @ centred / (images - 1)
    values, vectors = np.linalg.eigh(cov_k - noise / seeds)
    cov_image = (vectors * np.clip(values, 0, None)) @ vectors.T
    return centred @ (_sqrtm(cov_image) @ _sqrtm(cov_k, inverse=True)).T


def bootstrap_means(correct: np.ndarray, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> BootstrapResult:
    """The two-level bootstrap of each family's mean test accuracy.

    Seeds and test images are crossed (every seed's network sees every test image). Each replicate
    resamples the seeds with replacement (their per-seed accuracies over all test images carry
    the seed's own effect and the seed-by-image noise) and, independently, the test images with
    replacement (their effects on the means, the seed-by-image noise taken out so it is not
    counted twice, see ``_image_part``); the same draw serves every family, so differences
    are paired by seed and by image. The seed weights are stretched by ``seed_inflation`` so that
    a few seeds give Student-t-wide intervals rather than the plain bootstrap's too narrow ones.

    Args:
        correct: (F, S, N) 1 where family f's network of seed s classified test image i right
            (or any per-image score in [0, 1]).
        n_boot: Replicates.
        seed: Seeds the resampling.
        level: The level the seed weights are calibrated for.

    Returns:
        The observed means and the (n_boot, F) replicates.
    """
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim != 3 or min(correct.shape) < 1:
        raise ValueError(f"correct: expected a non-empty (families, seeds, images) array, got shape "
                         f"{correct.shape}")
    families, seeds, images = correct.shape
    rng = np.random.default_rng(seed)
    per_seed = correct.mean(axis=2).T  # (S, F)
    image_part = _image_part(correct)  # (N, F), centred
    stretch = seed_inflation(seeds, level)
    out = np.empty((n_boot, families))
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        image_w = rng.multinomial(images, np.full(images, 1 / images), size=b).astype(np.float64)
        seed_w = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=b).astype(np.float64)
        seed_w = 1 + stretch * (seed_w - 1)  # still sums to S; negative weights are fine for a mean
        out[start:start + b] = seed_w @ per_seed / seeds + image_w @ image_part / images
    return BootstrapResult(estimate=correct.mean(axis=(1, 2)), replicates=out)


def selection_weights(k: int) -> np.ndarray:
    """(k,) how often a search of k trials, drawn with replacement from k candidates ranked by
    validation (0 = best), selects each: P(j) = ((k-j)/k)^k - ((k-j-1)/k)^k (the smallest rank
    drawn; Dodge et al. 2019's weights for the expected maximum)."""
    j = np.arange(k)
    return ((k - j) / k) ** k - np.clip((k - j - 1) / k, 0, None) ** k


def bootstrap_selection(correct: np.ndarray, groups: Sequence[Sequence[int]], n_boot: int = 2000,
                        seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """The two-level bootstrap of each family's accuracy when a family puts forward several
    candidates, with the search's own luck resampled too.

    ``groups[f]`` lists family f's candidates (rows of ``correct``) from the best validation
    accuracy of the search down. Each replicate redraws the search among them, k draws with
    replacement keeping the best on validation (``selection_weights``), and takes that candidate's
    mean under the replicate's seed and image weights (the same for every candidate of every
    family). The estimate is the expectation over that draw: sum_j P(j) mean_j. One candidate per
    family is ``bootstrap_means``.

    Args:
        correct: (C, S, N) per-image correctness of every candidate's network at every seed.
        groups: Per family, its candidates' rows, best search validation first.
    """
    columns = bootstrap_means(correct, n_boot=n_boot, seed=seed, level=level)
    rng = np.random.default_rng([seed, 1])
    out = np.empty((n_boot, len(groups)))
    estimate = np.empty(len(groups))
    for f, rows in enumerate(groups):
        rows = np.asarray(rows, dtype=int)
        weights = selection_weights(len(rows))
        estimate[f] = weights @ columns.estimate[rows]
        picks = rng.choice(len(rows), size=n_boot, p=weights)
        out[:, f] = columns.replicates[np.arange(n_boot), rows[picks]]
    return BootstrapResult(estimate=estimate, replicates=out)


def percentile_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference: twice the
    smaller share of replicates on either side of 0, so p < alpha exactly when the percentile
    interval at 1 - alpha leaves 0 out; (k + 1) / (B + 1) keeps it above 0."""
    diffs = np.asarray(diffs, dtype=float)
    below = int((diffs <= 0).sum())
    above = int((diffs >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(diffs) + 1)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    Written out because scipy has no Holm (``scipy.stats.false_discovery_control`` does
    Benjamini-Hochberg/Yekutieli, which control another rate) and statsmodels is not a
    dependency: sort ascending, multiply the k-th smallest by (m - k + 1), take the running
    maximum, cap at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def paired_effect_size(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d_z of paired per-seed accuracies: the mean difference over its standard deviation
    across seeds (NaN with fewer than 2 seeds, ±inf when every seed differs by the same amount)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd <= 1e-12:  # every seed differs by the same amount (up to rounding)
        return 0.0 if abs(mean) <= 1e-12 else math.copysign(math.inf, mean)
    return mean / sd


def expected_max(values: Sequence[float], n: int) -> tuple[float, float]:
    """The expected maximum of ``n`` draws (with replacement) from ``values``, and its variance.

    Dodge et al. 2019 ("Show Your Work"), eq. 1: with the N values sorted, v_(1) <= ... <= v_(N),
    P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n, so a family with fewer trials is judged at the same n.
    """
    v = np.sort(np.asarray(values, dtype=float))
    v = v[~np.isnan(v)]
    if len(v) == 0 or n < 1:
        return math.nan, math.nan
    i = np.arange(1, len(v) + 1) / len(v)
    weights = i**n - (i - 1 / len(v)) ** n
    mean = float(weights @ v)
    return mean, float(max(0.0, weights @ v**2 - mean**2))


def expected_max_curve(values: Sequence[float], n_max: int) -> np.ndarray:
    """(n_max, 3): n, the expected maximum of n draws, its standard deviation, for n = 1..n_max."""
    rows = [(n, *expected_max(values, n)) for n in range(1, n_max + 1)]
    return np.array([(n, m, math.sqrt(v) if v == v else math.nan) for n, m, v in rows])
