"""Reconciliation of a modelversion: the decisions; kopf wiring is in handlers.py."""

from __future__ import annotations

from typing import Any

from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.conditions import set_condition


def reconcile(ctx: Context[ModelVersionSpec]) -> dict[str, Any]:
    """The new status of the object (children converged through ``ctx.kube``)."""
    status = dict(ctx.status)
    status["conditions"] = set_condition(
        status.get("conditions"), "Ready", "True", "Accepted", "spec is valid", generation=ctx.generation
    )
    return status
