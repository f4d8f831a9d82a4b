"""Validation gates and the model card of a ModelVersion (pure)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.api.shared_fields import ValidationGate


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def evaluate_gates(
    gates: list[ValidationGate], metrics: dict[str, str], production: dict[str, str] | None
) -> list[dict[str, Any]]:
    """One result per gate (wire form of GateResult). ``production`` is None when no version holds it.

    A gate against production passes when there is nothing to compare with (the first model
    of a name, or this version *is* production): "at least as good as nothing" is true.
    """
    results = []
    for gate in gates:
        value = _decimal(metrics.get(gate.metric))
        result: dict[str, Any] = {"metric": gate.metric, "passed": True}
        checks: list[str] = []
        failures: list[str] = []
        if value is None:
            result.update(passed=False, message=f"metric {gate.metric} was not recorded for this version")
            results.append(result)
            continue
        result["value"] = str(value)
        if gate.min is not None:
            checks.append(f">= {gate.min}")
            if value < Decimal(gate.min):
                failures.append(f"{gate.metric} {value} is below the minimum {gate.min}")
        if gate.max is not None:
            checks.append(f"<= {gate.max}")
            if value > Decimal(gate.max):
                failures.append(f"{gate.metric} {value} is above the maximum {gate.max}")
        if gate.min_delta_vs_production is not None:
            delta = Decimal(gate.min_delta_vs_production)
            checks.append(f">= production {'+' if delta >= 0 else ''}{delta}")
            baseline = _decimal((production or {}).get(gate.metric))
            if baseline is None:
                result["message"] = "no production version to compare with"
            elif value - baseline < delta:
                failures.append(
                    f"{gate.metric} {value} is {value - baseline:+} vs production {baseline}, needs {delta:+}"
                )
            else:
                result["message"] = f"production has {baseline}"
        result["threshold"] = " and ".join(checks)
        if failures:
            result.update(passed=False, message="; ".join(failures))
        results.append(result)
    return results


def render_model_card(
    spec: ModelVersionSpec, version: str, metrics: dict[str, str], gate_results: list[dict[str, Any]]
) -> str:
    """The model card as Markdown: it becomes the MLflow version's description."""
    card = spec.model_card
    lines = [f"# {spec.model.name} v{version}", ""]
    if card and card.description:
        lines += [card.description, ""]
    if card and card.intended_use:
        lines += ["## Intended use", "", card.intended_use, ""]
    if card and card.limitations:
        lines += ["## Limitations", "", card.limitations, ""]
    if card and card.owners:
        lines += ["## Owners", "", ", ".join(card.owners), ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in sorted(metrics.items())]
        lines.append("")
    if gate_results:
        lines += [
            "## Validation gates",
            "",
            "| metric | requirement | value | result |",
            "| --- | --- | --- | --- |",
        ]
        for result in gate_results:
            verdict = "pass" if result["passed"] else f"FAIL: {result.get('message', '')}"
            lines.append(
                f"| {result['metric']} | {result.get('threshold', '')} | {result.get('value', '-')} | {verdict} |"
            )
        lines.append("")
    lineage = spec.lineage
    if lineage:
        lines += ["## Lineage", ""]
        if lineage.training_job:
            lines.append(f"- Training job: {lineage.training_job} (run {lineage.run_name or '-'})")
        if lineage.dataset:
            digest = f" (sha256 {lineage.dataset.sha256[:12]})" if lineage.dataset.sha256 else ""
            lines.append(f"- Dataset: {lineage.dataset.uri}{digest}")
        if lineage.estimator:
            lines.append(f"- Estimator: {lineage.estimator}")
        if lineage.params:
            params = ", ".join(f"{key}={value}" for key, value in sorted(lineage.params.items()))
            lines.append(f"- Parameters: {params}")
        if lineage.code_version or lineage.image:
            lines.append(f"- Code: {lineage.code_version or '-'}, image {lineage.image or '-'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
