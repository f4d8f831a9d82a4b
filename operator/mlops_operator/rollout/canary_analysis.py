"""Canary analysis: per-version counters from the model servers, windows of them, and the checks.

Every model server process keeps cumulative counters since it started (the ``counters``
block of its ``/monitoring`` snapshot, see ``monitoring/online.py``): prediction requests,
5xx errors, a cumulative latency histogram, predictions per class, labelled predictions and
correct ones, under a random ``instance`` id drawn at start. A *window* is the difference
between two readings of the same instances, so the operator needs no clock in the servers
and no Prometheus: it stores the readings taken when a window began (in ``status.rollout``,
as :meth:`VersionCounters.to_dict`) and subtracts. A restarted process has a new instance
id, and a counter that went down means the same (a reset): its current value is the window.

:func:`analyse` turns the candidate's and stable's windows into :class:`CheckResult` s. No data
is a verdict of its own (``NoData``), never a pass. Fast signals (error rate, latency, drift
share, disagreement) gate each step; the slow one (accuracy) waits for labels and is tested
for a drop against stable with the always-valid sequential test of ``significance.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlops_operator.api.inferenceservice import AnalysisMetric
from mlops_operator.rollout.significance import DEFAULT_ALPHA, DEFAULT_TAU, msprt_two_proportions

Verdict = Literal["Pass", "Fail", "NoData"]
Buckets = tuple[tuple[float, int], ...]

#: Metrics that gate every step: they have data within one interval.
FAST_METRICS = frozenset({"error-rate", "latency-p99", "drift-share", "disagreement"})
#: Metrics that wait for labels (which arrive late): they decide once minSamples have arrived.
SLOW_METRICS = frozenset({"accuracy"})
#: The checks when ``analysis.metrics`` is not set: no worse than stable, with significance.
DEFAULT_METRICS = (
    AnalysisMetric(name="error-rate", max_increase_vs_stable="0.01"),
    AnalysisMetric(name="accuracy", max_drop_vs_stable="0.02"),
)


def is_fast(metric: str) -> bool:
    """Whether a metric gates each step (True) or is the accuracy gate (False)."""
    return metric in FAST_METRICS


def _le_text(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def _le_value(raw: object) -> float:
    if isinstance(raw, str) and raw.strip().lower() in ("+inf", "inf"):
        return math.inf
    return float(raw)  # type: ignore[arg-type]  # a number or numeric string; ValueError otherwise


def _cumulative_at(buckets: Buckets, le: float) -> int:
    """The cumulative count of a histogram at ``le``: its largest own bound <= le (0 below all)."""
    count = 0
    for bound, cumulative in buckets:
        if bound > le:
            break
        count = cumulative
    return count


def _merge(a: Buckets, b: Buckets, sign: int = 1) -> Buckets:
    if not a:
        return b if sign > 0 else tuple((le, 0) for le, _ in b)
    if not b:
        return a
    if [le for le, _ in a] == [le for le, _ in b]:
        return tuple((le, ca + sign * cb) for (le, ca), (_, cb) in zip(a, b, strict=True))
    bounds = sorted({le for le, _ in a} | {le for le, _ in b}) if sign > 0 else [le for le, _ in a]
    return tuple((le, _cumulative_at(a, le) + sign * _cumulative_at(b, le)) for le in bounds)


_SHADOW_FIELDS = (
    ("mirrored", "mirrored"),
    ("dropped", "dropped"),
    ("failed", "failed"),
    ("compared", "compared"),
    ("agreed", "agreed"),
    ("pairs", "pairs"),
    ("stable_only", "stableOnly"),
    ("candidate_only", "candidateOnly"),
)


@dataclass(frozen=True)
class ShadowCounters:
    """A stable process's mirror to a Shadow candidate (``counters.shadow`` of its snapshot).

    ``mirrored``, ``dropped`` and ``failed`` count requests; the rest count rows: ``compared``
    rows both versions predicted, ``agreed`` those predicted alike, ``pairs`` compared rows
    that got a label, of which ``stable_only`` stable alone got right and ``candidate_only``
    the candidate alone (McNemar's discordant pairs b and c).
    """

    version: str
    mirrored: int = 0
    dropped: int = 0
    failed: int = 0
    compared: int = 0
    agreed: int = 0
    pairs: int = 0
    stable_only: int = 0
    candidate_only: int = 0

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ShadowCounters:
        """From the server's snapshot or the stored status (both camelCase)."""
        values = {name: int(data.get(key) or 0) for name, key in _SHADOW_FIELDS}
        return cls(version=str(data.get("version") or ""), **values)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **{key: getattr(self, name) for name, key in _SHADOW_FIELDS}}

    def combine(self, other: ShadowCounters, sign: int = 1) -> ShadowCounters:
        values = {name: getattr(self, name) + sign * getattr(other, name) for name, _ in _SHADOW_FIELDS}
        return ShadowCounters(version=self.version or other.version, **values)

    def below(self, baseline: ShadowCounters) -> bool:
        return any(getattr(self, name) < getattr(baseline, name) for name, _ in _SHADOW_FIELDS)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def _shadow_sum(a: ShadowCounters | None, b: ShadowCounters | None, sign: int = 1) -> ShadowCounters | None:
    if b is None:
        return a
    if a is None:
        return b if sign > 0 else None
    if a.version != b.version:
        return a  # a mirror to another candidate: not the same counters
    return a.combine(b, sign)


