"""Drift statistics, binning and the sliding window (mlops_operator.monitoring.drift)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError
from scipy import stats

from mlops_operator.monitoring.accuracy import Task
from mlops_operator.monitoring.drift import (
    COARSE_BINS,
    DEFAULT_THRESHOLDS,
    MIN_COARSE_COUNT,
    MIN_COARSE_SHARE,
    PSI_EPSILON,
    BinLayout,
    DriftMethod,
    DriftReport,
    DriftWindow,
    FeatureReference,
    FloatArray,
    chi_square,
    chi_square_two_sample,
    chi_square_two_sample_batch,
    coarse_groups,
    evaluate_drift,
    evaluate_feature,
    ks_binned,
    ks_critical_value,
    ks_tolerance,
    psi,
)
from mlops_operator.monitoring.reference_profile import FeatureProfile, ReferenceProfile
from mlops_operator.trainer.profile_builder import numeric_bins
from tests.drift_calibration import exact_ks_statistic


def build_profile(
    reference: npt.NDArray[np.float64],
    *,
    categorical: dict[int, Sequence[str]] | None = None,
    task: Task = "classification",
    classes: Sequence[str] | None = None,
    class_frequencies: Sequence[float] | None = None,
) -> ReferenceProfile:
    """A profile as the trainer builds it (``numeric_bins``); categorical columns hold codes."""
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
                    category_counts=counts.tolist(),
                    category_frequencies=(counts / counts.sum()).tolist(),
                    unlisted_count=0,
                )
            )
            continue
        binning, edges, bin_counts = numeric_bins(column)
        features.append(
            FeatureProfile(
                name=f"x{j}",
                kind="numeric",
                dtype="float64",
                binning=binning,
                bin_edges=edges,
                bin_counts=bin_counts,
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


def numeric(name: str, edges: Sequence[float], counts: Sequence[int]) -> FeatureProfile:
    return FeatureProfile(
        name=name, kind="numeric", dtype="float64", bin_edges=list(edges), bin_counts=list(counts)
    )


def categorical(
    name: str, categories: Sequence[str], counts: Sequence[int], unlisted: int = 0
) -> FeatureProfile:
    return FeatureProfile(
        name=name,
        kind="categorical",
        dtype="object",
        categories=list(categories),
        category_counts=list(counts),
        unlisted_count=unlisted,
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
def test_one_sample_chi_square_matches_scipy(reference: list[float], observed: list[int]) -> None:
    # Still used for the predicted-class distribution (accuracy.py).
    statistic, p_value, dof = chi_square(reference, observed)
    expected = stats.chisquare(observed, f_exp=np.asarray(reference) * sum(observed))
    assert statistic == pytest.approx(expected.statistic, rel=1e-12, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert dof == len(reference) - 1


def test_one_sample_chi_square_unseen_class_hand_computed() -> None:
    # reference has no mass in the unseen bucket: its expected count is n * epsilon.
    statistic, p_value, dof = chi_square([0.5, 0.5, 0.0], [40, 50, 10])
    unseen_expected = 100 * PSI_EPSILON
    assert statistic == pytest.approx((40 - 50) ** 2 / 50 + 0 + (10 - unseen_expected) ** 2 / unseen_expected)
    assert dof == 2
    assert p_value < 1e-100


def test_one_sample_chi_square_ignores_empty_unseen_bucket() -> None:
    assert chi_square([0.5, 0.5, 0.0], [50, 50, 0]) == (0.0, 1.0, 1)


@settings(max_examples=200, deadline=None)
@given(
    table=hnp.arrays(np.int64, st.tuples(st.just(2), st.integers(2, 12)), elements=st.integers(0, 2_000)),
)
def test_two_sample_chi_square_matches_chi2_contingency(table: npt.NDArray[np.int64]) -> None:
    statistic, p_value, dof = chi_square_two_sample(table[0], table[1])
    kept = table[:, table.sum(axis=0) > 0]
    if table[0].sum() == 0 or table[1].sum() == 0 or kept.shape[1] < 2:
        assert (statistic, p_value, dof) == (0.0, 1.0, 0)
        return
    expected = stats.chi2_contingency(kept, correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-7, abs=1e-300)
    assert dof == expected.dof


def test_two_sample_chi_square_batch_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(4)
    reference = rng.integers(0, 50, size=(20, 6))
    live = rng.integers(0, 50, size=(20, 6))
    live[:, -2:] = 0  # zero padding changes nothing
    reference[:, -2:] = 0
    statistics, p_values, dofs = chi_square_two_sample_batch(reference, live)
    for i in range(20):
        assert (statistics[i], p_values[i], dofs[i]) == pytest.approx(
            chi_square_two_sample(reference[i, :4], live[i, :4])
        )


def test_unseen_category_is_strong_evidence_against_a_large_reference() -> None:
    # 5,000 training values never had the category; 10 of 1,000 live values do.
    statistic, p_value, dof = chi_square_two_sample([2500, 2500, 0], [495, 495, 10])
    assert dof == 2 and statistic > 45 and p_value < 1e-9


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
    d, p_value = ks_binned(reference_counts, live_counts)
    expected = stats.ks_2samp(reference, live, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)


def test_ks_binned_hand_computed_and_critical_value() -> None:
    # CDFs at the edges: reference 0.5, 0.75; live 0.25, 0.5 -> D = 0.25; n = m = 100 -> size 50.
    d, p_value = ks_binned([50, 25, 25], [25, 25, 50])
    assert d == pytest.approx(0.25)
    assert p_value == pytest.approx(stats.kstwo.sf(0.25, 50))
    critical = ks_critical_value(0.05, 100, 100)
    assert critical == pytest.approx(stats.kstwo.isf(0.05, 50))
    assert (d > critical) == (p_value < 0.05)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    reference_rows=st.integers(150, 5_000),
    live_rows=st.integers(50, 1_000),
    shift=st.floats(-1.0, 1.0),
    scale=st.floats(0.5, 2.0),
)
def test_ks_on_percentile_edges_is_within_its_tolerance_of_the_exact_statistic(
    seed: int, reference_rows: int, live_rows: int, shift: float, scale: float
) -> None:
    """``D <= D_exact <= D + ks_tolerance``: the binned statistic is never above the exact one."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=reference_rows)
    live = rng.normal(loc=shift, scale=scale, size=live_rows)
    binning, edges, counts = numeric_bins(reference)
    assert binning == "quantiles" and len(edges) == 99
    live_counts = np.bincount(np.searchsorted(edges, live, side="left"), minlength=len(counts))
    d, _ = ks_binned(counts, live_counts)
    exact = stats.ks_2samp(reference, live, method="asymp").statistic
    assert exact_ks_statistic(np.sort(reference), live) == pytest.approx(exact, abs=1e-12)
    tolerance = float(ks_tolerance(counts, live_counts))
    assert d <= exact + 1e-12
    assert exact <= d + tolerance + 1e-12
    if shift == 0.0 and scale == 1.0:
        assert tolerance < 0.03  # about 1% per percentile bin, plus the live sample's noise


