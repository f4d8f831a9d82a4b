"""The drift tests keep their stated error rates (docs/reliability.md, "Drift statistics").

One calibration run (``tests/drift_calibration.py``) over generated windows: training sets of
150 to 100,000 rows, windows of 200, 500 and 1,000 rows, a continuous, a discrete and a
categorical feature, undrifted and drifted at three severities, scored by the server's code
and by scipy's exact tests on the same data.

Error rates are asserted with binomial confidence bounds, not point values: a cell fails the
false-alarm promise only when its one-sided 99.9% Clopper-Pearson *lower* bound is above the
nominal 5% (the data show, beyond reasonable doubt, more false alarms than promised), and the
false-alarm rate pooled over features and training-set sizes must have its 99% *upper* bound
under 6%. The former one-sample chi-square fails the first check, so the check has teeth.
"""

from __future__ import annotations

import pytest

from tests.drift_calibration import (
    ALPHA,
    GENERATORS,
    REFERENCE_SIZES,
    WINDOW_SIZES,
    Calibration,
    calibrate,
    lower_bound,
    upper_bound,
)

#: Repetitions per cell: 1,000 undrifted windows per (feature, training size, window size).
REPETITIONS = 1_000
TESTS = ("ChiSquare", "KS")


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return calibrate(REPETITIONS)


def _numeric(feature: str) -> bool:
    return next(g for g in GENERATORS if g.name == feature).kind == "numeric"


def _methods(feature: str) -> tuple[str, ...]:
    return TESTS if _numeric(feature) else ("ChiSquare",)


@pytest.mark.parametrize("window", WINDOW_SIZES)
def test_false_alarms_are_at_most_nominal_per_feature_and_window(
    calibration: Calibration, window: int
) -> None:
    too_many = []
    for generator in GENERATORS:
        for m in REFERENCE_SIZES:
            cell = calibration.cell(generator.name, m, window, 0)
            assert cell.trials >= REPETITIONS
            for method in _methods(generator.name):
                alarms = cell.alarms[method]
                if lower_bound(alarms, cell.trials, 0.999) > ALPHA:
                    too_many.append(f"{method} {generator.name} m={m}: {alarms}/{cell.trials}")
    assert not too_many, too_many


@pytest.mark.parametrize("method", TESTS)
@pytest.mark.parametrize("window", WINDOW_SIZES)
def test_pooled_false_alarm_rate_has_upper_bound_under_six_percent(
    calibration: Calibration, method: str, window: int
) -> None:
    cells = [
        calibration.cell(g.name, m, window, 0)
        for g in GENERATORS
        for m in REFERENCE_SIZES
        if method in _methods(g.name)
    ]
    alarms = sum(c.alarms[method] for c in cells)
    trials = sum(c.trials for c in cells)
    assert upper_bound(alarms, trials, 0.99) < 0.06, f"{alarms}/{trials}"


def test_the_former_one_sample_chi_square_breaks_the_promise(calibration: Calibration) -> None:
    # Reference proportions taken as exact: false alarms grow with the window.
    cell = calibration.cell("normal", 1_000, 1_000, 0)
    alarms = cell.alarms["ChiSquare one-sample (before)"]
    assert lower_bound(alarms, cell.trials, 0.999) > 2 * ALPHA


def test_psi_rarely_alarms_on_undrifted_data(calibration: Calibration) -> None:
    # PSI is an effect size with no nominal level; its noise stays far below 0.2 with 10 bins.
    for generator in GENERATORS:
        for m in REFERENCE_SIZES:
            for window in WINDOW_SIZES:
                cell = calibration.cell(generator.name, m, window, 0)
                assert lower_bound(cell.alarms["PSI"], cell.trials, 0.999) <= ALPHA


def test_binned_chi_square_is_scipy_chi2_contingency(calibration: Calibration) -> None:
    checked = sum(c.chi2_checked for c in calibration.cells.values())
    assert checked >= 100
    assert max(c.chi2_max_difference for c in calibration.cells.values()) < 1e-9


def test_binned_ks_is_within_its_tolerance_and_never_rejects_alone(calibration: Calibration) -> None:
    numeric = [c for (feature, *_), c in calibration.cells.items() if _numeric(feature)]
    assert all(c.ks_gap_bound_violations == 0 for c in numeric)
    # D is never above the exact statistic, so the binned test rejects only where scipy does.
    assert all(c.ks_binned_only == 0 for c in numeric)
    gaps = sorted(
        g for (feature, *_), c in calibration.cells.items() if feature == "normal" for g in c.ks_gap
    )
    assert gaps[len(gaps) // 2] < 0.005  # median, percentile edges
    assert gaps[int(0.99 * len(gaps))] < 0.012
    poisson = [g for (feature, *_), c in calibration.cells.items() if feature == "poisson" for g in c.ks_gap]
    assert max(abs(g) for g in poisson) < 1e-12  # value bins: exact


@pytest.mark.parametrize("feature", [g.name for g in GENERATORS if g.kind == "numeric"])
def test_binned_ks_detects_nearly_what_the_exact_test_detects(calibration: Calibration, feature: str) -> None:
    for (name, m, window, level), cell in calibration.cells.items():
        if name != feature or level == 0:
            continue
        # Paired on the same windows; measured shortfall at most 6.5 points (docs/reliability.md).
        assert cell.rate("KS") >= cell.rate("KS exact") - 0.10, (m, window, level)


@pytest.mark.parametrize("feature", [g.name for g in GENERATORS])
def test_strong_drift_is_detected_by_the_tests(calibration: Calibration, feature: str) -> None:
    strongest = max(level for (name, _, _, level) in calibration.cells if name == feature)
    for window in WINDOW_SIZES:
        cell = next(
            c
            for (name, _, w, level), c in calibration.cells.items()
            if (name, w, level) == (feature, window, strongest)
        )
        for method in _methods(feature):
            assert cell.rate(method) >= 0.99, (method, window)
