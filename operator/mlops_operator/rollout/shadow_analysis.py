"""Shadow analysis: the candidate judged on a mirrored copy of stable's traffic, row by row.

In a Shadow rollout stable answers every request and its server copies each one to the
candidate (``serving/shadow_mirror.py``), keeps both predictions per request id, and, when a
label arrives on ``/feedback``, counts the pair: both right, both wrong, stable alone right
(``b``) or the candidate alone right (``c``). Those counters (``counters.shadow`` of the
stable server's ``/monitoring``) are what this module judges, over the window since the
mirror began.

The comparison is McNemar's: on the same labelled rows the concordant pairs cancel, and the
accuracy difference is ``(c - b) / n``. :func:`paired_check` decides with the always-valid
confidence sequence of :func:`~mlops_operator.rollout.significance.mcnemar_noninferiority`,
so it may look at every analysis interval without inflating its error rates:

- fewer than ``min_samples`` labelled pairs: ``NoData`` (the rollout waits);
- the lower bound above ``-margin`` (non-inferior): ``Pass``, the candidate is promoted;
- the upper bound below ``-margin`` (worse by more than the margin): ``Fail``, it is rejected;
- otherwise the interval still straddles ``-margin``: ``NoData`` with the numbers, and the
  next interval's larger sample narrows it.

Since the sequence is two-sided at ``alpha``, a candidate exactly as good as stable is
rejected with probability at most ``alpha`` however long the rollout runs, and one worse by
more than the margin is promoted with probability at most ``alpha``.
"""

from __future__ import annotations

from typing import Any

from mlops_operator.rollout.canary_analysis import CheckResult, ShadowCounters, decimal_text
from mlops_operator.rollout.significance import McNemarResult, mcnemar_noninferiority

METRIC = "paired-accuracy"


def paired_check(
    counters: ShadowCounters | None, *, margin: float, alpha: float, min_samples: int
) -> tuple[CheckResult, McNemarResult | None]:
    """The verdict on the labelled pairs in ``counters`` (a window), and the test behind it."""
    bound = f"margin {decimal_text(margin)}"
    if counters is None or counters.pairs == 0:
        message = "no labelled pair yet: labels for mirrored requests arrive on /feedback"
        return CheckResult(METRIC, None, bound, 0, "NoData", message), None
    b, c, n = counters.stable_only, counters.candidate_only, counters.pairs
    result = mcnemar_noninferiority(b, c, n, margin=margin, alpha=alpha, sequential=True)
    numbers = (
        f"candidate - stable accuracy {result.difference:+.4f} on {n} labelled pairs "
        f"(stable alone right {b}, candidate alone right {c}; {1 - alpha:.0%} bounds "
        f"[{result.lower_bound:+.4f}, {result.upper_bound:+.4f}], McNemar p {result.p_value:.3g})"
    )
    if n < min_samples:
        message = f"{n} of {min_samples} labelled pairs: {numbers}"
        return CheckResult(METRIC, result.difference, bound, n, "NoData", message), result
    if result.non_inferior:
        message = f"not worse than stable by more than {decimal_text(margin)}: {numbers}"
        return CheckResult(METRIC, result.difference, bound, n, "Pass", message), result
    if result.inferior:
        message = f"worse than stable by more than {decimal_text(margin)}: {numbers}"
        return CheckResult(METRIC, result.difference, bound, n, "Fail", message), result
    message = f"inconclusive, the bounds straddle -{decimal_text(margin)}: {numbers}"
    return CheckResult(METRIC, result.difference, bound, n, "NoData", message), result


def shadow_status(counters: ShadowCounters | None, result: McNemarResult | None) -> dict[str, Any]:
    """``status.rollout.shadow``: the mirror's counts and the paired comparison, camelCase."""
    if counters is None:
        return {}
    status: dict[str, Any] = {
        "mirrored": counters.mirrored,
        "dropped": counters.dropped,
        "failed": counters.failed,
        "compared": counters.compared,
        "pairs": counters.pairs,
        "stableOnlyCorrect": counters.stable_only,
        "candidateOnlyCorrect": counters.candidate_only,
    }
    if counters.agreement is not None:
        status["agreement"] = decimal_text(counters.agreement)
    if result is not None and result.n:
        status.update(
            difference=decimal_text(result.difference),
            lowerBound=decimal_text(result.lower_bound),
            upperBound=decimal_text(result.upper_bound),
            pValue=decimal_text(result.p_value),
        )
    return status
