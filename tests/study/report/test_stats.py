"""The statistics on plain arrays, each against scipy or a hand computation, ties, n = 1 and all-equal
included: t and bootstrap intervals, the paired Wilcoxon test, Holm, P(X > Y) and Spearman."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from study.report.stats import (
    BOOTSTRAP_REPS,
    BOOTSTRAP_SEED,
    TEST_ALL_ZERO,
    TEST_ASYMPTOTIC,
    TEST_EXACT,
    TEST_NO_PAIRS,
    TEST_PERMUTATION,
    bootstrap_mean_ci,
    holm,
    mean_ci,
    paired_wilcoxon,
    probability_of_improvement,
    rank_correlation,
)
from tests.study.report.fixtures import hand_ci


# ------------------------------------------------------------------------------------- t interval ---
def test_mean_ci_matches_t_interval_by_hand():
    values = [0.91, 0.935, 0.962, 0.944]
    spread = mean_ci(values + [float("nan")])  # NaN (unknown) values are left out
    mean, half = hand_ci(values)
    assert spread.n == 4
    assert spread.mean == pytest.approx(mean)
    assert spread.std == pytest.approx(np.std(values, ddof=1))
    assert spread.half_width == pytest.approx(half)
    interval = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(values))
    assert (spread.ci_low, spread.ci_high) == pytest.approx(interval)


def test_mean_ci_with_one_value_has_no_interval_and_equal_values_a_zero_width_one():
    one = mean_ci([0.9])
    assert one.n == 1 and one.mean == 0.9 and math.isnan(one.half_width) and math.isnan(one.std)
    none = mean_ci([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)
    equal = mean_ci([0.1, 0.1, 0.1])
    assert (equal.mean, equal.std, equal.ci_low, equal.ci_high) == (0.1, 0.0, 0.1, 0.1)


# ------------------------------------------------------------------------------ bootstrap interval ---
def hand_bootstrap(matrix: np.ndarray, reps: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-way bootstrap written out with loops, drawing from the generator in the same order."""
    rng = np.random.default_rng(seed)
    n, m = matrix.shape
    rows = rng.integers(0, n, size=(reps, n))
    columns = rng.integers(0, m, size=(reps, m))
    replicates = []
    for r in range(reps):
        seed_means = [np.mean([matrix[i, j] for j in columns[r]]) for i in rows[r]]
        replicates.append(np.mean(seed_means))
    alpha = (1 - confidence) / 2
    return float(np.quantile(replicates, alpha)), float(np.quantile(replicates, 1 - alpha))


def test_bootstrap_resamples_seeds_and_categories_as_written_out_by_hand():
    matrix = np.array([[0.91, 0.85, 0.99], [0.93, 0.80, 0.97], [0.90, 0.86, 1.00]])
    interval = bootstrap_mean_ci(matrix, reps=400, seed=3)
    assert interval.n_seeds == 3
    assert interval.mean == pytest.approx(matrix.mean())
    assert (interval.low, interval.high) == pytest.approx(hand_bootstrap(matrix, 400, 3))
    assert interval.seed_std == pytest.approx(np.std(matrix.mean(axis=1), ddof=1))
    assert interval.low < interval.mean < interval.high


def test_bootstrap_is_deterministic_and_its_seed_matters():
    matrix = np.random.default_rng(1).uniform(0.8, 1.0, size=(4, 6))
    first, again = bootstrap_mean_ci(matrix), bootstrap_mean_ci(matrix)
    assert (first.low, first.high) == (again.low, again.high)
    other = bootstrap_mean_ci(matrix, seed=BOOTSTRAP_SEED + 1)
    assert (other.low, other.high) != (first.low, first.high)
    assert BOOTSTRAP_REPS >= 10_000


def test_bootstrap_of_two_seeds_over_one_category_spans_the_two_by_hand():
    """Resamples of {a, b}: (a, a) with probability 1/4, (a, b) 1/2, (b, b) 1/4, so the 2.5 % and 97.5 %
    quantiles of the replicate means are a and b themselves."""
    interval = bootstrap_mean_ci(np.array([[0.8], [0.9]]))
    assert (interval.low, interval.high) == (pytest.approx(0.8), pytest.approx(0.9))
    assert interval.mean == pytest.approx(0.85)


def test_bootstrap_with_one_seed_gives_no_interval():
    interval = bootstrap_mean_ci(np.array([[0.8, 0.9, 1.0]]))
    assert interval.n_seeds == 1 and interval.mean == pytest.approx(0.9)
    assert math.isnan(interval.low) and math.isnan(interval.high) and math.isnan(interval.seed_std)
    assert not interval.has_interval


def test_bootstrap_of_equal_values_is_zero_width():
    interval = bootstrap_mean_ci(np.full((3, 4), 0.1))
    assert (interval.mean, interval.low, interval.high, interval.seed_std) == (0.1, 0.1, 0.1, 0.0)
    assert interval.has_interval


def test_bootstrap_leaves_missing_cells_out():
    matrix = np.array([[0.9, np.nan], [0.8, 0.7], [np.nan, np.nan]])  # the third seed has no value at all
    interval = bootstrap_mean_ci(matrix)
    assert interval.n_seeds == 2
    assert interval.mean == pytest.approx((0.9 + 0.75) / 2)  # per-seed means first, then over seeds
    assert math.isfinite(interval.low) and math.isfinite(interval.high)
    assert bootstrap_mean_ci(np.full((2, 2), np.nan)).n_seeds == 0