def test_ks_on_value_bins_is_exact() -> None:
    rng = np.random.default_rng(8)
    reference = rng.poisson(3.0, size=2_000).astype(float)
    live = rng.poisson(3.3, size=500).astype(float)
    binning, edges, counts = numeric_bins(reference)
    assert binning == "values"
    live_counts = np.bincount(np.searchsorted(edges, live, side="left"), minlength=len(counts))
    d, p_value = ks_binned(counts, live_counts)
    expected = stats.ks_2samp(reference, live, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


# --------------------------------------------------------------------------- profiles and coarse bins


def test_poisson_feature_is_binned_by_value_with_empty_outer_bins() -> None:
    rng = np.random.default_rng(9)
    values = rng.poisson(3.0, size=10_000).astype(float)
    binning, edges, counts = numeric_bins(values)
    distinct, expected = np.unique(values, return_counts=True)
    assert binning == "values"
    assert edges[1:] == distinct.tolist() and edges[0] < distinct[0]
    assert counts == [0, *expected.tolist(), 0]
    # The server's binning puts each value in its own bin; below / above the training range apart.
    slots = np.searchsorted(edges, [distinct[0] - 1, *distinct.tolist(), distinct[-1] + 1], side="left")
    assert slots.tolist() == list(range(len(counts)))


def test_coarse_bins_keep_frequent_values_apart_and_merge_rare_ones() -> None:
    # Decile edges used to put a Poisson(3) feature's 0 (5%) and 1 (15%) in one bin.
    rng = np.random.default_rng(10)
    binning, edges, counts = numeric_bins(rng.poisson(3.0, size=10_000).astype(float))
    groups = coarse_groups("numeric", binning, counts)
    shares = np.asarray(counts) / sum(counts)
    value_of_slot = [None, *edges[1:], None]
    frequent = [slot for slot in range(1, len(counts) - 1) if shares[slot] >= MIN_COARSE_SHARE]
    assert len({groups[slot] for slot in frequent}) == len(frequent)  # one group each
    assert value_of_slot[1] == 0.0 and groups[1] != groups[2]  # 0 and 1 apart
    # Below / above the training range join their neighbours (empty by selection, not evidence).
    assert groups[0] == groups[1] and groups[-1] == groups[-2]
    merged = FeatureReference("p", "numeric", np.asarray(counts), groups).coarse(counts)
    assert merged.sum() == sum(counts)
    assert all(share >= MIN_COARSE_SHARE for share in merged / merged.sum())


def test_constant_feature_keeps_values_outside_its_value_as_drift() -> None:
    binning, edges, counts = numeric_bins(np.full(500, 3.0))
    assert coarse_groups("numeric", binning, counts).tolist() == [0, 1, 2]
    reference = FeatureReference(
        "c", "numeric", np.asarray(counts), coarse_groups("numeric", binning, counts)
    )
    live = np.bincount(np.searchsorted(edges, [3.0] * 190 + [4.0] * 10, side="left"), minlength=3)
    for method in ("PSI", "ChiSquare"):
        result = evaluate_feature(
            reference, live, 0, method=method, threshold=DEFAULT_THRESHOLDS[method], min_samples=100
        )
        assert result.drifted is True, method
    # KS measures it exactly (5% of the values moved) but needs more than 10 values in 200.
    ks = evaluate_feature(reference, live, 0, method="KS", threshold=0.05, min_samples=100)
    assert ks.score == pytest.approx(0.05)


def test_percentile_bins_merge_into_deciles() -> None:
    rng = np.random.default_rng(11)
    binning, _, counts = numeric_bins(rng.normal(size=20_000))
    groups = coarse_groups("numeric", binning, counts)
    merged = np.bincount(groups, weights=counts) / sum(counts)
    assert merged == pytest.approx([0.1] * COARSE_BINS, abs=0.002)


@pytest.mark.parametrize(("rows", "bins"), [(150, 5), (240, 8), (300, 10), (100_000, 10)])
def test_small_training_sets_get_fewer_coarse_bins(rows: int, bins: int) -> None:
    binning, _, counts = numeric_bins(np.random.default_rng(rows).normal(size=rows))
    groups = coarse_groups("numeric", binning, counts)
    assert int(groups.max()) + 1 == bins
    assert np.bincount(groups, weights=counts).min() >= MIN_COARSE_COUNT - 1


def test_rare_categories_share_one_coarse_bin() -> None:
    groups = coarse_groups("categorical", "quantiles", [500, 300, 150, 10, 10, 30, 0])
    # frequent: 500, 300, 150, 30 (3% of 1,000); rare: the two 1% ones; then "not listed".
    assert groups.tolist() == [0, 1, 2, 4, 4, 3, 5]


def test_profile_of_format_1_loads_with_its_counts_rebuilt() -> None:
    old = {
        "format_version": 1,
        "task": "regression",
        "target": "y",
        "rows": 200,
        "features": [
            {
                "name": "x",
                "kind": "numeric",
                "dtype": "float64",
                "null_fraction": 0.1,
                "bin_edges": [0.0, 1.0],
                "bin_frequencies": [50 / 180, 70 / 180, 60 / 180],
            },
            {
                "name": "c",
                "kind": "categorical",
                "dtype": "object",
                "categories": ["a", "b"],
                "category_frequencies": [0.5, 0.3],
            },
        ],
    }
    profile = ReferenceProfile.model_validate_json(json.dumps(old))
    assert profile.features[0].reference_counts == [50, 70, 60]
    assert profile.features[1].reference_counts == [100, 60, 40]  # 20% of 200 not listed
    layout = BinLayout.from_profile(profile.features)
    assert [r.rows for r in layout.references] == [180, 200]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"format_version": 3}, "format 3 is not supported", id="newer-format"),
        pytest.param({"rows": 0}, "cannot be rebuilt", id="no-counts-no-rows"),
    ],
)
def test_profile_that_cannot_be_read_is_refused_clearly(change: dict[str, int], message: str) -> None:
    data = {
        "format_version": 1,
        "task": "regression",
        "target": "y",
        "rows": 100,
        "features": [
            {
                "name": "x",
                "kind": "numeric",
                "dtype": "float64",
                "bin_edges": [0.0],
                "bin_frequencies": [0.5, 0.5],
            }
        ],
    } | change
    with pytest.raises(ValidationError, match=message):
        ReferenceProfile.model_validate(data)


