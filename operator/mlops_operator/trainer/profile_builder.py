"""Build the reference profile (``monitoring/reference_profile.py``'s contract) from the training split (pure).

Numeric features, binned the way the server bins (``numpy.searchsorted(edges, x, side="left")``),
with the count of non-null training values in each bin:

- a feature with at most :data:`MAX_VALUE_BINS` distinct values (a flag, a count, a rating) is
  binned *by value*: one bin per distinct value, plus an empty bin below the smallest and one
  above the largest, so a value the training data never went below or above shows up. Quantile
  edges would merge values (a Poisson count's 0 and 1 would share a bin) and hide a shift
  between them.
- any other feature gets the distinct 1%..99% percentiles as edges (up to 100 bins). The server
  reads the Kolmogorov-Smirnov distance off these edges, so the finer they are the closer it is
  to the exact statistic (within the largest bin's share, about 0.01); PSI and chi-square
  merge them back into deciles (``monitoring/drift.py``).

Categorical features: the 50 most frequent categories (as text) with their counts and shares of
the non-null values; the values of the other categories are counted together as not listed.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlops_operator.monitoring.reference_profile import Binning, FeatureProfile, Quantile, ReferenceProfile
from mlops_operator.trainer.data_validation import Columns, Task

#: Numeric features get the distinct percentiles 1%..99% as edges.
FINE_BINS: Final = 100
#: Numeric features with at most this many distinct values are binned by value.
MAX_VALUE_BINS: Final = 20
TOP_CATEGORIES: Final = 50
QUANTILES: Final = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def build_profile(
    features: pd.DataFrame, labels: pd.Series, columns: Columns, *, task: Task, target: str
) -> ReferenceProfile:
    """The reference profile of a training split, feature by feature in the model's input order."""
    profiles = [
        numeric_profile(features[name]) if name in columns.numeric else categorical_profile(features[name])
        for name in columns.features
    ]
    classes: list[str] | None = None
    class_frequencies: list[float] | None = None
    if task == "classification":
        shares = labels.astype(str).value_counts(normalize=True).sort_index()
        classes = [str(c) for c in shares.index]
        class_frequencies = [float(v) for v in shares.to_numpy()]
    return ReferenceProfile(
        task=task,
        target=target,
        rows=len(features),
        features=profiles,
        classes=classes,
        class_frequencies=class_frequencies,
    )


def numeric_bins(values: npt.NDArray[np.float64]) -> tuple[Binning, list[float], list[int]]:
    """``(binning, interior edges, counts per bin)`` of finite values (at least one).

    One sort serves the distinct values, the percentiles and the counts.
    """
    ordered = np.sort(values)
    size = ordered.size
    first = np.empty(size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    if starts.size <= MAX_VALUE_BINS:
        distinct = ordered[starts]
        counts = np.diff(np.append(starts, size))
        # The first edge is the largest float below the smallest value: bin 0 holds x < min.
        below = float(np.nextafter(distinct[0], -np.inf))
        return "values", [below, *(float(v) for v in distinct)], [0, *(int(c) for c in counts), 0]
    edges = np.unique(np.quantile(ordered, np.linspace(0, 1, FINE_BINS + 1)[1:-1]))
    # Bin i holds e[i-1] < x <= e[i]: differences of #{x <= e}.
    at_or_below = np.searchsorted(ordered, edges, side="right")
    counts = np.diff(at_or_below, prepend=0, append=size)
    return "quantiles", [float(e) for e in edges], [int(c) for c in counts]


def numeric_profile(series: pd.Series) -> FeatureProfile:
    name = str(series.name)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
    finite = values[np.isfinite(values)]
    null_fraction = float(np.mean(~np.isfinite(values))) if len(values) else 0.0
    if finite.size == 0:
        return FeatureProfile(
            name=name,
            kind="numeric",
            dtype=str(series.dtype),
            null_fraction=null_fraction,
            bin_counts=[0],
            bin_frequencies=[1.0],
        )
    binning, edges, counts = numeric_bins(finite)
    return FeatureProfile(
        name=name,
        kind="numeric",
        dtype=str(series.dtype),
        null_fraction=null_fraction,
        binning=binning,
        bin_edges=edges,
        bin_counts=counts,
        bin_frequencies=[c / finite.size for c in counts],
        quantiles=[
            Quantile(q=q, value=float(v))
            for q, v in zip(QUANTILES, np.quantile(finite, QUANTILES), strict=True)
        ],
        mean=float(np.mean(finite)),
        std=float(np.std(finite)),
        min=float(np.min(finite)),
        max=float(np.max(finite)),
    )


def categorical_profile(series: pd.Series) -> FeatureProfile:
    values = series.dropna()
    counts = values.astype(str).value_counts() if len(values) else pd.Series(dtype="int64")
    # Most frequent first, ties by name: the same data always gives the same profile.
    top = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))[
        :TOP_CATEGORIES
    ]
    non_null = len(values)
    return FeatureProfile(
        name=str(series.name),
        kind="categorical",
        dtype=str(series.dtype),
        null_fraction=float(series.isna().mean()) if len(series) else 0.0,
        categories=[k for k, _ in top],
        category_counts=[c for _, c in top],
        category_frequencies=[c / non_null for _, c in top],
        unlisted_count=non_null - sum(c for _, c in top),
    )