@dataclass(frozen=True)
class VersionCounters:
    """Cumulative counters of one version (one process, or summed over processes, or a window).

    ``latency`` is a Prometheus-style cumulative histogram: ``(le_seconds, count)`` pairs in
    ascending order, the last one ``(inf, requests observed)``.
    """

    requests: int = 0
    errors: int = 0
    latency: Buckets = ()
    predictions: Mapping[str, int] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0
    shadow: ShadowCounters | None = None

    # --- wire forms -----------------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> VersionCounters:
        """From a server's ``/monitoring`` JSON (or just its ``counters`` block).

        A snapshot without counters (an older server) reads as zero counters.
        """
        block = snapshot.get("counters", snapshot)
        if not isinstance(block, Mapping):
            return cls()
        latency = tuple(sorted((_le_value(le), int(count)) for le, count in block.get("latency") or []))
        return cls(
            requests=int(block.get("requests") or 0),
            errors=int(block.get("errors") or 0),
            latency=latency,
            predictions={str(k): int(v) for k, v in (block.get("predictions") or {}).items()},
            labelled=int(block.get("labelled") or 0),
            correct=int(block.get("correct") or 0),
            shadow=ShadowCounters.from_wire(block["shadow"]) if block.get("shadow") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in ``status.rollout`` (``Counters`` in the API)."""
        result: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "labelled": self.labelled,
            "correct": self.correct,
        }
        if self.latency:
            result["latency"] = [{"le": _le_text(le), "count": count} for le, count in self.latency]
        if self.predictions:
            result["predictions"] = dict(sorted(self.predictions.items()))
        if self.shadow is not None:
            result["shadow"] = self.shadow.to_dict()
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionCounters:
        """Inverse of :meth:`to_dict`."""
        latency = tuple(sorted((_le_value(b["le"]), int(b["count"])) for b in data.get("latency") or []))
        return cls(
            requests=int(data.get("requests") or 0),
            errors=int(data.get("errors") or 0),
            latency=latency,
            predictions={str(k): int(v) for k, v in (data.get("predictions") or {}).items()},
            labelled=int(data.get("labelled") or 0),
            correct=int(data.get("correct") or 0),
            shadow=ShadowCounters.from_wire(data["shadow"]) if data.get("shadow") else None,
        )

    # --- arithmetic -----------------------------------------------------------------------

    def __add__(self, other: VersionCounters) -> VersionCounters:
        predictions = dict(self.predictions)
        for label, count in other.predictions.items():
            predictions[label] = predictions.get(label, 0) + count
        return VersionCounters(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency=_merge(self.latency, other.latency),
            predictions=predictions,
            labelled=self.labelled + other.labelled,
            correct=self.correct + other.correct,
            shadow=_shadow_sum(self.shadow, other.shadow),
        )

    def _is_reset_from(self, baseline: VersionCounters) -> bool:
        scalars = (
            (self.requests, baseline.requests),
            (self.errors, baseline.errors),
            (self.labelled, baseline.labelled),
            (self.correct, baseline.correct),
        )
        if any(now < then for now, then in scalars):
            return True
        if baseline.shadow is not None and (
            self.shadow is None
            or (self.shadow.version == baseline.shadow.version and self.shadow.below(baseline.shadow))
        ):
            return True
        if any(self.predictions.get(label, 0) < count for label, count in baseline.predictions.items()):
            return True
        return any(_cumulative_at(self.latency, le) < count for le, count in baseline.latency)

    def since(self, baseline: VersionCounters) -> VersionCounters:
        """The counts added after ``baseline`` was read from the same process.

        A counter below its baseline means the process restarted (counters start at zero):
        then everything current is new, as Prometheus' ``increase()`` treats a reset.
        """
        if self._is_reset_from(baseline):
            return self
        return VersionCounters(
            requests=self.requests - baseline.requests,
            errors=self.errors - baseline.errors,
            latency=_merge(self.latency, baseline.latency, sign=-1),
            predictions={
                label: count - baseline.predictions.get(label, 0) for label, count in self.predictions.items()
            },
            labelled=self.labelled - baseline.labelled,
            correct=self.correct - baseline.correct,
            shadow=_shadow_sum(self.shadow, baseline.shadow, sign=-1),
        )

    # --- derived values -------------------------------------------------------------------

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled > 0 else None

    @property
    def predicted(self) -> int:
        """Predictions (rows) made."""
        return sum(self.predictions.values())

    def class_distribution(self) -> dict[str, float]:
        """Share of each predicted class (empty without predictions)."""
        total = self.predicted
        return {label: count / total for label, count in self.predictions.items()} if total else {}

    def latency_quantile(self, q: float) -> float | None:
        """The ``q``-quantile of latency, as Prometheus' ``histogram_quantile`` computes it.

        Linear interpolation inside the bucket that holds rank ``q * total``; the first
        bucket starts at 0; a rank in the ``+Inf`` bucket gives the largest finite bound.
        None without observations.
        """
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        buckets = self.latency
        if not buckets or buckets[-1][1] <= 0:
            return None
        total = buckets[-1][1]
        rank = q * total
        lower, below = 0.0, 0
        for le, cumulative in buckets:
            if cumulative >= rank and cumulative > below:
                if math.isinf(le):
                    return lower
                return lower + (le - lower) * (rank - below) / (cumulative - below)
            lower, below = (le if not math.isinf(le) else lower), cumulative
        return lower


ZERO = VersionCounters()


def window(
    current: Iterable[tuple[str, VersionCounters]], baseline: Iterable[tuple[str, VersionCounters]]
) -> VersionCounters:
    """The counts of one version since ``baseline``, summed over its server processes.

    Each instance's current reading minus its own baseline reading (zero for an instance
    that started since: a new pod, or a restarted one under a new id). Instances that
    disappeared contribute nothing: their counts since the baseline are lost with them.
    """
    base = dict(baseline)
    total = ZERO
    for instance, counters in current:
        total = total + counters.since(base.get(instance, ZERO))
    return total


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Total-variation distance between two distributions: half the L1 distance (0..1)."""
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def disagreement(candidate: VersionCounters, stable: VersionCounters) -> float | None:
    """How differently the two versions predict: TV distance of their predicted-class shares."""
    if candidate.predicted == 0 or stable.predicted == 0:
        return None
    return total_variation(candidate.class_distribution(), stable.class_distribution())


