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
  These are the profile's *fine* bins: up to 100 (percentile edges), or one per distinct value
  for a low-cardinality feature (``binning: values``, see ``trainer/profile_builder.py``).
- categorical feature with K categories: the model server passes the *category code* as a
  float, the index of the value in ``FeatureProfile.categories`` (codes are rounded to the
  nearest integer); any code outside ``0..K-1`` (by convention ``-1``) is a category the
  profile does not list and counts in slot K, whose reference count is the training values of
  unlisted categories (0 unless the training data had more than 50 categories).
- ``NaN`` is *missing* and counts in a separate slot that takes no part in the statistics
  (a feature's sample count is its non-missing values).

:class:`DriftWindow` keeps the last ``size`` rows as a ring buffer of slot indices
(``size x features``, preallocated) plus running counts per slot: adding a row increments
one count per feature and, once the ring is full, decrements the counts of the row it
overwrites, so the counts always describe exactly the last ``size`` rows. Binning a batch is
*one* ``numpy.searchsorted`` across all features at once (see :class:`BinLayout` for the
complex-number trick that makes that possible): O(features x log(edges)) per row, a handful
of numpy calls per batch, no state that grows with time or traffic. A hundred edges per
feature instead of ten adds about three comparisons per value to the binary search; the cost
per row is measured in BENCHMARKS.md ("Drift accounting").

Two samples, not one
--------------------
The reference is itself a sample (``m`` training rows), so every test here is a *two-sample*
test that counts both sizes: a goodness-of-fit test that took the training proportions as
exact would see their own sampling noise as drift, more often the larger the window (measured
with a one-sample chi-square: 5% false alarms at 200 rows, 8% at 500, 11% at 1,000 against a
nominal 5%, worse with small training sets). The profile carries counts for that.

Coarse bins (PSI, chi-square)
-----------------------------
Many sparse bins make PSI noisy and the chi-square approximation poor, so both use *coarse*
bins, unions of neighbouring fine bins (:func:`coarse_groups`): percentile bins are merged into
about :data:`COARSE_BINS` = 10 groups at the reference deciles (fewer for training sets under
300 rows: at least :data:`MIN_COARSE_COUNT` training values a group; profiles of format 1,
which have at most 10 bins, keep theirs); value bins stay one per value, except that values
with less than :data:`MIN_COARSE_SHARE` of the reference are merged with their neighbours, and
the empty bins below the smallest and above the largest training value join their neighbours
(see :func:`_merge_rare_values`; KS still sees them); categories below that share are merged
into one group, and the "not listed" slot stays apart.

Statistics (:func:`evaluate_drift`, O(features x bins), on demand)
------------------------------------------------------------------
- **PSI** (population stability index) ``sum_i (q_i - p_i) ln(q_i / p_i)`` over the coarse
  bins, p the reference and q the live proportions. An empty bin would make it infinite, so
  both proportions are floored at :data:`PSI_EPSILON` = 1e-4 (the value Evidently and most
  PSI write-ups use). Every term is >= 0, so PSI >= 0, and it is 0 for identical
  distributions. Decision: drift when PSI > threshold (default 0.2, the customary
  "significant shift" level). PSI is an effect size, not a test: it has no nominal error rate,
  and its noise under no drift is about ``chi2_{k-1} (1/n + 1/m)``, which with 10 bins stays
  well below 0.2 unless both the window and the training set are small (docs/reliability.md
  gives the measured false-alarm rates).
- **Chi-square** two-sample test of homogeneity on the ``2 x k`` table (reference counts,
  live counts) of the coarse bins: expected counts from the pooled proportions, bins empty
  in both samples left out, ``k' - 1`` degrees of freedom, p-value ``scipy.stats.chi2.sf``
  (called as ``scipy.special.chdtrc``). Equals ``scipy.stats.chi2_contingency(table,
  correction=False)``. A category (or value) the training data never had is strong evidence
  when it is frequent live: 10 unseen values in 1,000 live rows against 5,000 training rows add
  about 50 to the statistic.
- **KS** (Kolmogorov-Smirnov) two-sample on the fine bins: ``D = max_i |F_live(e_i) -
  F_ref(e_i)|`` over the edges, the p-value ``scipy.stats.kstwo.sf(D, round(n m / (n + m)))``,
  the formula of ``scipy.stats.ks_2samp(method="asymp")``; the critical value
  ``kstwo.isf(alpha, ...)`` is reported too. The exact statistic over the raw values, ``D*``,
  satisfies ``D <= D* <= D + max_i max(p_i, q_i)`` (inside a bin each CDF moves by at most its
  own share): with percentile edges the tolerance is about 0.01, and for value bins D is exact.
  So the binned test never rejects where the exact one would not (it is at most as liberal),
  and it loses little power. KS needs an order, so categorical features use chi-square when
  the method is KS.
- Decisions for the p-value methods (KS, chi-square): drift when ``p < threshold`` (default
  0.05). Both grow more sensitive as the window grows (any real difference becomes
  significant with enough rows); PSI does not.

Dataset level: below ``min_samples`` rows in the window the result is *insufficient data*
(neither drift nor no drift); a feature with fewer than ``min_samples`` non-missing values, or
whose reference has no values at all, is left out. The share of drifted features is drifted /
evaluated features, and the dataset drifts when that share is >= ``drift_share`` (default
0.5, as Evidently's DataDriftPreset).
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

from mlops_operator.monitoring.reference_profile import Binning, FeatureProfile

DriftMethod = Literal["PSI", "KS", "ChiSquare"]
DriftState = Literal["ok", "drift", "insufficient_data"]
FeatureKind = Literal["numeric", "categorical"]

#: Floor for empty bins in PSI (and for the reference share of an unseen class in ``chi_square``).
PSI_EPSILON = 1e-4
#: Default decision thresholds: PSI above 0.2; p-value below 0.05 for KS and chi-square.
DEFAULT_THRESHOLDS: dict[str, float] = {"PSI": 0.2, "KS": 0.05, "ChiSquare": 0.05}
#: Percentile bins are merged into about this many coarse bins for PSI and chi-square.
COARSE_BINS = 10
#: Value bins and categories with a smaller reference share are merged (coarse bins only).
MIN_COARSE_SHARE = 0.02
#: Percentile bins merge into fewer coarse bins when the training set is small, so that each
#: holds at least this many training values (below it, bins cut at the training sample's own
#: quantiles make the chi-square test too liberal when the window is much larger than the
#: training set: 6% false alarms at 150 training rows and 1,000 live rows with 10 bins).
MIN_COARSE_COUNT = 30

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- statistics
#
# The ``*_batch`` functions take counts with the bins on the last axis and any number of
# leading axes (many windows at once: the calibration test scores thousands); the scalar
# functions are one row of them. Bins that are empty in both samples change nothing, so rows
# of different widths can be zero-padded to one array.


def _proportions(values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    total = array.sum(axis=-1, keepdims=True)
    return np.asarray(np.divide(array, total, out=np.zeros_like(array), where=total > 0), dtype=np.float64)


def psi_batch(reference: npt.ArrayLike, live: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> FloatArray:
    """PSI along the last axis (counts or proportions; see :func:`psi`)."""
    p = np.maximum(_proportions(reference), epsilon)
    q = np.maximum(_proportions(live), epsilon)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1), dtype=np.float64)


def psi(reference: npt.ArrayLike, live: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``live`` against ``reference`` (counts or proportions).

    Both are normalised to proportions and floored at ``epsilon`` so that an empty bin adds a
    large but finite term. Always >= 0.
    """
    return float(psi_batch(reference, live, epsilon))


def chi_square(reference: npt.ArrayLike, live_counts: npt.ArrayLike) -> tuple[float, float, int]:
    """Chi-square goodness of fit of ``live_counts`` against *exact* reference proportions.

    Returns ``(statistic, p_value, degrees_of_freedom)``. Slots with neither reference mass
    nor live counts take no part; a slot with live counts but no reference mass gets the
    expected count ``n * PSI_EPSILON``. Only for references known without sampling noise (the
    predicted-class distribution uses it); feature drift uses :func:`chi_square_two_sample`.
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


def chi_square_two_sample_batch(
    reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Chi-square test of homogeneity along the last axis: ``(statistics, p_values, dofs)``.

    Where either sample is empty, or only one bin takes part, the statistic is 0 and p is 1.
    """
    reference = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    reference, live = np.broadcast_arrays(reference, live)
    m = reference.sum(axis=-1, keepdims=True)
    n = live.sum(axis=-1, keepdims=True)
    column = reference + live
    total = m + n
    share = np.divide(column, total, out=np.zeros_like(column), where=total > 0)
    expected_reference = m * share
    expected_live = n * share
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(
            column > 0,
            (reference - expected_reference) ** 2 / np.where(expected_reference > 0, expected_reference, 1.0)
            + (live - expected_live) ** 2 / np.where(expected_live > 0, expected_live, 1.0),
            0.0,
        )
    both = (m[..., 0] > 0) & (n[..., 0] > 0)
    dof = np.where(both, np.count_nonzero(column > 0, axis=-1) - 1, 0).astype(np.int64)
    statistic = np.where(dof > 0, terms.sum(axis=-1), 0.0)
    p_value = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), statistic), 1.0)
    return statistic, np.clip(p_value, 0.0, 1.0), dof


def chi_square_two_sample(
    reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike
) -> tuple[float, float, int]:
    """Chi-square test that the reference and live counts come from one distribution.

    Returns ``(statistic, p_value, degrees_of_freedom)``, those of
    ``scipy.stats.chi2_contingency([reference, live], correction=False)`` once the bins empty
    in both are dropped.
    """
    statistic, p_value, dof = chi_square_two_sample_batch(reference_counts, live_counts)
    return float(statistic), float(p_value), int(dof)


def effective_size(live_rows: int, reference_rows: int) -> int:
    """The two-sample KS effective size ``n m / (n + m)`` (``n`` when ``m`` is unknown), >= 1."""
    if reference_rows <= 0:
        return max(1, live_rows)
    return max(1, round(live_rows * reference_rows / (live_rows + reference_rows)))


def ks_distance_batch(reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike) -> FloatArray:
    """The binned KS distance ``D`` along the last axis (the cheap part of :func:`ks_binned_batch`)."""
    gap = np.abs(
        np.cumsum(_proportions(live_counts), axis=-1) - np.cumsum(_proportions(reference_counts), axis=-1)
    )
    return np.asarray(gap[..., :-1].max(axis=-1, initial=0.0), dtype=np.float64)


def ks_binned_batch(
    reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Two-sample KS on the binned CDFs along the last axis: ``(D, p_values)`` (see :func:`ks_binned`)."""
    m = np.asarray(reference_counts, dtype=np.float64).sum(axis=-1)
    n = np.asarray(live_counts, dtype=np.float64).sum(axis=-1)
    d = ks_distance_batch(reference_counts, live_counts)
    # round(n m / (n + m)) as scipy's ks_2samp(method="asymp"); numpy rounds halves to even, as scipy does.
    size = np.maximum(1.0, np.round(np.divide(n * m, n + m, out=np.zeros_like(n), where=n + m > 0)))
    p_value = np.where((n > 0) & (m > 0), stats.kstwo.sf(d, size), 1.0)
    return np.asarray(d, dtype=np.float64), np.clip(p_value, 0.0, 1.0)


def ks_binned(reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike) -> tuple[float, float]:
    """Kolmogorov-Smirnov on the binned CDF: ``(D, p_value)``.

    ``D`` is the largest CDF difference at the bin edges; the p-value is the two-sample
    asymptotic one (as ``scipy.stats.ks_2samp(method="asymp")``) for the ``n`` live and ``m``
    reference values the counts add up to. :func:`ks_tolerance` bounds how far the exact
    statistic over the raw values can lie above ``D``.
    """
    d, p_value = ks_binned_batch(reference_counts, live_counts)
    return float(d), float(p_value)


def ks_tolerance(reference_counts: npt.ArrayLike, live_counts: npt.ArrayLike) -> FloatArray:
    """The largest share of one bin in either sample: the exact KS statistic is within this of D.

    Inside a bin ``(e_{i-1}, e_i]`` the reference CDF rises by at most ``p_i`` and the live one
    by at most ``q_i``, so their difference moves at most ``max(p_i, q_i)`` away from its value
    at an edge. Along the last axis, like the ``*_batch`` functions.
    """
    return np.asarray(
        np.maximum(_proportions(reference_counts), _proportions(live_counts)).max(axis=-1), dtype=np.float64
    )


def ks_critical_value(alpha: float, live_rows: int, reference_rows: int) -> float:
    """The D above which the binned KS test rejects at level ``alpha`` for this window size."""
    return _kstwo_isf(alpha, effective_size(live_rows, reference_rows))


@functools.lru_cache(maxsize=1024)
def _kstwo_isf(alpha: float, n: int) -> float:
    # A numerical inversion (~0.7 ms); once the window is full n stops changing, so cache it.
    return float(stats.kstwo.isf(alpha, n))


# --------------------------------------------------------------------------- coarse bins


def coarse_groups(kind: FeatureKind, binning: Binning, counts: npt.ArrayLike) -> IntArray:
    """The coarse bin (group index) of each fine slot, for PSI and chi-square (module docstring).

    ``counts`` are the reference counts in slot order (for a categorical feature the last slot
    is "not listed"). Groups are numbered from 0 in slot order.
    """
    reference = np.asarray(counts, dtype=np.float64)
    size = reference.size
    total = reference.sum()
    if total <= 0 or size <= 1:
        return np.arange(size, dtype=np.int64)
    share = reference / total
    if kind == "categorical":
        listed = share[:-1]
        rare = listed < MIN_COARSE_SHARE
        if rare.sum() <= 1:
            return np.arange(size, dtype=np.int64)
        # Frequent categories keep a group each (in slot order); the rare ones share the next
        # group; "not listed" comes last.
        groups = np.empty(size, dtype=np.int64)
        frequent = int(np.count_nonzero(~rare))
        groups[:-1][~rare] = np.arange(frequent)
        groups[:-1][rare] = frequent
        groups[-1] = frequent + 1
        return groups
    if binning == "values":
        return _merge_rare_values(share)
    if size <= COARSE_BINS:
        return np.arange(size, dtype=np.int64)
    # Cut at the fine edges whose cumulative reference share is nearest each decile (fewer
    # bins for a small training set, so that each holds MIN_COARSE_COUNT training values).
    bins = int(min(COARSE_BINS, max(2, total // MIN_COARSE_COUNT)))
    cumulative = np.cumsum(share)[:-1]
    targets = np.arange(1, bins) / bins
    cuts = np.unique(np.abs(cumulative[None, :] - targets[:, None]).argmin(axis=1))
    # Fine bin j lies right of edge j - 1: its group is the number of cuts before it.
    return np.searchsorted(cuts, np.arange(size), side="left").astype(np.int64)


def _merge_rare_values(share: FloatArray) -> IntArray:
    """Value bins ``[below min, v_0, ..., v_K-1, above max]``: merge rare neighbours, left to right.

    The empty bins below the smallest and above the largest training value join their
    neighbours: they are empty *because* the training sample ended there, and a live value
    beyond the training range happens by chance about ``n / (n + m)`` of the time, which a
    bin with no reference mass would count as strong evidence. A feature that was constant
    in training keeps them apart (any other value is drift).
    """
    size = share.size
    outer = size >= 3 and share[0] == 0 and share[-1] == 0
    if outer and size == 3:
        return np.arange(3, dtype=np.int64)
    inner = share[1:-1] if outer else share
    groups = np.empty(inner.size, dtype=np.int64)
    group = 0
    accumulated = 0.0
    for slot, value in enumerate(inner.tolist()):
        groups[slot] = group
        accumulated += value
        if accumulated >= MIN_COARSE_SHARE:
            group += 1
            accumulated = 0.0
    if groups[-1] == group and group > 0:
        groups[groups == group] = group - 1  # a rare tail joins the group before it
    if not outer:
        return groups
    return np.concatenate([groups[:1], groups, groups[-1:]]).astype(np.int64)


# --------------------------------------------------------------------------- layout and window


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: counts per fine slot, and how slots merge into coarse bins."""

    name: str
    kind: FeatureKind
    counts: IntArray
    groups: IntArray

    @classmethod
    def from_profile(cls, feature: FeatureProfile) -> FeatureReference:
        counts = np.asarray(feature.reference_counts, dtype=np.int64)
        return cls(feature.name, feature.kind, counts, coarse_groups(feature.kind, feature.binning, counts))

    @property
    def rows(self) -> int:
        """Non-missing reference values."""
        return int(self.counts.sum())

    @property
    def coarse_bins(self) -> int:
        return int(self.groups.max()) + 1 if self.groups.size else 0

    def coarse(self, counts: npt.ArrayLike) -> IntArray:
        """Fine counts (bins on the last axis) summed into the coarse bins."""
        return np.asarray(np.asarray(counts, dtype=np.int64) @ self._membership, dtype=np.int64)

    @functools.cached_property
    def _membership(self) -> IntArray:
        # (fine slots x coarse bins) 0/1 matrix: one product merges any number of windows.
        membership = np.zeros((self.groups.size, self.coarse_bins), dtype=np.int64)
        membership[np.arange(self.groups.size), self.groups] = 1
        return membership


@dataclass(frozen=True)
class BinLayout:
    """Where each feature's values land in one flat count vector, and the reference counts.

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
    ``0`` and ``K + 1`` (codes below 0 or above K - 1) are both the unlisted bucket.
    """

    names: tuple[str, ...]
    kinds: tuple[FeatureKind, ...]
    references: tuple[FeatureReference, ...]
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
        """The layout of a profile's features (they must carry counts: see ``reference_profile.py``)."""
        edges: list[list[float]] = []
        for feature in features:
            if feature.kind == "numeric":
                edges.append(list(feature.bin_edges))
            else:
                edges.append([code - 0.5 for code in range(len(feature.categories) + 1)])
        if any(math.isnan(value) for e in edges for value in e):
            raise ValueError("bin edges must not be NaN")
        references = tuple(FeatureReference.from_profile(f) for f in features)
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
            references=references,
            sorted_edges=sorted_edges,
            starts=tuple(starts),
            widths=tuple(widths),
        )

    def bin(self, rows: FloatArray) -> npt.NDArray[np.intp]:
        """The slot of every value of a ``(n, features)`` batch (what the window stores)."""
        queries = np.empty(rows.shape, dtype=np.complex128)
        queries.real[...] = np.arange(self.features, dtype=np.float64)
        queries.imag[...] = rows
        return np.searchsorted(self.sorted_edges, queries)

    def live_counts(self, counts: IntArray, feature: int) -> IntArray:
        """One feature's live counts, aligned with ``references[feature].counts``."""
        start, width = self.starts[feature], self.widths[feature]
        block = counts[start : start + width + 1]
        if self.kinds[feature] == "numeric":
            return block.copy()
        unlisted = block[0] + block[width]
        return np.concatenate([block[1:width], [unlisted]]).astype(np.int64)


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
    kind: FeatureKind
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


def feature_method(method: DriftMethod, kind: FeatureKind) -> DriftMethod:
    """KS needs ordered values: categorical features use chi-square (also a p-value test)."""
    return "ChiSquare" if method == "KS" and kind == "categorical" else method


def evaluate_feature(
    reference: FeatureReference,
    counts: IntArray,
    missing: int,
    *,
    method: DriftMethod,
    threshold: float,
    min_samples: int,
) -> FeatureDrift:
    """Score one feature's live counts (fine slots, aligned with ``reference.counts``)."""
    name, kind = reference.name, reference.kind
    method = feature_method(method, kind)
    samples = int(counts.sum())
    if samples < min_samples or reference.rows == 0:
        return FeatureDrift(name, kind, method, None, None, None, samples, missing)
    if method == "KS":
        d, p_value = ks_binned(reference.counts, counts)
        critical = ks_critical_value(threshold, samples, reference.rows)
        return FeatureDrift(name, kind, method, d, p_value, p_value < threshold, samples, missing, critical)
    coarse_reference, coarse_live = reference.coarse(reference.counts), reference.coarse(counts)
    if method == "PSI":
        score = psi(coarse_reference, coarse_live)
        return FeatureDrift(name, kind, method, score, None, score > threshold, samples, missing)
    statistic, p_value, _ = chi_square_two_sample(coarse_reference, coarse_live)
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
) -> DriftReport:
    """Per-feature drift, the share of drifted features and the dataset decision.

    ``counts`` is :meth:`DriftWindow.counts` and ``rows`` the rows in the window.
    """
    limit = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    if rows < min_samples:
        return DriftReport("insufficient_data", rows, method, limit, (), None, None)
    results = []
    for j, reference in enumerate(layout.references):
        live = layout.live_counts(counts, j)
        results.append(
            evaluate_feature(
                reference,
                live,
                rows - int(live.sum()),
                method=method,
                threshold=limit,
                min_samples=min_samples,
            )
        )
    evaluated = [r for r in results if r.drifted is not None]
    if not evaluated:
        return DriftReport("insufficient_data", rows, method, limit, tuple(results), None, None)
    share = sum(1 for r in evaluated if r.drifted) / len(evaluated)
    dataset_drift = share >= drift_share
    return DriftReport(
        "drift" if dataset_drift else "ok", rows, method, limit, tuple(results), share, dataset_drift
    )


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinities: an unbounded statistic is reported as None."""
    return value if value is None or math.isfinite(value) else None
