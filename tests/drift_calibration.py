"""Error rates of the drift tests, measured over generated windows.

Used by ``tests/test_drift_calibration.py`` (which asserts them) and, run as
``python -m tests.drift_calibration``, prints the tables of docs/reliability.md's "Drift
statistics" section (the same seed, so the same figures).

Each repetition draws a fresh training sample of ``m`` rows (so the reference's own sampling
noise is part of what is measured, as it is in production), builds its profile with the
trainer's code (``numeric_bins``; categorical counts as ``categorical_profile`` keeps them),
lays it out with the server's :class:`BinLayout`, then draws one live window of each size,
undrifted and at each severity, bins it the server's way and scores it with the server's
statistics. The same windows are scored by the exact tests on the raw values: the two-sample
KS statistic over the raw values with scipy's asymptotic p-value (``ks_2samp(method="asymp")``;
:func:`exact_ks_statistic` equals ``ks_2samp``'s statistic, see the unit tests), and
``chi2_contingency`` on the same binned table (our chi-square is that test, so its decisions are
checked for equality). The one-sample chi-square the server used before (reference proportions
taken as exact) is scored too, for comparison.

With 100,000 training rows a fresh reference per repetition costs too much time, so each
reference serves :data:`WINDOWS_PER_LARGE_REFERENCE` repetitions; its own noise is then a
hundredth of the live window's, so the repetitions are as good as independent.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from mlops_operator.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    PSI_EPSILON,
    BinLayout,
    chi_square_two_sample_batch,
    ks_critical_value,
    ks_distance_batch,
    ks_tolerance,
    psi_batch,
)
from mlops_operator.monitoring.reference_profile import FeatureProfile
from mlops_operator.trainer.profile_builder import numeric_bins

FloatArray = npt.NDArray[np.float64]

REFERENCE_SIZES = (150, 1_000, 10_000, 100_000)
WINDOW_SIZES = (200, 500, 1_000)
#: Drifted windows are drawn against training sets of this size only (undrifted ones against all).
DETECTION_REFERENCE = 10_000
LARGE_REFERENCE = 100_000
WINDOWS_PER_LARGE_REFERENCE = 10
ALPHA = DEFAULT_THRESHOLDS["KS"]
PSI_THRESHOLD = DEFAULT_THRESHOLDS["PSI"]
#: Width the fine and coarse count arrays are zero-padded to (empty bins change no statistic).
FINE_WIDTH = 128
COARSE_WIDTH = 32
CATEGORY_SHARES = np.array([0.4, 0.25, 0.2, 0.1, 0.05])


@dataclass(frozen=True)
class Generator:
    """A feature's distribution, and the same distribution drifted at a few severities."""

    name: str
    kind: str
    #: Human-readable severities (index 0 is "no drift").
    severities: tuple[str, ...]
    draw: Callable[[np.random.Generator, int, int], FloatArray]


def _normal(rng: np.random.Generator, size: int, level: int) -> FloatArray:
    return rng.normal(loc=(0.0, 0.1, 0.2, 0.5)[level], size=size)


def _poisson(rng: np.random.Generator, size: int, level: int) -> FloatArray:
    return rng.poisson(3.0 * (1.0, 1.05, 1.1, 1.3)[level], size=size).astype(np.float64)


def _categorical(rng: np.random.Generator, size: int, level: int) -> FloatArray:
    # Drift moves a share of the mass onto the reversed distribution.
    mix = (0.0, 0.05, 0.1, 0.3)[level]
    shares = (1 - mix) * CATEGORY_SHARES + mix * CATEGORY_SHARES[::-1]
    return rng.choice(shares.size, size=size, p=shares).astype(np.float64)


GENERATORS = (
    Generator("normal", "numeric", ("none", "mean +0.1 sd", "mean +0.2 sd", "mean +0.5 sd"), _normal),
    Generator("poisson", "numeric", ("none", "rate +5%", "rate +10%", "rate +30%"), _poisson),
    Generator(
        "categorical",
        "categorical",
        ("none", "5% of mass moved", "10% of mass moved", "30% of mass moved"),
        _categorical,
    ),
)


