"""From the model servers' monitoring snapshots to the InferenceService's status (pure).

Each replica monitors the traffic it serves (its own sliding window); the operator reads every
ready replica's ``GET /monitoring`` and combines them here, weighting by samples, so the
status speaks for the whole service rather than for whichever pod was asked.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from mlops_operator.api.inferenceservice import Monitoring


def _fmt(value: float) -> str:
    return str(Decimal(f"{value:.4f}").normalize()) if value else "0"


def _weighted(snapshots: list[dict[str, Any]], key: str, weight: str) -> tuple[float | None, int]:
    total = sum(int(s.get(weight) or 0) for s in snapshots if s.get(key) is not None)
    if total == 0:
        return None, 0
    value = sum(float(s[key]) * int(s.get(weight) or 0) for s in snapshots if s.get(key) is not None) / total
    return value, total


#: Drop reasons that mean data was lost (``sampled`` is by design).
_LOSSES = ("writeError", "maxBytes", "backlog")


def summarize_capture(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``status.monitoring.capture`` from the servers' ``capture`` blocks (None: nobody captures)."""
    if not blocks:
        return None
    dropped = sum(int((b.get("dropped") or {}).get(reason) or 0) for b in blocks for reason in _LOSSES)
    states = {str(b.get("state")) for b in blocks}
    state = next((s for s in ("Failing", "Full", "Ok") if s in states), "Unknown")
    summary: dict[str, Any] = {
        "state": state,
        "predictions": sum(int(b.get("predictions") or 0) for b in blocks),
        "labels": sum(int(b.get("labels") or 0) for b in blocks),
        "dropped": dropped,
    }
    failing = [b for b in blocks if b.get("state") == "Failing"]
    if failing:
        summary["message"] = (
            f"{len(failing)} of {len(blocks)} servers cannot write (they keep serving, rows are dropped): "
            f"{failing[0].get('lastError') or 'unknown error'}"
        )[:1024]
    elif state == "Full":
        summary["message"] = "a server reached capture.maxBytesPerDay today: rows are dropped until tomorrow"
    return summary


def summarize(snapshots: list[dict[str, Any]], spec: Monitoring) -> dict[str, Any]:
    """The ``status.monitoring`` block (wire form) and the verdicts behind the conditions.

    Returns ``{"status": {...}, "drift": bool | None, "accuracyLow": bool | None}``: None when
    there is not enough data to say (below ``minSamples`` rows or no labelled outcome).
    """
    samples = sum(int(s.get("window_samples") or 0) for s in snapshots)
    labelled = sum(int(s.get("labelled_samples") or 0) for s in snapshots)
    share, drift_rows = _weighted(snapshots, "drift_share", "window_samples")
    accuracy, _ = _weighted(snapshots, "accuracy", "labelled_samples")
    drifted = sorted({f for s in snapshots for f in s.get("drifted_features") or []})
    status: dict[str, Any] = {"samples": samples, "labelledSamples": labelled}
    drift: bool | None = None
    if share is None or drift_rows < spec.drift.min_samples:
        status["state"] = "InsufficientData" if snapshots else "Unknown"
    else:
        drift = share >= float(spec.drift.drift_share)
        status["state"] = "Drift" if drift else "Ok"
        status["driftShare"] = _fmt(share)
        status["driftedFeatures"] = drifted[:64]
    accuracy_low: bool | None = None
    if accuracy is not None:
        status["accuracy"] = _fmt(accuracy)
        accuracy_low = accuracy < float(spec.accuracy.min)
    capture = summarize_capture([s["capture"] for s in snapshots if isinstance(s.get("capture"), dict)])
    if capture is not None:
        status["capture"] = capture
    return {"status": status, "drift": drift, "accuracyLow": accuracy_low}
