"""The statistics a report states, on plain arrays (no study knowledge): confidence intervals of a mean, the
paired test between two settings, Holm's correction, the probability of improvement and a rank correlation.

Every function says what it does with the awkward cases instead of letting a library warn: one value gives
no interval, all-equal values give a zero-width one, all-zero paired differences give p = 1, a constant
input gives no correlation. Every random draw is seeded, so a report is the same every time it is written.

- :func:`mean_ci`: t-based interval of a mean, for values that are i.i.d. draws of one quantity (one
  category's score over seeds).
- :func:`bootstrap_mean_ci`: percentile bootstrap of a setting's mean over a seeds x categories matrix,
  resampling both axes, as rliable's stratified bootstrap with ``task_bootstrap`` does. A seed is one
  training run that scored every category, so a seed is resampled as a whole row (its categories stay
  together); the categories are resampled as columns.
- :func:`paired_wilcoxon`: scipy's Wilcoxon signed-rank test on paired differences, with the method chosen
  here and named in the result.
- :func:`holm`: Holm's step-down adjustment of a family of p-values.
- :func:`probability_of_improvement`: P(X > Y) over paired units, ties counting half.
- :func:`rank_correlation`: Spearman's rank correlation with its p-value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Bootstrap replicates of every interval, and the seed of their draws (rliable uses 50,000 for its figures;
# 10,000 puts the 2.5 % quantile's Monte-Carlo error far below the last digit a report shows).
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0
# Exact null distributions: Wilcoxon's own tables up to this many non-zero differences without ties...
EXACT_MAX_PAIRS = 50
# ...and, with tied |differences|, every one of the 2**n sign patterns up to this n (2**13 = 8192).
PERMUTATION_MAX_PAIRS = 13
PERMUTATION_RESAMPLES = 2**PERMUTATION_MAX_PAIRS
# Fewer points than this and a rank correlation is not computed.
MIN_CORRELATION_POINTS = 3

# How a p-value was obtained (the ``test`` column of comparisons.csv).
TEST_EXACT = "Wilcoxon signed-rank, exact"
TEST_PERMUTATION = "Wilcoxon signed-rank, exact over all sign patterns (tied differences)"
TEST_ASYMPTOTIC = "Wilcoxon signed-rank, normal approximation with tie correction"
TEST_ALL_ZERO = "all differences zero: p = 1 by definition"
TEST_NO_PAIRS = "no paired units"


# ------------------------------------------------------------------------------------- t interval ---
@dataclass(frozen=True)
class Spread:
    """Mean of a metric over repeats with its sample std and t-based confidence interval."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    half_width: float  # t_{(1+confidence)/2, n-1} * std / sqrt(n); NaN when n < 2

    @property
    def ci_low(self) -> float:
        return self.mean - self.half_width

    @property
    def ci_high(self) -> float:
        return self.mean + self.half_width


