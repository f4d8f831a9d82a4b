"""Data drift: live feature distributions against the reference profile, over a sliding window.

Pure statistics on plain numpy data: no clocks, no locks, no globals. ``online.py`` owns the
locking and the schedule (rows are added on the request path, statistics are computed on
demand at scrape or snapshot time).

Binning and the sliding window
------------------------------
Every live value is turned into a *slot* of its feature when it arrives, and only slot
indices are kept:

- numeric feature with k bins (``FeatureProfile.bin_edges`` = k-1 interior edges): slot
  ``i = #{edges < x}``, which is ``numpy.searchsorted(edges, x, side="left")``, so bins are
  ``(-inf, e0], (e0, e1], ..., (e_{k-2}, +inf)``; ``-inf`` and ``+inf`` fall in the outer bins.
- categorical feature with K categories: the model server passes the *category code* as a
  float, the index of the value in ``FeatureProfile.categories`` (codes are rounded to the
  nearest integer); any code outside ``0..K-1`` (by convention ``-1``) is an *unseen*
  category and counts in slot K, an extra bucket whose reference frequency is 0.
- ``NaN`` is *missing* and counts in a separate slot that takes no part in the statistics
  (a feature's sample count is its non-missing values).

:class:`DriftWindow` keeps the last ``size`` rows as a ring buffer of slot indices
(``size x features``, preallocated) plus running counts per slot: adding a row increments
one count per feature and, once the ring is full, decrements the counts of the row it
overwrites, so the counts always describe exactly the last ``size`` rows. Binning a batch is
*one* ``numpy.searchsorted`` across all features at once (see :class:`BinLayout` for the
complex-number trick that makes that possible): O(features x log(edges)) per row, a handful
of numpy calls per batch, no state that grows with time or traffic (the only temporary is
searchsorted's ``rows x features`` index array).

Statistics (:func:`evaluate_drift`, O(features x bins), on demand)
------------------------------------------------------------------
- **PSI** (population stability index) ``sum_i (q_i - p_i) ln(q_i / p_i)`` over the slots,
  p the reference and q the live proportions. An empty slot would make it infinite, so
  both proportions are floored at :data:`PSI_EPSILON` = 1e-4 (the value Evidently and most
  PSI write-ups use; it caps one empty bin's contribution at about ``p ln(p / 1e-4)``).
  Every term is >= 0, so PSI >= 0, and it is 0 for identical distributions. Decision: drift
  when PSI > threshold (default 0.2, the customary "significant shift" level; 0.1-0.2 is
  "moderate"). PSI does not grow with the window size, so it is the default method. Under
  no drift PSI is about chi2/n with k-1 degrees of freedom, i.e. around (k-1)/n: for 10 bins
  0.045 at n = 200 (the default min_samples), where PSI > 0.2 needs chi2_9 > 40, a chance of
  about 1e-5. Categorical features use the same formula over categories + unseen bucket.
- **Chi-square** goodness of fit of the live slot counts against ``n * p``: the slots that
  take part are those with reference mass or live counts; an unseen category (reference 0)
  gets an expected count of ``n * PSI_EPSILON``, so a handful of unseen values is strong
  evidence of drift. Degrees of freedom: participating slots - 1; p-value
  ``scipy.stats.chi2.sf`` (called as ``scipy.special.chdtrc``, the same function without the
  distribution object's overhead). Equals ``scipy.stats.chisquare`` when every slot has
  reference mass. Applies to numeric bins and categories alike.
- **KS on the binned CDF**: ``D = max_i |F_live(e_i) - F_ref(e_i)|`` over the bin
  boundaries. Two-sample Kolmogorov-Smirnov with the effective size
  ``n_eff = n m / (n + m)`` (n live rows, m = ``ReferenceProfile.rows``; ``n`` alone when the
  reference size is unknown) and p-value ``scipy.stats.kstwo.sf(D, round(n_eff))``, the same
  asymptotic formula as ``scipy.stats.ks_2samp(method="asymp")``. The critical value
  ``kstwo.isf(alpha, round(n_eff))`` is reported too. Because D is only evaluated at bin
  boundaries it is never larger than the continuous D, so the test is conservative (fewer
  false alarms, slightly less power). KS needs an order, so categorical features use
  chi-square when the method is KS.
- Decisions for the p-value methods (KS, chi-square): drift when ``p < threshold`` (default
  0.05). Both grow more sensitive as the window grows (any real difference becomes
  significant with enough rows); PSI does not.

Dataset level: below ``min_samples`` rows in the window the result is *insufficient data*
(neither drift nor no drift); a feature with fewer than ``min_samples`` non-missing values is
left out. The share of drifted features is drifted / evaluated features, and the dataset
drifts when that share is >= ``drift_share`` (default 0.5, as Evidently's DataDriftPreset).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from mlops_operator.monitoring.reference_profile import FeatureProfile

DriftMethod = Literal["PSI", "KS", "ChiSquare"]
DriftState = Literal["ok", "drift", "insufficient_data"]

#: Floor for empty bins in PSI (and the reference share of an unseen category in chi-square).
PSI_EPSILON = 1e-4
#: Default decision thresholds: PSI above 0.2; p-value below 0.05 for KS and chi-square.
DEFAULT_THRESHOLDS: dict[str, float] = {"PSI": 0.2, "KS": 0.05, "ChiSquare": 0.05}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- statistics


def _proportions(values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    total = float(array.sum())
    return array / total if total > 0 else np.zeros_like(array)


def psi(reference: npt.ArrayLike, live: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``live`` against ``reference`` (counts or proportions).

    Both are normalised to proportions and floored at ``epsilon`` so that an empty bin adds a
    large but finite term. Always >= 0.
    """
    p = np.maximum(_proportions(reference), epsilon)
    q = np.maximum(_proportions(live), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def chi_square(reference: npt.ArrayLike, live_counts: npt.ArrayLike) -> tuple[float, float, int]:
    """Chi-square goodness of fit of ``live_counts`` against reference proportions.

    Returns ``(statistic, p_value, degrees_of_freedom)``. Slots with neither reference mass
    nor live counts take no part; a slot with live counts but no reference mass (an unseen
    category) gets the expected count ``n * PSI_EPSILON``.
    """
    p = _proportions(reference)
    observed = np.asarray(live_counts, dtype=np.float64)
    n = float(observed.sum())
    if n <= 0:
        return 0.0, 1.0, 0
    taking_part = (p > 0) | (observed > 0)
    expected = n * np.maximum(p[taking_part], PSI_EPSILON)
    statistic = float(np.sum((observed[taking_part] - expected) ** 2 / expected))
    dof = int(taking_part.sum()) - 1
    if dof <= 0:
        return statistic, 1.0 if statistic <= 1e-12 else 0.0, 0
    return statistic, float(special.chdtrc(dof, statistic)), dof


def effective_size(live_rows: int, reference_rows: int) -> int:
    """The two-sample KS effective size ``n m / (n + m)`` (``n`` when ``m`` is unknown), >= 1."""
    if reference_rows <= 0:
        return max(1, live_rows)
    return max(1, round(live_rows * reference_rows / (live_rows + reference_rows)))


def ks_binned(
    reference: npt.ArrayLike, live_counts: npt.ArrayLike, reference_rows: int
) -> tuple[float, float]:
    """Kolmogorov-Smirnov on the binned CDF: ``(D, p_value)``.

    ``D`` is the largest CDF difference at the bin boundaries; the p-value is the two-sample
    asymptotic one (as ``scipy.stats.ks_2samp(method="asymp")``) for ``n`` live rows and
    ``reference_rows`` reference rows.
    """
    p = _proportions(reference)
    observed = np.asarray(live_counts, dtype=np.float64)
    n = int(observed.sum())
    if n <= 0 or p.size < 2:
        return 0.0, 1.0
    q = observed / n
    d = float(np.max(np.abs(np.cumsum(q)[:-1] - np.cumsum(p)[:-1])))
    p_value = float(stats.kstwo.sf(d, effective_size(n, reference_rows)))
    return d, min(1.0, max(0.0, p_value))


def ks_critical_value(alpha: float, live_rows: int, reference_rows: int) -> float:
    """The D above which the binned KS test rejects at level ``alpha`` for this window size."""
    return _kstwo_isf(alpha, effective_size(live_rows, reference_rows))


@functools.lru_cache(maxsize=1024)
def _kstwo_isf(alpha: float, n: int) -> float:
    # A numerical inversion (~0.7 ms); once the window is full n stops changing, so cache it.
    return float(stats.kstwo.isf(alpha, n))


# --------------------------------------------------------------------------- layout and window


@dataclass(frozen=True)
class BinLayout:
    """Where each feature's values land in one flat count vector, and the reference shares.

    All features' edges live in one sorted complex array, ``feature + 1j * edge``, each
    feature's block followed by a separator ``feature + 0.5``. Complex numbers sort
    lexicographically (real part, then imaginary), so one ``searchsorted`` of the queries
    ``feature + 1j * value`` bins every feature of every row at once, and the index it
    returns *is* the slot in the count vector: feature j's values land in
    ``[starts[j], starts[j] + widths[j]]`` (``starts[j] + #{edges < x}``; the separator keeps
    the ranges of neighbouring features apart), and NaN, which numpy sorts after every
    non-NaN complex number, lands in the last slot (missing, shared by all features: a
    feature's missing count is the window's rows minus its samples).

    For a categorical feature with K categories the edges are ``-0.5, 0.5, ..., K - 0.5``:
    offsets ``1..K`` are the categories (codes rounded to the nearest integer) and offsets
    ``0`` and ``K + 1`` (codes below 0 or above K - 1) are both the unseen bucket.
    """

    names: tuple[str, ...]
    kinds: tuple[Literal["numeric", "categorical"], ...]
    reference: tuple[FloatArray, ...]
    sorted_edges: npt.NDArray[np.complex128]
    starts: tuple[int, ...]
    widths: tuple[int, ...]

    @property
    def features(self) -> int:
        return len(self.names)

    @property
    def slots(self) -> int:
        """Length of the count vector (the last slot counts missing values)."""
        return int(self.sorted_edges.size) + 1

    @classmethod
    def from_profile(cls, features: Sequence[FeatureProfile]) -> BinLayout:
        edges: list[list[float]] = []
        reference: list[FloatArray] = []
        for feature in features:
            if feature.kind == "numeric":
                edges.append(list(feature.bin_edges))
                reference.append(_proportions(feature.bin_frequencies))
            else:
                edges.append([code - 0.5 for code in range(len(feature.categories) + 1)])
                reference.append(_proportions([*feature.category_frequencies, 0.0]))
        if any(math.isnan(value) for e in edges for value in e):
            raise ValueError("bin edges must not be NaN")
        widths = [len(e) for e in edges]
        starts = [sum(w + 1 for w in widths[:j]) for j in range(len(widths))]
        # Real and imaginary parts are set apart: j + 1j * inf would be nan + inf j.
        real = np.array([float(j) for j, w in enumerate(widths) for _ in range(w + 1)], dtype=np.float64)
        imag = np.array([value for e in edges for value in (*e, 0.0)], dtype=np.float64)
        for j, w in enumerate(widths):
            real[starts[j] + w] = j + 0.5  # the separator
        sorted_edges = np.empty(real.size, dtype=np.complex128)
        sorted_edges.real = real
        sorted_edges.imag = imag
        return cls(
            names=tuple(f.name for f in features),
            kinds=tuple(f.kind for f in features),
            reference=tuple(reference),
            sorted_edges=sorted_edges,
            starts=tuple(starts),
            widths=tuple(widths),
        )

    def live_counts(self, counts: IntArray, feature: int) -> IntArray:
        """One feature's live counts, aligned with ``reference[feature]``."""
        start, width = self.starts[feature], self.widths[feature]
        block = counts[start : start + width + 1]
        if self.kinds[feature] == "numeric":
            return block.copy()
        unseen = block[0] + block[width]
        return np.concatenate([block[1:width], [unseen]]).astype(np.int64)


class DriftWindow:
    """The last ``size`` rows as slot indices in a ring buffer, with running counts per slot.

    Not thread-safe: the caller holds a lock around :meth:`add` and :meth:`counts`.
    """

    def __init__(self, layout: BinLayout, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.layout = layout
        self.size = size
        features = layout.features
        # int32 slots: half the memory of the default int64 for large windows.
        self._ring = np.zeros((size, features), dtype=np.int32)
        self._counts = np.zeros(layout.slots, dtype=np.int64)
        self._position = 0
        self._filled = 0
        self._rows_seen = 0
        self._chunk = max(1, min(4096, 65536 // max(1, features)))
        # Queries feature + 1j * value: the real parts never change, the values are copied in.
        self._queries = np.empty((self._chunk, features), dtype=np.complex128)
        self._queries.real[...] = np.arange(features, dtype=np.float64)
        self._query_row = self._queries[:1]
        self._query_row_values = self._query_row.imag

    @property
    def rows(self) -> int:
        """Rows currently in the window (at most ``size``)."""
        return self._filled

    @property
    def rows_seen(self) -> int:
        """Rows ever added."""
        return self._rows_seen

    def add(self, rows: FloatArray) -> None:
        """Add a ``(n, features)`` float64 batch; rows past ``size`` only ever evict each other."""
        n = rows.shape[0]
        self._rows_seen += n
        if n == 1:
            self._add_row(rows)
            return
        if n > self.size:
            rows = rows[n - self.size :]
            n = self.size
        for start in range(0, n, self._chunk):
            self._add_chunk(rows[start : start + self._chunk])

    def _add_row(self, row: FloatArray) -> None:
        # The common case (one row per request) without slicing or wrap-around logic.
        np.copyto(self._query_row_values, row)
        slots = np.searchsorted(self.layout.sorted_edges, self._query_row)[0]
        position = self._position
        target = self._ring[position]
        if self._filled == self.size:
            np.subtract.at(self._counts, target, 1)
        else:
            self._filled += 1
        target[...] = slots
        np.add.at(self._counts, slots, 1)
        self._position = position + 1 if position + 1 < self.size else 0

    def _add_chunk(self, rows: FloatArray) -> None:
        n = rows.shape[0]
        if n == 1:
            self._add_row(rows)
            return
        queries = self._queries[:n]
        np.copyto(queries.imag, rows)
        slots = np.searchsorted(self.layout.sorted_edges, queries)
        first = min(n, self.size - self._position)
        self._write(self._position, slots[:first])
        if first < n:
            self._write(0, slots[first:])
        self._position = (self._position + n) % self.size
        self._filled = min(self.size, self._filled + n)

    def _write(self, position: int, slots: npt.NDArray[np.intp]) -> None:
        end = position + slots.shape[0]
        target = self._ring[position:end]
        # The ring fills from 0 and wraps, so before it is full the rows at [filled, size)
        # hold nothing to evict.
        if self._filled > position:
            np.subtract.at(self._counts, target[: self._filled - position], 1)
        target[...] = slots
        np.add.at(self._counts, slots, 1)

    def counts(self) -> IntArray:
        """A copy of the running counts (index layout: :class:`BinLayout`)."""
        return self._counts.copy()


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's result. ``drifted`` is None when it had fewer than min_samples values."""

    name: str
    kind: Literal["numeric", "categorical"]
    method: DriftMethod
    score: float | None
    p_value: float | None
    drifted: bool | None
    samples: int
    missing: int
    critical_value: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "score": self.score,
            "p_value": self.p_value,
            "critical_value": self.critical_value,
            "drifted": self.drifted,
            "samples": self.samples,
            "missing": self.missing,
        }


@dataclass(frozen=True)
class DriftReport:
    state: DriftState
    rows: int
    method: DriftMethod
    threshold: float
    features: tuple[FeatureDrift, ...]
    share: float | None
    dataset_drift: bool | None

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]


def feature_method(method: DriftMethod, kind: Literal["numeric", "categorical"]) -> DriftMethod:
    """KS needs ordered values: categorical features use chi-square (also a p-value test)."""
    return "ChiSquare" if method == "KS" and kind == "categorical" else method


def evaluate_feature(
    name: str,
    kind: Literal["numeric", "categorical"],
    reference: FloatArray,
    counts: IntArray,
    missing: int,
    *,
    method: DriftMethod,
    threshold: float,
    min_samples: int,
    reference_rows: int,
) -> FeatureDrift:
    """Score one feature's live slot counts against its reference proportions."""
    method = feature_method(method, kind)
    samples = int(counts.sum())
    if samples < min_samples:
        return FeatureDrift(name, kind, method, None, None, None, samples, missing)
    if method == "PSI":
        score = psi(reference, counts)
        return FeatureDrift(name, kind, method, score, None, score > threshold, samples, missing)
    if method == "KS":
        d, p_value = ks_binned(reference, counts, reference_rows)
        critical = ks_critical_value(threshold, samples, reference_rows)
        return FeatureDrift(name, kind, method, d, p_value, p_value < threshold, samples, missing, critical)
    statistic, p_value, _ = chi_square(reference, counts)
    return FeatureDrift(name, kind, method, statistic, p_value, p_value < threshold, samples, missing)


def evaluate_drift(
    layout: BinLayout,
    counts: IntArray,
    rows: int,
    *,
    method: DriftMethod = "PSI",
    threshold: float | None = None,
    min_samples: int = 200,
    drift_share: float = 0.5,
    reference_rows: int = 0,
) -> DriftReport:
    """Per-feature drift, the share of drifted features and the dataset decision.

    ``counts`` is :meth:`DriftWindow.counts` and ``rows`` the rows in the window.
    """
    limit = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    if rows < min_samples:
        return DriftReport("insufficient_data", rows, method, limit, (), None, None)
    live = [layout.live_counts(counts, j) for j in range(layout.features)]
    results = tuple(
        evaluate_feature(
            layout.names[j],
            layout.kinds[j],
            layout.reference[j],
            live[j],
            rows - int(live[j].sum()),
            method=method,
            threshold=limit,
            min_samples=min_samples,
            reference_rows=reference_rows,
        )
        for j in range(layout.features)
    )
    evaluated = [r for r in results if r.drifted is not None]
    if not evaluated:
        return DriftReport("insufficient_data", rows, method, limit, results, None, None)
    share = sum(1 for r in evaluated if r.drifted) / len(evaluated)
    dataset_drift = share >= drift_share
    return DriftReport("drift" if dataset_drift else "ok", rows, method, limit, results, share, dataset_drift)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinities: an unbounded statistic is reported as None."""
    return value if value is None or math.isfinite(value) else None