def test_bootstrap_over_seeds_only_stays_within_the_seed_means():
    matrix = np.array([[0.9, 0.8], [0.7, 0.6], [0.95, 0.85]])
    interval = bootstrap_mean_ci(matrix, resample_categories=False)
    seed_means = matrix.mean(axis=1)
    assert seed_means.min() <= interval.low < interval.high <= seed_means.max()


# ---------------------------------------------------------------------------------- paired tests ---
def hand_signed_rank_p(differences: list[float]) -> float:
    """Two-sided p of the signed-rank statistic, by enumerating every sign pattern (average ranks for ties)."""
    magnitudes = np.abs(differences)
    ranks = stats.rankdata(magnitudes)
    observed = ranks[np.asarray(differences) > 0].sum()
    total = ranks.sum()
    centred = abs(observed - total / 2)
    extreme = sum(abs(ranks[list(signs)].sum() - total / 2) >= centred - 1e-12
                  for signs in itertools.product([False, True], repeat=len(ranks)))
    return extreme / 2 ** len(ranks)


def test_wilcoxon_without_ties_is_exact_by_hand_and_as_scipy():
    a = [0.80, 0.81, 0.82]
    b = [0.81, 0.83, 0.85]  # differences 1, 2, 3 (x 0.01): all positive, so p = 2 * 1/8
    test = paired_wilcoxon(b, a)
    assert test.test == TEST_EXACT and test.n_pairs == 3
    assert test.p_value == pytest.approx(0.25)
    assert test.p_value == pytest.approx(stats.wilcoxon(np.subtract(b, a), method="exact").pvalue)
    assert test.mean_difference == pytest.approx(0.02)
    assert test.prob_improvement == 1.0


def test_wilcoxon_with_tied_differences_enumerates_every_sign_pattern():
    differences = [1.0, 1.0, 2.0, -1.0, 3.0, 2.0]
    a = np.zeros(len(differences))
    test = paired_wilcoxon(a + differences, a)
    assert test.test == TEST_PERMUTATION
    assert test.p_value == pytest.approx(hand_signed_rank_p(differences))


def test_wilcoxon_drops_zero_differences_and_says_when_all_are_zero():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    with_zeros = paired_wilcoxon(a + [0, 0, 0.01, 0.02, 0.03], a)
    assert with_zeros.n_pairs == 5 and with_zeros.p_value == pytest.approx(0.25)  # as for 1, 2, 3 alone
    assert with_zeros.prob_improvement == pytest.approx((3 + 0.5 * 2) / 5)
    equal = paired_wilcoxon(a, a)
    assert (equal.p_value, equal.statistic, equal.test) == (1.0, 0.0, TEST_ALL_ZERO)
    assert equal.prob_improvement == 0.5 and equal.mean_difference == 0.0


def test_wilcoxon_with_one_pair_and_without_pairs():
    one = paired_wilcoxon([0.9], [0.8])
    assert one.n_pairs == 1 and one.p_value == pytest.approx(1.0)  # the only two sign patterns tie
    none = paired_wilcoxon([np.nan], [0.8])
    assert none.n_pairs == 0 and math.isnan(none.p_value) and none.test == TEST_NO_PAIRS


def test_wilcoxon_of_many_tied_pairs_uses_scipys_normal_approximation():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.8, 1.0, size=30)
    differences = np.round(rng.normal(0.01, 0.02, size=30), 2)  # rounded: tied magnitudes, some zeros
    test = paired_wilcoxon(a + differences, a)
    nonzero = ((a + differences) - a)[(a + differences) - a != 0]
    assert test.test == TEST_ASYMPTOTIC
    assert test.p_value == pytest.approx(stats.wilcoxon(nonzero, method="asymptotic").pvalue)


def test_probability_of_improvement_counts_ties_half_by_hand():
    assert probability_of_improvement([1, 2, 3, 4], [0, 2, 5, 1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert math.isnan(probability_of_improvement([], []))
    with pytest.raises(ValueError):
        probability_of_improvement([1, 2], [1])


def test_holm_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, raised to 0.06)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_nan_out_of_the_family_and_leaves_a_single_p():
    adjusted = holm([0.5, math.nan, 0.6])
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2]] == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1, then 0.6 raised to 1
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])  # ties
    assert holm([]).size == 0


def test_rank_correlation_matches_scipy_with_ties():
    x = [1.0, 2.0, 2.0, 4.0, 5.0]
    y = [0.2, 0.1, 0.4, 0.4, 0.9]
    correlation = rank_correlation(x, y)
    expected = stats.spearmanr(x, y)
    assert correlation.n == 5 and correlation.note == ""
    assert correlation.rho == pytest.approx(expected.statistic)
    assert correlation.p_value == pytest.approx(expected.pvalue)


def test_rank_correlation_of_too_few_or_constant_values_says_why():
    few = rank_correlation([1.0, 2.0], [3.0, 4.0])
    assert math.isnan(few.rho) and "at least 3" in few.note
    constant = rank_correlation([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], names=("early", "final"))
    assert math.isnan(constant.rho) and "final are equal" in constant.note
    missing = rank_correlation([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    assert missing.n == 3 and missing.rho == pytest.approx(1.0)