# --- checks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    metric: str
    value: float | None
    bound: str  # "max 0.01", "maxIncreaseVsStable 0.005", ...
    samples: int
    verdict: Verdict
    message: str

    @property
    def fast(self) -> bool:
        return is_fast(self.metric)

    def to_dict(self) -> dict[str, Any]:
        """The ``status.rollout.lastAnalysis[]`` item (value as a decimal string)."""
        result: dict[str, Any] = {
            "metric": self.metric,
            "bound": self.bound,
            "samples": self.samples,
            "verdict": self.verdict,
            "message": self.message[:1024],
        }
        if self.value is not None and math.isfinite(self.value):
            result["value"] = decimal_text(self.value)
        return result


def decimal_text(value: float) -> str:
    """A float as the API's decimal string: fixed point, no exponent ("0.0123", "-0.5", "3")."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _absolute(
    metric: str, value: float | None, kind: str, bound: float, raw: str, samples: int, unit: str, missing: str
) -> CheckResult:
    text = f"{kind} {raw}"
    if value is None:
        return CheckResult(metric, None, text, samples, "NoData", f"{metric}: no data ({missing})")
    failed = value > bound if kind == "max" else value < bound
    relation = (">" if failed else "<=") if kind == "max" else ("<" if failed else ">=")
    return CheckResult(
        metric,
        value,
        text,
        samples,
        "Fail" if failed else "Pass",
        f"{metric} {_fmt(value)} {relation} {kind} {raw} over {samples} {unit}",
    )


def analyse(
    metrics_spec: Sequence[AnalysisMetric] | None,
    candidate: VersionCounters,
    stable: VersionCounters,
    candidate_drift_share: float | None,
    *,
    min_requests: int,
    min_samples: int,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
) -> list[CheckResult]:
    """One :class:`CheckResult` per bound of each metric (``None``: :data:`DEFAULT_METRICS`).

    ``candidate`` and ``stable`` are windows over the same period. Absolute bounds (min,
    max) compare the candidate's value. Relative bounds compare with stable:
    ``error-rate maxIncreaseVsStable`` and ``accuracy maxDropVsStable`` fail only when the
    candidate is worse by more than the bound *with significance* (mSPRT at ``alpha``,
    valid however often it is checked); ``latency-p99 maxIncreaseVsStable`` compares the two
    histogram quantiles (seconds). NoData: fewer than ``min_requests`` prediction requests
    (error rate, latency, disagreement: in the candidate's window, and stable's for a
    relative bound), fewer than ``min_samples`` labelled predictions (accuracy), no drift
    share from the candidate's servers.
    """
    results: list[CheckResult] = []
    min_requests = max(1, min_requests)
    min_samples = max(1, min_samples)
    for spec in DEFAULT_METRICS if metrics_spec is None else metrics_spec:
        bounds = [
            (kind, raw)
            for kind, raw in (
                ("min", spec.min),
                ("max", spec.max),
                ("maxIncreaseVsStable", spec.max_increase_vs_stable),
                ("maxDropVsStable", spec.max_drop_vs_stable),
            )
            if raw is not None
        ]
        for kind, raw in bounds:
            results.append(
                _check(
                    spec.name,
                    kind,
                    raw,
                    candidate,
                    stable,
                    candidate_drift_share,
                    min_requests=min_requests,
                    min_samples=min_samples,
                    alpha=alpha,
                    tau=tau,
                )
            )
    return results


def _check(
    metric: str,
    kind: str,
    raw: str,
    candidate: VersionCounters,
    stable: VersionCounters,
    drift_share: float | None,
    *,
    min_requests: int,
    min_samples: int,
    alpha: float,
    tau: float,
) -> CheckResult:
    bound = float(raw)
    text = f"{kind} {raw}"
    relative = kind in ("maxIncreaseVsStable", "maxDropVsStable")
    if metric in ("error-rate", "latency-p99", "disagreement"):
        samples = candidate.requests if metric != "disagreement" else candidate.predicted
        stable_samples = stable.requests if metric != "disagreement" else stable.predicted
        unit = "requests" if metric != "disagreement" else "predictions"
        if samples < min_requests or (
            (relative or metric == "disagreement") and stable_samples < min_requests
        ):
            message = (
                f"{metric}: {samples} {unit} on the candidate and {stable_samples} on stable in the window; "
                f"need {min_requests} each"
                if relative or metric == "disagreement"
                else f"{metric}: {samples} {unit} on the candidate in the window; need {min_requests}"
            )
            return CheckResult(metric, None, text, samples, "NoData", message)
    if metric == "error-rate":
        if not relative:
            return _absolute(
                metric, candidate.error_rate, kind, bound, raw, candidate.requests, "requests", ""
            )
        test = msprt_two_proportions(
            candidate.errors,
            candidate.requests,
            stable.errors,
            stable.requests,
            alpha=alpha,
            tau=tau,
            margin=bound,
        )
        assert test.rate_a is not None and test.rate_b is not None
        increase = test.rate_a - test.rate_b
        verdict: Verdict = "Fail" if test.worse else "Pass"
        how = "more than" if test.worse else "not significantly more than"
        message = (
            f"error-rate {_fmt(test.rate_a)} vs stable {_fmt(test.rate_b)}: higher by {how} "
            f"{text} (always-valid p={test.p_value:.3g}, alpha {alpha}) over {candidate.requests} "
            f"candidate and {stable.requests} stable requests"
        )
        return CheckResult(metric, increase, text, candidate.requests, verdict, message)
    if metric == "latency-p99":
        value = candidate.latency_quantile(0.99)
        if not relative:
            return _absolute(
                metric, value, kind, bound, raw, candidate.requests, "requests", "no latency histogram"
            )
        reference = stable.latency_quantile(0.99)
        if value is None or reference is None:
            return CheckResult(
                metric, None, text, candidate.requests, "NoData", f"{metric}: no latency histogram"
            )
        increase = value - reference
        failed = increase > bound
        message = (
            f"latency-p99 {_fmt(value)}s vs stable {_fmt(reference)}s: +{_fmt(increase)}s "
            f"{'>' if failed else '<='} {text} over {candidate.requests} candidate and {stable.requests} stable requests"
        )
        return CheckResult(metric, increase, text, candidate.requests, "Fail" if failed else "Pass", message)
    if metric == "disagreement":
        return _absolute(
            metric, disagreement(candidate, stable), kind, bound, raw, candidate.predicted, "predictions", ""
        )
    if metric == "drift-share":
        return _absolute(
            metric,
            drift_share,
            kind,
            bound,
            raw,
            candidate.predicted,
            "predictions",
            "the candidate's servers report no drift share yet",
        )
    # accuracy
    if candidate.labelled < min_samples or (relative and stable.labelled < min_samples):
        message = f"accuracy: {candidate.labelled} labelled predictions on the candidate; need {min_samples}"
        if relative and candidate.labelled >= min_samples:
            message = f"accuracy: {stable.labelled} labelled predictions on stable; need {min_samples}"
        return CheckResult(metric, None, text, candidate.labelled, "NoData", message)
    if not relative:
        return _absolute(
            metric, candidate.accuracy, kind, bound, raw, candidate.labelled, "labelled predictions", ""
        )
    test = msprt_two_proportions(
        stable.correct,
        stable.labelled,
        candidate.correct,
        candidate.labelled,
        alpha=alpha,
        tau=tau,
        margin=bound,
    )
    assert test.rate_a is not None and test.rate_b is not None
    drop = test.rate_a - test.rate_b
    how = "more than" if test.worse else "not significantly more than"
    message = (
        f"accuracy {_fmt(test.rate_b)} vs stable {_fmt(test.rate_a)}: lower by {how} {text} "
        f"(always-valid p={test.p_value:.3g}, alpha {alpha}) over {candidate.labelled} candidate and "
        f"{stable.labelled} stable labelled predictions"
    )
    return CheckResult(metric, -drop, text, candidate.labelled, "Fail" if test.worse else "Pass", message)