def exact_ks_statistic(reference_sorted: FloatArray, live: FloatArray) -> float:
    """The two-sample KS statistic over raw values (what ``scipy.stats.ks_2samp`` computes).

    O(n log m): the live ECDF is constant between its distinct values ``u_j``, where the
    reference ECDF runs from ``F(u_j)`` to ``F(u_{j+1}-)``, so the supremum is at one of those.
    """
    m = reference_sorted.size
    values, counts = np.unique(live, return_counts=True)
    live_cdf = np.concatenate([[0.0], np.cumsum(counts) / live.size])
    at = np.concatenate([[0.0], np.searchsorted(reference_sorted, values, side="right") / m])
    before_next = np.concatenate([np.searchsorted(reference_sorted, values, side="left") / m, [1.0]])
    return float(max(np.abs(live_cdf - at).max(), np.abs(live_cdf - before_next).max()))


def _reference_profile(generator: Generator, reference: FloatArray) -> FeatureProfile:
    if generator.kind == "categorical":
        counts = np.bincount(reference.astype(np.int64), minlength=CATEGORY_SHARES.size)
        return FeatureProfile(
            name=generator.name,
            kind="categorical",
            dtype="object",
            categories=[str(c) for c in range(counts.size)],
            category_counts=[int(c) for c in counts],
            unlisted_count=0,
        )
    binning, edges, counts = numeric_bins(reference)
    return FeatureProfile(
        name=generator.name,
        kind="numeric",
        dtype="float64",
        binning=binning,
        bin_edges=edges,
        bin_counts=counts,
    )


@dataclass
class Cell:
    """Counts of one (feature, reference size, window size, severity) over the repetitions."""

    trials: int = 0
    alarms: dict[str, int] = field(default_factory=dict)
    #: Exact minus binned KS distance, per window (numeric features).
    ks_gap: list[float] = field(default_factory=list)
    #: Windows where the gap left ``0 <= gap <= ks_tolerance``.
    ks_gap_bound_violations: int = 0
    #: Windows where binned KS rejected and exact KS did not.
    ks_binned_only: int = 0
    #: Windows scored by scipy's chi2_contingency too, and the largest p-value difference.
    chi2_checked: int = 0
    chi2_max_difference: float = 0.0

    def rate(self, method: str) -> float:
        return self.alarms.get(method, 0) / self.trials if self.trials else math.nan


#: The decision columns: the server's three methods, scipy's exact KS on the raw values, and
#: the one-sample chi-square the server used before this change.
METHODS = ("PSI", "ChiSquare", "KS", "KS exact", "ChiSquare one-sample (before)")
#: Windows per cell also scored with scipy's chi2_contingency (about 3 ms a call).
CHI2_CHECKED_PER_CELL = 2


@dataclass
class Calibration:
    repetitions: int
    seed: int
    cells: dict[tuple[str, int, int, int], Cell]

    def cell(self, feature: str, reference: int, window: int, level: int) -> Cell:
        return self.cells[(feature, reference, window, level)]


@dataclass
class _Batch:
    """One cell's windows, zero-padded to common widths (empty bins change no statistic)."""

    fine_reference: list[npt.NDArray[np.int64]] = field(default_factory=list)
    fine_live: list[npt.NDArray[np.int64]] = field(default_factory=list)
    coarse_reference: list[npt.NDArray[np.int64]] = field(default_factory=list)
    coarse_live: list[npt.NDArray[np.int64]] = field(default_factory=list)
    exact_d: list[float] = field(default_factory=list)


def _stack(rows: list[npt.NDArray[np.int64]], width: int) -> npt.NDArray[np.int64]:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : row.size] = row
    return out


