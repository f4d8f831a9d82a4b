"""Significance tests for canary analysis: sequential (looked at every interval) and paired.

Pure statistics on counts: no clock, no I/O. Two tests:

- :func:`msprt_two_proportions`, the **mixture sequential probability ratio test** (mSPRT)
  for a difference of two proportions with a normal mixture, as in Johari, Pekelis, Koomen
  and Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations
  Research, 2022; the test behind Optimizely's Stats Engine). It compares the candidate's
  error rate (or accuracy) with the stable version's on the same traffic window, and it may
  be evaluated after every analysis interval.
- :func:`mcnemar_noninferiority`, for a *shadow* comparison where both versions answered the
  very same requests (paired data): McNemar's exact test for "no difference", and the
  non-inferiority decision "the candidate's accuracy is not worse than stable's by more than
  ``margin``" from a lower confidence bound on the paired difference (Dietterich 1998 on
  McNemar for comparing classifiers).

The mixture likelihood ratio
-----------------------------

Let ``theta`` be ``rate_a - rate_b``, ``theta_hat`` its estimate and ``v`` the estimated
variance of ``theta_hat`` (``p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b``). Under the normal
approximation ``theta_hat ~ N(theta, v)``, the likelihood ratio of ``theta`` against the null
``theta0``, mixed over ``theta ~ N(theta0, tau^2)``, is::

    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 (theta_hat - theta0)^2 / (2 v (v + tau^2)))

(for equal arm sizes ``n`` and ``V = sigma_a^2 + sigma_b^2`` this is Johari et al.'s
``sqrt(V / (V + n tau^2)) exp(n^2 tau^2 (Ybar - Xbar - theta0)^2 / (2 V (V + n tau^2)))``).
The test rejects when ``Lambda >= 1 / alpha``; the always-valid p-value is
``min(1, 1 / Lambda)`` (take its running minimum over the looks if you report one).

``tau`` is the scale of differences the test is tuned to find fastest (:data:`DEFAULT_TAU`,
five percentage points); any ``tau > 0`` keeps the error guarantee, it only moves power
between small and large effects.

One-sided use: the canary only fails when the candidate is *worse*, so ``worse`` is
``Lambda >= 1/alpha and theta_hat > theta0``. The rejections of this one-sided rule are a
subset of the two-sided test's, so its false-rejection probability under ``theta = theta0``
is at most ``alpha`` (in fact about ``alpha / 2``), and lower still for any ``theta <
theta0``. To test "a is lower than b" (accuracy), swap the arms: ``a = stable``, ``b =
candidate``.

Variance: ``p`` is smoothed to ``(x + 1) / (n + 2)`` (Agresti-Caffo) in the variance only,
so all-success or all-failure arms (no errors yet: the common case for error rates) do not
give a zero variance and a spuriously infinite statistic. Empty arms give ``Lambda = 1`` (no
evidence): never significant, never an exception.

Why the tests stay valid under repeated looks
---------------------------------------------

A fixed-sample test (a z-test, chi-square, the exact McNemar p-value) controls its error
rate for *one* look at a sample size fixed in advance. Checked after every interval and
stopped at the first "significant" answer, its false-positive rate grows with the number of
looks: a nominal 5% one-sided z-test re-checked at 50 looks rolls back 13-20% of equal
candidates in :func:`simulate_false_rollbacks`, against about 0.1-1% for the mSPRT.

The mixture ratio is different: under the null, ``Lambda_n`` is a nonnegative martingale
with mean 1 (a likelihood ratio integrated over a prior on the alternative, evaluated on the
data seen so far). Ville's inequality bounds the chance that such a martingale *ever*
crosses ``1/alpha``, over all sample sizes at once: ``P(sup_n Lambda_n >= 1/alpha) <=
alpha``. So the operator may look at every interval, with any number of new samples per
look, for as long as the rollout lasts, and stop at the first crossing: the probability of
rolling back an equal candidate stays at most ``alpha``. The guarantee is exact for
Gaussian increments with known variance and asymptotic (CLT, plug-in variance) for
proportions; the gate only starts after ``minSamples`` labels, where the approximation is
good, and the seeded simulation in the tests checks the rate at 50 looks.

For the paired test, the *sequential* bound (the default) is the same construction applied
to the per-request differences ``D_i = [candidate right] - [stable right]`` (in {-1, 0, 1}):
the set of ``theta0`` with ``Lambda(theta0) < 1/alpha`` is a confidence sequence (Robbins'
normal mixture), so its lower end is a lower bound valid at every look simultaneously, and
"non-inferior" (lower bound > ``-margin``) may be re-checked at every interval. The exact
McNemar p-value that comes with it is a fixed-sample quantity: report it, decide on the
bound. With ``sequential=False`` the bound is the one-sided Wald bound
``d_hat - z_{1-alpha} se``: valid for a single look only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Default significance level of the rollout's statistical gates.
DEFAULT_ALPHA = 0.05
#: Default mixing spread: the tests are most sensitive to differences of about this size.
DEFAULT_TAU = 0.05

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SequentialResult:
    """One look of the mSPRT. ``worse``: a's rate exceeds b's by more than ``margin``, significantly."""

    statistic: float  # the mixture likelihood ratio Lambda (1.0: no evidence)
    p_value: float  # always-valid p-value of this look, min(1, 1 / Lambda)
    worse: bool
    estimate: float | None  # rate_a - rate_b; None when an arm is empty
    rate_a: float | None
    rate_b: float | None
    n_a: int
    n_b: int


def _smoothed_variance(successes: FloatArray, n: FloatArray) -> FloatArray:
    p = (successes + 1.0) / (n + 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, p * (1.0 - p) / np.maximum(n, 1.0), np.inf)


def log_mixture_ratio(
    successes_a: npt.ArrayLike,
    n_a: npt.ArrayLike,
    successes_b: npt.ArrayLike,
    n_b: npt.ArrayLike,
    *,
    tau: float = DEFAULT_TAU,
    margin: float = 0.0,
) -> tuple[FloatArray, FloatArray]:
    """``(log Lambda, theta_hat)`` elementwise (vectorised; an empty arm gives log Lambda = 0)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    xa, na = np.asarray(successes_a, dtype=np.float64), np.asarray(n_a, dtype=np.float64)
    xb, nb = np.asarray(successes_b, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    empty = (na <= 0) | (nb <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta_hat = np.where(empty, 0.0, xa / np.maximum(na, 1.0) - xb / np.maximum(nb, 1.0))
        v = _smoothed_variance(xa, na) + _smoothed_variance(xb, nb)
        v = np.where(empty, 1.0, v)
        t2 = tau * tau
        log_ratio = 0.5 * np.log(v / (v + t2)) + t2 * (theta_hat - margin) ** 2 / (2.0 * v * (v + t2))
    return np.where(empty, 0.0, log_ratio), theta_hat


def msprt_two_proportions(
    successes_a: int,
    n_a: int,
    successes_b: int,
    n_b: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    margin: float = 0.0,
) -> SequentialResult:
    """Is a's proportion higher than b's by more than ``margin``, with always-valid significance?

    ``successes`` are the events counted (errors for an error rate; wrong or right answers
    for accuracy), ``n`` the trials. ``margin`` shifts the null to ``rate_a - rate_b <=
    margin`` (``maxIncreaseVsStable``, ``maxDropVsStable``). Candidate error rate higher than
    stable: ``a = candidate``, ``b = stable``. Candidate accuracy lower than stable:
    ``a = stable`` (correct, labelled), ``b = candidate``. Counts are clipped into
    ``0 <= successes <= n``; an empty arm is "no evidence", never an error.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    na, nb = max(0, int(n_a)), max(0, int(n_b))
    xa, xb = min(max(0, int(successes_a)), na), min(max(0, int(successes_b)), nb)
    if na == 0 or nb == 0:
        return SequentialResult(
            1.0, 1.0, False, None, xa / na if na else None, xb / nb if nb else None, na, nb
        )
    log_ratio, theta = log_mixture_ratio(xa, na, xb, nb, tau=tau, margin=margin)
    log_value, estimate = float(log_ratio), float(theta)
    statistic = math.exp(min(log_value, 700.0))
    p_value = min(1.0, math.exp(-log_value)) if log_value > -700 else 1.0
    worse = log_value >= math.log(1.0 / alpha) and estimate > margin
    return SequentialResult(statistic, p_value, worse, estimate, xa / na, xb / nb, na, nb)


# --- paired comparison (shadow traffic) -----------------------------------------------------------


@dataclass(frozen=True)
class McNemarResult:
    """A paired comparison of two classifiers on the same labelled requests."""

    b: int  # stable right, candidate wrong
    c: int  # candidate right, stable wrong
    n: int  # labelled requests both answered
    difference: float  # candidate accuracy - stable accuracy = (c - b) / n
    lower_bound: float  # lower confidence bound on the difference (-1.0 without data)
    p_value: float  # exact two-sided McNemar p-value for "no difference" (fixed-sample)
    statistic: float  # McNemar's chi-square with continuity correction, (|b - c| - 1)^2 / (b + c)
    non_inferior: bool  # lower_bound > -margin
    sequential: bool  # the bound is always-valid (a confidence sequence) rather than one-look
    upper_bound: float = 1.0  # upper confidence bound on the difference (1.0 without data)
    inferior: bool = False  # upper_bound < -margin: worse than stable by more than the margin


def mcnemar_noninferiority(
    b: int,
    c: int,
    n: int,
    *,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = True,
    tau: float = DEFAULT_TAU,
) -> McNemarResult:
    """McNemar's test, and whether the candidate is non-inferior to stable by ``margin``.

    Formulas, with ``d_hat = (c - b) / n`` the difference in accuracy (candidate minus
    stable, the concordant pairs cancel) and the per-pair differences ``D_i`` in {-1, 0, 1}:

    - ``Var(d_hat) = ((b + c) / n - d_hat^2) / n``, computed with ``b + 0.5``, ``c + 0.5``,
      ``n + 1`` so that no discordant pair yet does not mean zero uncertainty;
    - exact McNemar: ``p = P(|X - m/2| >= |c - m/2|)`` for ``X ~ Binomial(m = b + c, 1/2)``;
    - non-inferiority (H0: ``d <= -margin``) is decided when the lower bound ``L`` exceeds
      ``-margin``, inferiority when the upper bound ``U`` is below ``-margin``, where
      ``L = d_hat - h``, ``U = d_hat + h`` and, sequentially (default),
      ``h = sqrt(2 v (v + tau^2) / tau^2 * (ln(1/alpha) + ln((v + tau^2) / v) / 2))`` (the
      inversion of the normal-mixture ratio: a two-sided confidence sequence, so ``L`` and
      ``U`` hold together with probability ``1 - alpha`` at every look), or, for one look,
      ``h = z_{1-alpha} sqrt(v)``.

    Raises ValueError for impossible counts (negative, or ``b + c > n``). ``n = 0`` is no
    data: not non-inferior, p-value 1.
    """
    if b < 0 or c < 0 or n < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n; got b={b}, c={c}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy import stats  # here, not at import: scipy.stats is ~70 MB an idle operator never needs

    discordant = b + c
    # Binomial(m, 1/2) is symmetric: the two-sided exact p-value is twice the smaller tail.
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), discordant, 0.5))) if discordant else 1.0
    statistic = (abs(b - c) - 1) ** 2 / discordant if discordant else 0.0
    if n == 0:
        return McNemarResult(b, c, n, 0.0, -1.0, p_value, statistic, False, sequential)
    difference = (c - b) / n
    bs, cs, ns = b + 0.5, c + 0.5, n + 1.0
    v = max(((bs + cs) / ns - ((cs - bs) / ns) ** 2) / ns, 1e-12)
    if sequential:
        t2 = tau * tau
        half = math.sqrt(2.0 * v * (v + t2) / t2 * (math.log(1.0 / alpha) + 0.5 * math.log((v + t2) / v)))
    else:
        half = float(stats.norm.ppf(1.0 - alpha)) * math.sqrt(v)
    lower, upper = max(-1.0, difference - half), min(1.0, difference + half)
    return McNemarResult(
        b, c, n, difference, lower, p_value, statistic, lower > -margin, sequential, upper, upper < -margin
    )


# --- simulation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FalseRollbackReport:
    """How often the accuracy gate rolled back a candidate exactly as good as stable."""

    rollouts: int
    looks: int
    alpha: float
    accuracy: float
    msprt_rate: float  # the gate as the operator runs it (mSPRT at every look)
    naive_rate: float  # a fixed-sample one-sided z-test at level alpha, checked at every look
    msprt_rollbacks: int
    naive_rollbacks: int


def simulate_false_rollbacks(
    *,
    rollouts: int = 2000,
    looks: int = 50,
    labels_per_look: int = 40,
    candidate_share: float = 0.25,
    accuracy: float = 0.9,
    min_samples: int = 200,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    max_drop: float = 0.0,
    candidate_accuracy: float | None = None,
    seed: int = 0,
) -> FalseRollbackReport:
    """Simulate rollouts and count those the accuracy gate would roll back (seeded, vectorised).

    Each rollout sees ``looks`` analysis intervals; per interval ``labels_per_look`` labelled
    predictions arrive, ``candidate_share`` of them for the candidate. Stable is right with
    probability ``accuracy``, the candidate with ``candidate_accuracy`` (default: the same,
    so every rollback counted is a false one). From the look where the candidate has
    ``min_samples`` labels on, the gate tests "stable's accuracy exceeds the candidate's by
    more than ``max_drop``", exactly as :func:`msprt_two_proportions` does; a rollout counts
    once however many looks reject. The naive rate, of a one-sided z-test at level ``alpha``
    re-checked at the same looks, shows what the sequential test protects against.
    """
    if rollouts < 1 or looks < 1 or labels_per_look < 1 or not 0 < candidate_share < 1:
        raise ValueError("need rollouts, looks, labels_per_look >= 1 and 0 < candidate_share < 1")
    from scipy import stats

    rng = np.random.default_rng(seed)
    per_candidate = max(1, round(labels_per_look * candidate_share))
    per_stable = max(1, labels_per_look - per_candidate)
    cand_p = accuracy if candidate_accuracy is None else candidate_accuracy
    n_c = per_candidate * np.arange(1, looks + 1, dtype=np.float64)
    n_s = per_stable * np.arange(1, looks + 1, dtype=np.float64)
    x_c = np.cumsum(rng.binomial(per_candidate, cand_p, size=(rollouts, looks)), axis=1).astype(np.float64)
    x_s = np.cumsum(rng.binomial(per_stable, accuracy, size=(rollouts, looks)), axis=1).astype(np.float64)
    active = n_c >= min_samples  # the gate is NoData before min_samples labels
    log_ratio, theta = log_mixture_ratio(x_s, n_s, x_c, n_c, tau=tau, margin=max_drop)
    msprt = (log_ratio >= math.log(1.0 / alpha)) & (theta > max_drop) & active
    # The fixed-sample test, unpooled variance, same smoothing.
    v = _smoothed_variance(x_s, n_s) + _smoothed_variance(x_c, n_c)
    z = (theta - max_drop) / np.sqrt(v)
    naive = (z >= float(stats.norm.ppf(1.0 - alpha))) & active
    msprt_count, naive_count = int(msprt.any(axis=1).sum()), int(naive.any(axis=1).sum())
    return FalseRollbackReport(
        rollouts=rollouts,
        looks=looks,
        alpha=alpha,
        accuracy=accuracy,
        msprt_rate=msprt_count / rollouts,
        naive_rate=naive_count / rollouts,
        msprt_rollbacks=msprt_count,
        naive_rollbacks=naive_count,
    )
