"""Significance tests of canary analysis: always-valid under repeated looks, powerful with data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlops_operator.rollout.significance import (
    log_mixture_ratio,
    mcnemar_noninferiority,
    msprt_two_proportions,
    simulate_false_rollbacks,
)

# --- mSPRT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("looks", "labels_per_look", "accuracy", "min_samples"),
    [
        (50, 40, 0.9, 200),
        (50, 20, 0.9, 20),  # the gate opens early, on small samples
        (50, 100, 0.5, 100),  # the largest variance of a proportion
        (50, 200, 0.99, 200),  # near-perfect models: the smoothed variance matters
    ],
    ids=["typical", "early-gate", "coin-flip", "near-perfect"],
)
def test_false_rollbacks_of_equal_models_stay_below_alpha_at_every_look(
    looks: int, labels_per_look: int, accuracy: float, min_samples: int
) -> None:
    report = simulate_false_rollbacks(
        rollouts=2000,
        looks=looks,
        labels_per_look=labels_per_look,
        accuracy=accuracy,
        min_samples=min_samples,
        alpha=0.05,
        seed=7,
    )
    assert report.msprt_rate <= 0.05
    # The same looks with a fixed-sample z-test: the reason for the sequential test.
    assert report.naive_rate > 0.05


def test_false_rollback_rate_is_bounded_by_alpha_for_several_seeds() -> None:
    for seed in range(5):
        report = simulate_false_rollbacks(rollouts=1000, looks=50, alpha=0.1, seed=seed)
        assert report.msprt_rate <= 0.1, seed


@pytest.mark.parametrize(
    ("candidate_accuracy", "max_drop", "at_least"),
    [(0.8, 0.0, 0.95), (0.85, 0.0, 0.8), (0.8, 0.05, 0.7)],
    ids=["ten-points-worse", "five-points-worse", "worse-than-the-margin"],
)
def test_a_real_drop_is_found_with_enough_samples(
    candidate_accuracy: float, max_drop: float, at_least: float
) -> None:
    report = simulate_false_rollbacks(
        rollouts=500,
        looks=50,
        labels_per_look=100,
        candidate_accuracy=candidate_accuracy,
        max_drop=max_drop,
        seed=3,
    )
    assert report.msprt_rate >= at_least


def test_a_drop_within_the_margin_is_not_a_rollback() -> None:
    report = simulate_false_rollbacks(
        rollouts=500, labels_per_look=100, candidate_accuracy=0.89, max_drop=0.05, seed=1
    )
    assert report.msprt_rate <= 0.05


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b", "worse"),
    [
        (80, 2000, 20, 2000, True),  # 4% vs 1% errors
        (20, 2000, 80, 2000, False),  # better, however significant
        (22, 2000, 20, 2000, False),  # noise
        (3, 10, 0, 10, False),  # too few to tell
    ],
    ids=["much-worse", "better", "noise", "tiny-samples"],
)
def test_direction_and_significance(a: int, n_a: int, b: int, n_b: int, worse: bool) -> None:
    result = msprt_two_proportions(a, n_a, b, n_b, alpha=0.05)
    assert result.worse is worse
    assert 0.0 <= result.p_value <= 1.0
    assert result.p_value == pytest.approx(min(1.0, 1.0 / result.statistic))
    assert (result.p_value <= 0.05) or not result.worse


def test_margin_shifts_the_null() -> None:
    # 3% vs 1%: significantly worse, but not by more than 5 points.
    assert msprt_two_proportions(60, 2000, 20, 2000).worse
    assert not msprt_two_proportions(60, 2000, 20, 2000, margin=0.05).worse


def test_accuracy_lower_is_tested_by_swapping_the_arms() -> None:
    stable_correct, stable_n, candidate_correct, candidate_n = 1800, 2000, 1500, 2000
    assert msprt_two_proportions(stable_correct, stable_n, candidate_correct, candidate_n).worse
    assert not msprt_two_proportions(candidate_correct, candidate_n, stable_correct, stable_n).worse


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b"),
    [(0, 0, 0, 0), (0, 0, 5, 100), (5, 100, 0, 0), (0, 100, 0, 100), (100, 100, 100, 100), (-3, 10, 20, 10)],
    ids=["both-empty", "a-empty", "b-empty", "all-zero", "all-one", "nonsense-counts"],
)
def test_degenerate_counts_are_not_significant(a: int, n_a: int, b: int, n_b: int) -> None:
    result = msprt_two_proportions(a, n_a, b, n_b)
    assert not result.worse
    assert math.isfinite(result.statistic) and 0 <= result.p_value <= 1


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="alpha"):
        msprt_two_proportions(1, 10, 1, 10, alpha=1.5)
    with pytest.raises(ValueError, match="tau"):
        log_mixture_ratio(1, 10, 1, 10, tau=0)


def test_vectorised_ratio_matches_the_scalar_test() -> None:
    xa, xb = np.array([10, 50, 0]), np.array([10, 20, 0])
    log_ratio, _ = log_mixture_ratio(xa, 1000, xb, 1000)
    for i in range(3):
        scalar = msprt_two_proportions(int(xa[i]), 1000, int(xb[i]), 1000)
        assert math.exp(float(log_ratio[i])) == pytest.approx(scalar.statistic)


# --- McNemar -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "n", "margin", "sequential", "non_inferior"),
    [
        (10, 12, 5000, 0.02, True, True),  # as good, many pairs
        (10, 12, 500, 0.02, True, False),  # as good, but too few pairs to be sure at every look
        (10, 12, 500, 0.02, False, True),  # one look: the fixed-sample bound suffices
        (200, 50, 5000, 0.02, True, False),  # three points worse
        (0, 0, 0, 0.02, True, False),  # no data
    ],
    ids=["equal-many", "equal-few-sequential", "equal-few-one-look", "worse", "no-data"],
)
def test_mcnemar_noninferiority(
    b: int, c: int, n: int, margin: float, sequential: bool, non_inferior: bool
) -> None:
    result = mcnemar_noninferiority(b, c, n, margin=margin, alpha=0.05, sequential=sequential)
    assert result.non_inferior is non_inferior
    if n:
        assert result.difference == pytest.approx((c - b) / n)
        assert result.lower_bound < result.difference


def test_mcnemar_exact_p_value() -> None:
    result = mcnemar_noninferiority(2, 12, 100, margin=0.0)
    # Two-sided exact binomial: P(X <= 2 or X >= 12), X ~ Binomial(14, 1/2) = 2 * 106 / 16384.
    assert result.p_value == pytest.approx(2 * (1 + 14 + 91) / 2**14)
    assert result.statistic == pytest.approx((10 - 1) ** 2 / 14)


def test_sequential_bound_is_wider_than_one_look() -> None:
    one = mcnemar_noninferiority(30, 40, 2000, margin=0.01, sequential=False)
    always = mcnemar_noninferiority(30, 40, 2000, margin=0.01, sequential=True)
    assert always.lower_bound < one.lower_bound < one.difference


def test_sequential_mcnemar_bound_holds_at_every_look_for_equal_models() -> None:
    rng = np.random.default_rng(11)
    misses = 0
    trials, looks, per_look = 200, 40, 50
    for _ in range(trials):
        # Equal models: each discordant pair goes either way with probability 1/2.
        outcome = rng.choice([-1, 0, 0, 0, 0, 0, 0, 0, 0, 1], size=looks * per_look)
        b = np.cumsum(outcome == -1)[per_look - 1 :: per_look]
        c = np.cumsum(outcome == 1)[per_look - 1 :: per_look]
        n = per_look * np.arange(1, looks + 1)
        if any(
            mcnemar_noninferiority(int(b[i]), int(c[i]), int(n[i]), margin=0.0).lower_bound > 0
            for i in range(looks)
        ):
            misses += 1
    assert misses / trials <= 0.05


@pytest.mark.parametrize(
    ("b", "c", "n"), [(-1, 0, 10), (6, 6, 10)], ids=["negative", "more-discordant-than-pairs"]
)
def test_mcnemar_rejects_impossible_counts(b: int, c: int, n: int) -> None:
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        mcnemar_noninferiority(b, c, n, margin=0.01)