def _one_sample_chi_square_p(reference: npt.NDArray[np.int64], live: npt.NDArray[np.int64]) -> FloatArray:
    """The server's former test: live counts against the reference proportions taken as exact.

    ``drift.chi_square`` (still used for predicted classes) in batch: expected counts
    ``n * max(p, PSI_EPSILON)`` over the bins with reference mass or live counts.
    """
    p = reference / reference.sum(axis=1, keepdims=True)
    n = live.sum(axis=1, keepdims=True)
    taking_part = (p > 0) | (live > 0)
    expected = n * np.maximum(p, PSI_EPSILON)
    statistic = np.where(taking_part, (live - expected) ** 2 / expected, 0.0).sum(axis=1)
    dof = taking_part.sum(axis=1) - 1
    return np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), statistic), 1.0)


def _score(generator: Generator, batch: _Batch, cell: Cell) -> None:
    """Score one cell's windows in batch and add the decisions to ``cell``."""
    trials = len(batch.fine_live)
    coarse_ref = _stack(batch.coarse_reference, COARSE_WIDTH)
    coarse_live = _stack(batch.coarse_live, COARSE_WIDTH)
    decisions: dict[str, npt.NDArray[np.bool_]] = {}
    decisions["PSI"] = psi_batch(coarse_ref, coarse_live) > PSI_THRESHOLD
    _, p_chi, _ = chi_square_two_sample_batch(coarse_ref, coarse_live)
    decisions["ChiSquare"] = p_chi < ALPHA
    for i in range(min(trials, CHI2_CHECKED_PER_CELL)):
        table = np.stack([coarse_ref[i], coarse_live[i]])
        table = table[:, table.sum(axis=0) > 0]
        expected = stats.chi2_contingency(table, correction=False).pvalue if table.shape[1] > 1 else 1.0
        cell.chi2_max_difference = max(cell.chi2_max_difference, abs(float(expected) - float(p_chi[i])))
        cell.chi2_checked += 1
    decisions["ChiSquare one-sample (before)"] = _one_sample_chi_square_p(coarse_ref, coarse_live) < ALPHA
    if generator.kind == "numeric":
        fine_ref = _stack(batch.fine_reference, FINE_WIDTH)
        fine_live = _stack(batch.fine_live, FINE_WIDTH)
        d = ks_distance_batch(fine_ref, fine_live)
        d_exact = np.asarray(batch.exact_d)
        # p < alpha exactly when D exceeds kstwo.isf(alpha, round(n m / (n + m))): one
        # inversion per window size instead of a kstwo.sf per window (milliseconds each).
        critical = np.array(
            [
                ks_critical_value(ALPHA, int(n), int(m))
                for n, m in zip(fine_live.sum(axis=1), fine_ref.sum(axis=1), strict=True)
            ]
        )
        decisions["KS"] = d > critical
        decisions["KS exact"] = d_exact > critical
        gap = d_exact - d
        cell.ks_gap.extend(gap.tolist())
        tolerance = ks_tolerance(fine_ref, fine_live)
        cell.ks_gap_bound_violations += int(np.count_nonzero((gap < -1e-12) | (gap > tolerance + 1e-12)))
        cell.ks_binned_only += int(np.count_nonzero(decisions["KS"] & ~decisions["KS exact"]))
    cell.trials += trials
    for method, flags in decisions.items():
        cell.alarms[method] = cell.alarms.get(method, 0) + int(np.count_nonzero(flags))


