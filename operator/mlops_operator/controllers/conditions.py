"""Status conditions as the Kubernetes API conventions define them (pure functions).

``lastTransitionTime`` changes only when a condition's status flips; reason and message may
change without moving it. That is what makes "how long has this been not Ready" answerable.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


def now_iso(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: Status,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """A new list of conditions with ``type_`` set; the others are kept as they are."""
    result = [dict(condition) for condition in conditions or []]
    existing = next((condition for condition in result if condition.get("type") == type_), None)
    updated: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now_iso(now),
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    if existing is None:
        result.append(updated)
    else:
        if existing.get("status") == status and existing.get("lastTransitionTime"):
            updated["lastTransitionTime"] = existing["lastTransitionTime"]
        existing.clear()
        existing.update(updated)
    return result


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((condition for condition in conditions or [] if condition.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.get("status") == "True"
