"""Drift statistics, binning and the sliding window (mlops_operator.monitoring.drift)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from mlops_operator.monitoring.accuracy import Task
from mlops_operator.monitoring.drift import (
    PSI_EPSILON,
    BinLayout,
    DriftMethod,
    DriftReport,
    DriftWindow,
    FloatArray,
    chi_square,
    evaluate_drift,
    ks_binned,
    ks_critical_value,
    psi,
)
from mlops_operator.monitoring.reference_profile import FeatureProfile, ReferenceProfile


def build_profile(
    reference: npt.NDArray[np.float64],
    *,
    bins: int = 10,
    categorical: dict[int, Sequence[str]] | None = None,
    task: Task = "classification",
    classes: Sequence[str] | None = None,
    class_frequencies: Sequence[float] | None = None,
) -> ReferenceProfile:
    """A profile as the trainer would build it: quantile bins; categorical columns hold codes."""
    categorical = categorical or {}
    features = []
    for j in range(reference.shape[1]):
        column = reference[:, j]
        if j in categorical:
            categories = list(categorical[j])
            counts = np.bincount(column.astype(int), minlength=len(categories))
            features.append(
                FeatureProfile(
                    name=f"c{j}",
                    kind="categorical",
                    dtype="object",
                    categories=categories,
                    category_frequencies=(counts / counts.sum()).tolist(),
                )
            )
            continue
        edges = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, column, side="left"), minlength=edges.size + 1)
        features.append(
            FeatureProfile(
                name=f"x{j}",
                kind="numeric",
                dtype="float64",
                bin_edges=edges.tolist(),
                bin_frequencies=(counts / counts.sum()).tolist(),
            )
        )
    return ReferenceProfile(
        task=task,
        target="y",
        rows=reference.shape[0],
        features=features,
        classes=list(classes) if classes is not None else None,
        class_frequencies=list(class_frequencies) if class_frequencies is not None else None,
    )


def numeric(name: str, edges: Sequence[float], frequencies: Sequence[float]) -> FeatureProfile:
    return FeatureProfile(
        name=name, kind="numeric", dtype="float64", bin_edges=list(edges), bin_frequencies=list(frequencies)
    )


def categorical(name: str, categories: Sequence[str], frequencies: Sequence[float]) -> FeatureProfile:
    return FeatureProfile(
        name=name,
        kind="categorical",
        dtype="object",
        categories=list(categories),
        category_frequencies=list(frequencies),
    )


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("reference", "live", "expected"),
    [
        pytest.param([0.5, 0.5], [0.5, 0.5], 0.0, id="identical"),
        pytest.param(
            [0.5, 0.5],
            [0.25, 0.75],
            (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5),
            id="shifted-half",
        ),
        pytest.param([50, 50], [25, 75], 0.25 * math.log(2) + 0.25 * math.log(1.5), id="counts-normalised"),
        pytest.param(
            [0.5, 0.5],
            [1.0, 0.0],
            0.5 * math.log(2) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5),
            id="empty-live-bin-epsilon",
        ),
        pytest.param(
            [0.2, 0.3, 0.5],
            [0.1, 0.3, 0.6],
            0.1 * math.log(2) + 0.0 + 0.1 * math.log(1.2),
            id="three-bins",
        ),
    ],
)
def test_psi_hand_computed(reference: list[float], live: list[float], expected: float) -> None:
    assert psi(reference, live) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("reference", "observed"),
    [
        pytest.param([0.25, 0.25, 0.5], [30, 20, 50], id="three-close"),
        pytest.param([0.1, 0.2, 0.3, 0.4], [40, 30, 20, 10], id="four-reversed"),
        pytest.param([0.5, 0.5], [500, 500], id="exact"),
    ],
)
def test_chi_square_matches_scipy(reference: list[float], observed: list[int]) -> None:
    statistic, p_value, dof = chi_square(reference, observed)
    expected = stats.chisquare(observed, f_exp=np.asarray(reference) * sum(observed))
    assert statistic == pytest.approx(expected.statistic, rel=1e-12, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert dof == len(reference) - 1


def test_chi_square_unseen_category_hand_computed() -> None:
    # reference has no mass in the unseen bucket: its expected count is n * epsilon.
    statistic, p_value, dof = chi_square([0.5, 0.5, 0.0], [40, 50, 10])
    unseen_expected = 100 * PSI_EPSILON
    assert statistic == pytest.approx((40 - 50) ** 2 / 50 + 0 + (10 - unseen_expected) ** 2 / unseen_expected)
    assert dof == 2
    assert p_value < 1e-100


def test_chi_square_ignores_empty_unseen_bucket() -> None:
    assert chi_square([0.5, 0.5, 0.0], [50, 50, 0]) == (0.0, 1.0, 1)


@pytest.mark.parametrize(
    ("reference_counts", "live_counts"),
    [
        pytest.param([300, 300, 200, 200], [100, 150, 150, 100], id="mild"),
        pytest.param([250, 250, 250, 250], [10, 40, 100, 350], id="strong"),
        pytest.param([100, 500, 400], [20, 100, 80], id="same-shape"),
    ],
)
def test_ks_binned_matches_scipy_ks_2samp(reference_counts: list[int], live_counts: list[int]) -> None:
    # Values sitting exactly on the bin edges (1, 2, 3, ...) make the binned CDF the exact
    # empirical CDF, so the binned KS must equal scipy's two-sample KS.
    reference = np.repeat(np.arange(1, len(reference_counts) + 1), reference_counts)
    live = np.repeat(np.arange(1, len(live_counts) + 1), live_counts)
    d, p_value = ks_binned(reference_counts, live_counts, reference_rows=int(sum(reference_counts)))
    expected = stats.ks_2samp(reference, live, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)


def test_ks_binned_hand_computed_and_critical_value() -> None:
    # CDFs at the boundaries: reference 0.5, 0.75; live 0.25, 0.5 -> D = 0.25.
    d, p_value = ks_binned([0.5, 0.25, 0.25], [25, 25, 50], reference_rows=0)
    assert d == pytest.approx(0.25)
    assert p_value == pytest.approx(stats.kstwo.sf(0.25, 100))
    critical = ks_critical_value(0.05, 100, 0)
    assert critical == pytest.approx(stats.kstwo.isf(0.05, 100))
    assert (d > critical) == (p_value < 0.05)


# --------------------------------------------------------------------------- binning and window


def _layout() -> BinLayout:
    return BinLayout.from_profile(
        [
            numeric("a", [0.0, 1.0, 2.0], [0.25, 0.25, 0.25, 0.25]),
            categorical("colour", ["red", "green", "blue"], [0.5, 0.3, 0.2]),
            numeric("b", [-5.0], [0.5, 0.5]),
        ]
    )


@pytest.mark.parametrize(
    ("value", "expected_bin"),
    [
        pytest.param(-np.inf, 0, id="minus-inf"),
        pytest.param(-1.0, 0, id="below"),
        pytest.param(0.0, 0, id="on-first-edge-left-closed"),
        pytest.param(0.5, 1, id="inside"),
        pytest.param(1.0, 1, id="on-edge"),
        pytest.param(np.nextafter(1.0, 2.0), 2, id="just-above-edge"),
        pytest.param(2.0, 2, id="on-last-edge"),
        pytest.param(1e300, 3, id="huge"),
        pytest.param(np.inf, 3, id="plus-inf"),
    ],
)
def test_numeric_binning_matches_searchsorted_left(value: float, expected_bin: int) -> None:
    layout = _layout()
    assert np.searchsorted([0.0, 1.0, 2.0], value, side="left") == expected_bin
    window = DriftWindow(layout, 10)
    window.add(np.array([[value, 0.0, 0.0]]))
    assert layout.live_counts(window.counts(), 0).tolist() == [int(i == expected_bin) for i in range(4)]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(0.0, [1, 0, 0, 0], id="red"),
        pytest.param(1.0, [0, 1, 0, 0], id="green"),
        pytest.param(2.0, [0, 0, 1, 0], id="blue"),
        pytest.param(1.2, [0, 1, 0, 0], id="rounded"),
        pytest.param(-1.0, [0, 0, 0, 1], id="unseen-minus-one"),
        pytest.param(3.0, [0, 0, 0, 1], id="unseen-too-large"),
        pytest.param(-np.inf, [0, 0, 0, 1], id="unseen-minus-inf"),
        pytest.param(np.inf, [0, 0, 0, 1], id="unseen-plus-inf"),
        pytest.param(np.nan, [0, 0, 0, 0], id="missing"),
    ],
)
def test_categorical_codes(code: float, expected: list[int]) -> None:
    layout = _layout()
    window = DriftWindow(layout, 10)
    window.add(np.array([[0.5, code, 0.0]]))
    assert layout.live_counts(window.counts(), 1).tolist() == expected


def test_nan_is_missing_not_a_bin() -> None:
    layout = _layout()
    window = DriftWindow(layout, 10)
    window.add(np.array([[np.nan, np.nan, 3.0], [0.5, 0.0, np.nan]]))
    counts = window.counts()
    assert layout.live_counts(counts, 0).tolist() == [0, 1, 0, 0]
    assert layout.live_counts(counts, 2).tolist() == [0, 1]
    assert counts[-1] == 3  # the shared missing slot
    assert window.rows == 2


def test_window_evicts_old_rows() -> None:
    layout = BinLayout.from_profile([numeric("a", [0.0], [0.5, 0.5])])
    window = DriftWindow(layout, 4)
    window.add(np.full((4, 1), -1.0))
    assert layout.live_counts(window.counts(), 0).tolist() == [4, 0]
    window.add(np.full((3, 1), 1.0))
    assert layout.live_counts(window.counts(), 0).tolist() == [1, 3]
    window.add(np.array([[1.0]]))
    assert layout.live_counts(window.counts(), 0).tolist() == [0, 4]
    window.add(np.full((9, 1), -1.0))  # larger than the window: only the last 4 count
    assert layout.live_counts(window.counts(), 0).tolist() == [4, 0]
    assert window.rows == 4
    assert window.rows_seen == 17


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    batches=st.lists(st.integers(1, 15), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_window_counts_equal_recount_of_last_rows(size: int, batches: list[int], seed: int) -> None:
    """Model-based: running counts always equal binning the last ``size`` rows from scratch."""
    rng = np.random.default_rng(seed)
    edges = [-1.0, 0.0, 1.0]
    layout = BinLayout.from_profile(
        [numeric("a", edges, [0.25] * 4), categorical("c", ["p", "q"], [0.5, 0.5])]
    )
    window = DriftWindow(layout, size)
    window._chunk = 3  # exercise chunking and wrap-around with small batches
    history = []
    for n in batches:
        rows = np.column_stack([rng.normal(size=n) * 2, rng.integers(-1, 3, size=n).astype(float)])
        rows[rng.random(n) < 0.1, 0] = np.nan
        window.add(rows)
        history.append(rows)
    last = np.concatenate(history)[-size:]
    numeric_column = last[~np.isnan(last[:, 0]), 0]
    expected_a = np.bincount(np.searchsorted(edges, numeric_column, side="left"), minlength=4)
    codes = last[:, 1].astype(int)
    expected_c = [int((codes == 0).sum()), int((codes == 1).sum()), int(((codes < 0) | (codes > 1)).sum())]
    counts = window.counts()
    assert layout.live_counts(counts, 0).tolist() == expected_a.tolist()
    assert layout.live_counts(counts, 1).tolist() == expected_c
    assert window.rows == min(size, sum(batches))


# --------------------------------------------------------------------------- decisions


def _report_for(
    live: npt.NDArray[np.float64],
    profile: ReferenceProfile,
    method: DriftMethod,
    *,
    min_samples: int = 200,
    drift_share: float = 0.5,
) -> DriftReport:
    layout = BinLayout.from_profile(profile.features)
    window = DriftWindow(layout, live.shape[0])
    window.add(live)
    return evaluate_drift(
        layout,
        window.counts(),
        window.rows,
        method=method,
        reference_rows=profile.rows,
        min_samples=min_samples,
        drift_share=drift_share,
    )


METHODS = [
    pytest.param("PSI", id="psi"),
    pytest.param("KS", id="ks"),
    pytest.param("ChiSquare", id="chisquare"),
]


@pytest.mark.parametrize("method", METHODS)
def test_no_drift_on_reference_distribution(method: DriftMethod) -> None:
    rng = np.random.default_rng(7)
    profile = build_profile(rng.normal(size=(5000, 6)))
    report = _report_for(rng.normal(size=(1000, 6)), profile, method)
    assert report.state == "ok"
    assert report.dataset_drift is False
    assert report.share is not None and report.share <= 1 / 6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "shift",
    [
        pytest.param(lambda x: x + 0.5, id="mean-shift"),
        pytest.param(lambda x: x * 2.0, id="scale-change"),
    ],
)
def test_drift_on_shifted_data(method: DriftMethod, shift: Callable[[FloatArray], FloatArray]) -> None:
    rng = np.random.default_rng(11)
    profile = build_profile(rng.normal(size=(5000, 4)))
    live = shift(rng.normal(size=(1000, 4)))
    report = _report_for(live, profile, method)
    assert report.state == "drift"
    assert report.share == 1.0
    assert report.drifted_features == ["x0", "x1", "x2", "x3"]


@pytest.mark.parametrize("method", METHODS)
def test_new_category_is_drift(method: DriftMethod) -> None:
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 3, size=(5000, 1)).astype(float)
    profile = build_profile(reference, categorical={0: ["a", "b", "c"]})
    live = rng.integers(0, 3, size=(1000, 1)).astype(float)
    live[:300, 0] = -1.0  # a category the training data never had
    report = _report_for(live, profile, method)
    feature = report.features[0]
    assert feature.method == ("PSI" if method == "PSI" else "ChiSquare")  # KS needs order
    assert feature.drifted is True
    assert report.state == "drift"


def test_insufficient_data_below_min_samples() -> None:
    rng = np.random.default_rng(1)
    profile = build_profile(rng.normal(size=(1000, 2)))
    report = _report_for(rng.normal(size=(50, 2)) + 10, profile, "PSI", min_samples=100)
    assert report.state == "insufficient_data"
    assert report.dataset_drift is None
    assert report.share is None


def test_feature_with_too_many_missing_values_is_left_out() -> None:
    rng = np.random.default_rng(2)
    profile = build_profile(rng.normal(size=(1000, 2)))
    live = rng.normal(size=(300, 2))
    live[:, 1] += 5  # drifted, but mostly missing
    live[:250, 1] = np.nan
    report = _report_for(live, profile, "PSI", min_samples=100)
    second = report.features[1]
    assert (second.drifted, second.samples, second.missing) == (None, 50, 250)
    assert report.share == 0.0
    assert report.state == "ok"


@pytest.mark.parametrize(
    ("drifted", "features", "drift_share", "expected"),
    [
        pytest.param(1, 4, 0.5, False, id="quarter-below-half"),
        pytest.param(2, 4, 0.5, True, id="half-reaches-half"),
        pytest.param(1, 4, 0.25, True, id="quarter-reaches-quarter"),
    ],
)
def test_dataset_drift_share_threshold(
    drifted: int, features: int, drift_share: float, expected: bool
) -> None:
    rng = np.random.default_rng(5)
    profile = build_profile(rng.normal(size=(5000, features)))
    live = rng.normal(size=(1000, features))
    live[:, :drifted] += 3
    report = _report_for(live, profile, "PSI", drift_share=drift_share)
    assert report.share == drifted / features
    assert report.dataset_drift is expected


# --------------------------------------------------------------------------- properties

counts_strategy = hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(0, 10_000))


@settings(max_examples=200, deadline=None)
@given(reference=counts_strategy, live=counts_strategy)
def test_psi_is_non_negative(reference: npt.NDArray[np.int64], live: npt.NDArray[np.int64]) -> None:
    size = min(reference.size, live.size)
    assert psi(reference[:size] + 1, live[:size]) >= 0.0


@settings(max_examples=200, deadline=None)
@given(reference=counts_strategy, scale=st.integers(1, 1000))
def test_psi_of_identical_distributions_is_zero(reference: npt.NDArray[np.int64], scale: int) -> None:
    reference = reference + 1
    assert psi(reference, reference * scale) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    data=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 60), st.integers(1, 4)), elements=st.floats(-1e6, 1e6)
    ),
    method=st.sampled_from(["PSI", "KS", "ChiSquare"]),
    min_samples=st.integers(1, 30),
)
def test_share_is_a_ratio(data: FloatArray, method: DriftMethod, min_samples: int) -> None:
    profile = ReferenceProfile(
        task="regression",
        target="y",
        rows=100,
        features=[numeric(f"x{j}", [-1.0, 0.0, 1.0], [0.2, 0.3, 0.3, 0.2]) for j in range(data.shape[1])],
    )
    report = _report_for(data, profile, method, min_samples=min_samples)
    if report.share is None:
        assert report.state == "insufficient_data"
    else:
        assert 0.0 <= report.share <= 1.0
        for feature in report.features:
            assert feature.score is None or feature.score >= 0.0
            assert feature.p_value is None or 0.0 <= feature.p_value <= 1.0