def calibrate(
    repetitions: int, seed: int = 2026, reference_sizes: tuple[int, ...] = REFERENCE_SIZES
) -> Calibration:
    """Measure every cell over ``repetitions`` repetitions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int, int, int], Cell] = {}
    for generator in GENERATORS:
        levels = range(len(generator.severities))
        for m in reference_sizes:
            per_reference = WINDOWS_PER_LARGE_REFERENCE if m >= LARGE_REFERENCE else 1
            drifted = levels if m == DETECTION_REFERENCE else range(1)
            batches = {(n, level): _Batch() for n in WINDOW_SIZES for level in drifted}
            for _ in range(math.ceil(repetitions / per_reference)):
                reference = generator.draw(rng, m, 0)
                layout = BinLayout.from_profile([_reference_profile(generator, reference)])
                feature = layout.references[0]
                coarse_reference = feature.coarse(feature.counts)
                reference_sorted = np.sort(reference)
                for _ in range(per_reference):
                    for (n, level), batch in batches.items():
                        live = generator.draw(rng, n, level)
                        counts = np.bincount(layout.bin(live[:, None])[:, 0], minlength=layout.slots)
                        fine = layout.live_counts(counts, 0)
                        batch.fine_reference.append(feature.counts)
                        batch.fine_live.append(fine)
                        batch.coarse_reference.append(coarse_reference)
                        batch.coarse_live.append(feature.coarse(fine))
                        if generator.kind == "numeric":
                            batch.exact_d.append(exact_ks_statistic(reference_sorted, live))
            for (n, level), batch in batches.items():
                cell = cells.setdefault((generator.name, m, n, level), Cell())
                _score(generator, batch, cell)
    return Calibration(repetitions, seed, cells)


def upper_bound(alarms: int, trials: int, confidence: float = 0.99) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a rate."""
    if alarms >= trials:
        return 1.0
    return float(stats.beta.ppf(confidence, alarms + 1, trials - alarms))


def lower_bound(alarms: int, trials: int, confidence: float = 0.99) -> float:
    """One-sided Clopper-Pearson lower confidence bound of a rate."""
    if alarms <= 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, alarms, trials - alarms + 1))


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def render(calibration: Calibration) -> str:
    """Markdown tables: false alarms by reference and window size, detection by severity."""
    lines: list[str] = []
    lines.append(
        f"{calibration.repetitions} repetitions per cell, seed {calibration.seed}; in brackets the "
        "one-sided 99% Clopper-Pearson upper bound of the rate."
    )
    for generator in GENERATORS:
        methods = [m for m in METHODS if generator.kind == "numeric" or not m.startswith("KS")]
        lines += [
            "",
            f"**{generator.name}**: false alarms on undrifted windows (nominal 5% for the tests)",
            "",
        ]
        lines.append("| training rows | window | " + " | ".join(methods) + " |")
        lines.append("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
        sizes = sorted({key[1] for key in calibration.cells if key[0] == generator.name})
        for m in sizes:
            for n in WINDOW_SIZES:
                cell = calibration.cell(generator.name, m, n, 0)
                values = [
                    f"{_percent(cell.rate(method))} ({_percent(upper_bound(cell.alarms.get(method, 0), cell.trials))})"
                    for method in methods
                ]
                lines.append(f"| {m:,} | {n:,} | " + " | ".join(values) + " |")
        lines += [
            "",
            f"**{generator.name}**: detection rate by severity ({DETECTION_REFERENCE:,} training rows)",
            "",
        ]
        lines.append("| severity | window | " + " | ".join(methods) + " |")
        lines.append("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
        for level in range(1, len(generator.severities)):
            for n in WINDOW_SIZES:
                key = (generator.name, DETECTION_REFERENCE, n, level)
                if key not in calibration.cells:
                    continue
                cell = calibration.cells[key]
                values = [_percent(cell.rate(method)) for method in methods]
                lines.append(f"| {generator.severities[level]} | {n:,} | " + " | ".join(values) + " |")
    gaps = [g for key, c in calibration.cells.items() if key[0] == "normal" for g in c.ks_gap]
    if gaps:
        lines += [
            "",
            "KS on percentile edges (normal feature), exact minus binned D over all windows: "
            f"median {np.median(gaps):.4f}, 99th percentile {np.quantile(gaps, 0.99):.4f}, "
            f"max {max(gaps):.4f}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    print(render(calibrate(args.repetitions, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
