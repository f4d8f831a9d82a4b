"""The operator's rollout metrics: what they count, promtool-clean, gone with their resource."""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from mlops_operator.controllers.operator_metrics import (
    REGISTRY,
    forget_rollout_metrics,
    record_rollout_event,
    set_rollout_metrics,
)
from tests import tools


def _samples(metric: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_phase_weight_promotions_and_rollbacks_are_exported() -> None:
    set_rollout_metrics("ml", "iris", "Progressing", 25)
    record_rollout_event("ml", "iris", "Promoted", "Promoted")
    record_rollout_event("ml", "iris", "RolledBack", "AnalysisFailed")
    record_rollout_event("ml", "iris", "RolloutFailed", "CrashLoopBackOff")
    record_rollout_event("ml", "iris", "CanaryStep", "Analysing")  # not a rollback, not a promotion
    phases = _samples("mlops_rollout_phase", namespace="ml", name="iris")
    assert sum(phases.values()) == 1
    assert _samples("mlops_rollout_phase", namespace="ml", name="iris", phase="Progressing")
    assert list(_samples("mlops_rollout_canary_weight", namespace="ml", name="iris").values()) == [0.25]
    assert list(_samples("mlops_rollout_promotions_total", namespace="ml", name="iris").values()) == [1.0]
    rollbacks = _samples("mlops_rollout_rollbacks_total", namespace="ml", name="iris")
    assert {dict(labels)["reason"]: value for labels, value in rollbacks.items()} == {
        "AnalysisFailed": 1.0,
        "CrashLoopBackOff": 1.0,
    }


def test_the_exposition_is_promtool_clean(tmp_path: object) -> None:
    set_rollout_metrics("ml", "lint", "Succeeded", 0)
    record_rollout_event("ml", "lint", "RolledBack", "ManualAbort")
    result = subprocess.run(
        [str(tools.promtool()), "check", "metrics"],
        input=generate_latest(REGISTRY),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_series_are_removed_with_their_resource() -> None:
    set_rollout_metrics("ml", "gone", "RolledBack", 0)
    record_rollout_event("ml", "gone", "Promoted", "Promoted")
    record_rollout_event("ml", "gone", "RolledBack", "AnalysisFailed")
    set_rollout_metrics("ml", "kept", "Idle", 0)
    forget_rollout_metrics("ml", "gone")
    for metric in (
        "mlops_rollout_phase",
        "mlops_rollout_canary_weight",
        "mlops_rollout_promotions_total",
        "mlops_rollout_rollbacks_total",
    ):
        assert _samples(metric, namespace="ml", name="gone") == {}, metric
    assert _samples("mlops_rollout_phase", namespace="ml", name="kept")
