"""When a served model has degraded enough to retrain it (pure decision).

The guide's rule, made declarative: retrain when drift shows in ``driftMinPeriods`` of the
last ``driftPeriods`` checks (3 of 5 by default), or when accuracy over the labelled window
falls below ``monitoring.accuracy.min`` (0.85), and not again within ``cooldown`` (1h).
A "check" is one reconciliation that had enough data to say drift or no drift.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mlops_operator.api.inferenceservice import Retraining
from mlops_operator.api.shared_fields import parse_duration


@dataclass(frozen=True)
class RetrainDecision:
    history: list[bool]  # the drift verdicts of the last driftPeriods checks, oldest first
    reason: str | None = None  # why to retrain now; None: not now
    waiting: str | None = None  # why a wanted retrain waits (cooldown)


def decide(
    spec: Retraining,
    history: list[bool],
    *,
    drift: bool | None,
    accuracy_low: bool | None,
    last_retrain: dt.datetime | None,
    now: dt.datetime,
) -> RetrainDecision:
    recent = [*history, drift][-spec.drift_periods :] if drift is not None else history[-spec.drift_periods :]
    reasons = []
    if "Drift" in spec.triggers and sum(recent) >= spec.drift_min_periods:
        reasons.append(f"drift in {sum(recent)} of the last {len(recent)} checks")
    if "AccuracyDrop" in spec.triggers and accuracy_low:
        reasons.append("accuracy below monitoring.accuracy.min")
    if not reasons:
        return RetrainDecision(recent)
    if last_retrain is not None:
        ready_at = last_retrain + dt.timedelta(seconds=parse_duration(spec.cooldown))
        if now < ready_at:
            return RetrainDecision(
                recent, waiting=f"{' and '.join(reasons)}; cooldown until {ready_at.isoformat()}"
            )
    # A retrain starts a fresh count: the next one needs new evidence, not the same checks.
    return RetrainDecision([], reason=" and ".join(reasons))
