"""Build the reference profile (``monitoring/reference_profile.py``'s contract) from the training split (pure).

Numeric features: 10 quantile bins. The interior edges are the 10%..90% quantiles with repeats
removed (a skewed or discrete column has fewer, wider bins; a constant column gets the single
edge at its value, so live values above or below it show up as drift). Frequencies are of the
non-null values, binned the way the server bins: ``numpy.searchsorted(edges, x, side="left")``.
Categorical features: the 50 most frequent categories (as text) and their shares of the
non-null values; the remaining categories are left out, so the listed shares sum to less than 1
and the server counts those values as not listed.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from mlops_operator.monitoring.reference_profile import FeatureProfile, Quantile, ReferenceProfile
from mlops_operator.trainer.data_validation import Columns, Task

BINS: Final = 10
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
            bin_frequencies=[1.0],
        )
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    return FeatureProfile(
        name=name,
        kind="numeric",
        dtype=str(series.dtype),
        null_fraction=null_fraction,
        bin_edges=[float(e) for e in edges],
        bin_frequencies=[float(c) / finite.size for c in counts],
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
    shares = values.astype(str).value_counts(normalize=True) if len(values) else pd.Series(dtype="float64")
    # Most frequent first, ties by name: the same data always gives the same profile.
    top = sorted(((str(k), float(v)) for k, v in shares.items()), key=lambda kv: (-kv[1], kv[0]))[
        :TOP_CATEGORIES
    ]
    return FeatureProfile(
        name=str(series.name),
        kind="categorical",
        dtype=str(series.dtype),
        null_fraction=float(series.isna().mean()) if len(series) else 0.0,
        categories=[k for k, _ in top],
        category_frequencies=[v for _, v in top],
    )