def test_profile_of_format_2_round_trips() -> None:
    rng = np.random.default_rng(12)
    profile = build_profile(np.column_stack([rng.normal(size=500), rng.poisson(2.0, size=500)]))
    again = ReferenceProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    assert [f.binning for f in again.features] == ["quantiles", "values"]


# --------------------------------------------------------------------------- binning and window


def _layout() -> BinLayout:
    return BinLayout.from_profile(
        [
            numeric("a", [0.0, 1.0, 2.0], [25, 25, 25, 25]),
            categorical("colour", ["red", "green", "blue"], [50, 30, 20]),
            numeric("b", [-5.0], [50, 50]),
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
    layout = BinLayout.from_profile([numeric("a", [0.0], [50, 50])])
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
    layout = BinLayout.from_profile([numeric("a", edges, [25] * 4), categorical("c", ["p", "q"], [50, 50])])
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
        features=[numeric(f"x{j}", [-1.0, 0.0, 1.0], [20, 30, 30, 20]) for j in range(data.shape[1])],
    )
    report = _report_for(data, profile, method, min_samples=min_samples)
    if report.share is None:
        assert report.state == "insufficient_data"
    else:
        assert 0.0 <= report.share <= 1.0
        for feature in report.features:
            assert feature.score is None or feature.score >= 0.0
            assert feature.p_value is None or 0.0 <= feature.p_value <= 1.0