def _finite(values: Iterable[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, std and t-based confidence interval of the finite values (NaN parts when fewer than 2).

    All-equal values give std 0 and a zero-width interval."""
    array = _finite(values)
    n = int(array.size)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan)
    if n == 1:
        return Spread(1, float(array[0]), math.nan, math.nan)
    if np.all(array == array[0]):
        return Spread(n, float(array[0]), 0.0, 0.0)
    std = float(array.std(ddof=1))
    quantile = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1))
    return Spread(n, float(array.mean()), std, quantile * std / math.sqrt(n))


# ----------------------------------------------------------------------------- bootstrap interval ---
@dataclass(frozen=True)
class Interval:
    """A setting's mean over its seeds, the bootstrap interval around it, and the seed-to-seed spread.

    ``low``/``high`` are NaN when there are fewer than 2 seeds (one seed says nothing about how another
    seed would score); ``seed_std`` is the standard deviation of the per-seed means (ddof=1), NaN then too.
    """

    n_seeds: int
    mean: float
    low: float
    high: float
    seed_std: float

    @property
    def has_interval(self) -> bool:
        return self.n_seeds >= 2 and not math.isnan(self.low)


NO_VALUES = Interval(0, math.nan, math.nan, math.nan, math.nan)


def _clean_matrix(matrix: np.ndarray) -> np.ndarray:
    """The matrix without seeds (rows) or categories (columns) that have no finite value."""
    array = np.asarray(matrix, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"expected a seeds x categories matrix, got shape {array.shape}")
    finite = np.isfinite(array)
    return array[finite.any(axis=1)][:, finite.any(axis=0)]


def _seed_means(block: np.ndarray) -> np.ndarray:
    """Per-seed mean over categories along the last axis, then the mean over seeds (NaN cells left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a resampled seed may draw only NaN cells
        return np.nanmean(np.nanmean(block, axis=-1), axis=-1)


def bootstrap_mean_ci(
    matrix: np.ndarray, *, confidence: float = CONFIDENCE, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
    resample_categories: bool = True,
) -> Interval:
    """Mean over seeds of the per-seed mean over categories, with a percentile bootstrap interval.

    ``matrix`` is seeds x categories (NaN: no value). Each replicate draws the seeds (whole rows) with
    replacement and, with ``resample_categories``, the categories (columns) too, and recomputes the mean;
    the interval is the replicates' (1 - confidence)/2 and (1 + confidence)/2 quantiles. Fewer than 2
    seeds: no interval (NaN bounds). All finite values equal: a zero-width interval at that value.
    """
    array = _clean_matrix(matrix)
    n_seeds, n_categories = array.shape
    if n_seeds == 0:
        return NO_VALUES
    per_seed = _seed_means(array[:, None, :])
    mean = float(per_seed.mean())
    if n_seeds == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    values = array[np.isfinite(array)]
    if np.all(values == values[0]):
        return Interval(n_seeds, float(values[0]), float(values[0]), float(values[0]), 0.0)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(reps, n_seeds))
    columns = (rng.integers(0, n_categories, size=(reps, n_categories)) if resample_categories
               else np.broadcast_to(np.arange(n_categories), (reps, n_categories)))
    replicates = _seed_means(array[rows[:, :, None], columns[:, None, :]])
    replicates = replicates[np.isfinite(replicates)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return Interval(n_seeds, mean, float(low), float(high), float(per_seed.std(ddof=1)))


# ---------------------------------------------------------------------------------- paired tests ---
@dataclass(frozen=True)
class PairedTest:
    """Setting B against setting A on paired units (the same seed and category in both)."""

    n_pairs: int
    mean_a: float
    mean_b: float
    mean_difference: float  # mean of b - a over the pairs
    statistic: float  # Wilcoxon's statistic as scipy reports it (NaN without pairs)
    p_value: float  # two-sided; NaN without pairs
    prob_improvement: float  # P(b > a) over the pairs, ties counting half
    test: str  # how the p-value was obtained (one of the TEST_* texts)


def probability_of_improvement(b: Sequence[float], a: Sequence[float]) -> float:
    """P(B > A) over paired units: the share of pairs where b beats a, a tie counting half (NaN: no pairs)."""
    b_array, a_array = np.asarray(b, dtype=float), np.asarray(a, dtype=float)
    if b_array.shape != a_array.shape:
        raise ValueError(f"paired values need the same shape, got {b_array.shape} and {a_array.shape}")
    if b_array.size == 0:
        return math.nan
    return float(np.mean((b_array > a_array) + 0.5 * (b_array == a_array)))


def _has_ties(values: np.ndarray) -> bool:
    return bool(np.unique(values).size < values.size)


def paired_wilcoxon(b: Sequence[float], a: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of the paired differences b - a (pairs with a NaN left out).

    Zero differences are dropped (Wilcoxon's own convention); when every difference is zero, p = 1. The
    null distribution is exact when it can be: Wilcoxon's exact distribution for up to
    :data:`EXACT_MAX_PAIRS` non-zero differences without ties, all 2**n sign patterns (scipy's permutation
    method, which enumerates them) for up to :data:`PERMUTATION_MAX_PAIRS` with tied |differences|, and
    otherwise the normal approximation with scipy's tie correction.
    """
    b_array, a_array = np.asarray(b, dtype=float), np.asarray(a, dtype=float)
    if b_array.shape != a_array.shape:
        raise ValueError(f"paired values need the same shape, got {b_array.shape} and {a_array.shape}")
    keep = np.isfinite(b_array) & np.isfinite(a_array)
    b_array, a_array = b_array[keep], a_array[keep]
    n = int(b_array.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, TEST_NO_PAIRS)
    differences = b_array - a_array
    means = (float(a_array.mean()), float(b_array.mean()), float(differences.mean()))
    improvement = probability_of_improvement(b_array, a_array)
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return PairedTest(n, *means, 0.0, 1.0, improvement, TEST_ALL_ZERO)
    ties = _has_ties(np.abs(nonzero))
    if not ties and nonzero.size <= EXACT_MAX_PAIRS:
        method: str | stats.PermutationMethod = "exact"
        test = TEST_EXACT
    elif ties and nonzero.size <= PERMUTATION_MAX_PAIRS:
        method = stats.PermutationMethod(n_resamples=PERMUTATION_RESAMPLES)
        test = TEST_PERMUTATION
    else:
        method, test = "asymptotic", TEST_ASYMPTOTIC
    result = stats.wilcoxon(nonzero, method=method)
    return PairedTest(n, *means, float(result.statistic), float(result.pvalue), improvement, test)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN and is no member of the family.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max over j <= i of min(1, (m - j + 1) * p_(j)). Rejecting where the adjusted value is below alpha keeps
    the family-wise error rate at alpha.
    """
    array = np.asarray(p_values, dtype=float)
    adjusted = np.full(array.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(array))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(array[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * array[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


# ---------------------------------------------------------------------------------- correlation ---
@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation of paired values, or why there is none (``note``)."""

    n: int
    rho: float
    p_value: float
    note: str


def rank_correlation(x: Sequence[float], y: Sequence[float], names: tuple[str, str] = ("x", "y")) -> Correlation:
    """Spearman's rho and its two-sided p-value over the pairs with both values finite.

    Fewer than :data:`MIN_CORRELATION_POINTS` pairs, or a side whose values are all equal, give no
    correlation (NaN) and say why (``names`` name the two sides in that note)."""
    x_array, y_array = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x_array) & np.isfinite(y_array)
    x_array, y_array = x_array[keep], y_array[keep]
    n = int(x_array.size)
    if n < MIN_CORRELATION_POINTS:
        return Correlation(n, math.nan, math.nan, f"{n} pair(s); a rank correlation needs at least "
                                                  f"{MIN_CORRELATION_POINTS}")
    for name, values in zip(names, (x_array, y_array), strict=True):
        if np.all(values == values[0]):
            return Correlation(n, math.nan, math.nan, f"all {n} values of {name} are equal, so ranks are undefined")
    result = stats.spearmanr(x_array, y_array)
    return Correlation(n, float(result.statistic), float(result.pvalue), "")
