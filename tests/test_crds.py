"""The CRDs in crds/ are generated from the models, structural, bounded and complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.api import crdgen

ROOT = Path(__file__).resolve().parent.parent
CRDS = {name: yaml.safe_load(text) for name, text in crdgen.generate().items()}


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(CRDS))
def test_crds_on_disk_are_what_the_models_generate(name: str) -> None:
    on_disk = (ROOT / "crds" / name).read_text()
    assert on_disk == crdgen.generate()[name], f"crds/{name} is stale: run `make crds`"


def test_crds_command_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlops_operator.cli import main

    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 0
    victim = tmp_path / "mlops.dev_modelversions.yaml"
    victim.write_text(victim.read_text().replace("maxLength: 128", "maxLength: 129", 1))
    capsys.readouterr()
    assert main(["crds", "--output-dir", str(tmp_path), "--check"]) == 1
    assert "mlops.dev_modelversions.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schema_is_structural_and_bounded(name: str) -> None:
    problems = []
    for path, node in _walk(_schema(CRDS[name]), ""):
        if path in (".metadata", ".apiVersion", ".kind"):  # the API server's own, as in every CRD
            continue
        for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "nullable", "title"):
            if forbidden in node:
                problems.append(f"{path}: has {forbidden}")
        if node.get("additionalProperties") is False or node.get("additionalProperties") is True:
            problems.append(f"{path}: additionalProperties must be a schema (or absent)")
        if "type" not in node:
            problems.append(f"{path}: no type")
        kind = node.get("type")
        if kind == "string" and not (
            {"maxLength", "enum"} & node.keys() or node.get("format") == "date-time"
        ):
            problems.append(f"{path}: unbounded string")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: unbounded list")
        if (
            kind == "object"
            and isinstance(node.get("additionalProperties"), dict)
            and "maxProperties" not in node
        ):
            problems.append(f"{path}: unbounded map")
    assert problems == []


@pytest.mark.parametrize(
    ("name", "short", "scale"),
    [
        ("mlops.dev_trainingjobs.yaml", "tj", False),
        ("mlops.dev_modelversions.yaml", "mv", False),
        ("mlops.dev_inferenceservices.yaml", "mlisvc", True),
    ],
    ids=["trainingjob", "modelversion", "inferenceservice"],
)
def test_names_subresources_and_columns(name: str, short: str, scale: bool) -> None:
    crd = CRDS[name]
    names = crd["spec"]["names"]
    assert names["shortNames"] == [short]
    assert "isvc" not in names["shortNames"]  # KServe's
    assert names["categories"] == ["mlops"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert "status" in version["subresources"]
    assert ("scale" in version["subresources"]) is scale
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert {"Ready", "Reason", "Model", "Age"} <= columns.keys()
    assert any(column.get("priority") == 1 for column in columns.values()), "no -o wide details"
    assert all(column["jsonPath"].startswith(".") for column in columns.values())


def test_every_cel_rule_has_a_message() -> None:
    checked = {name: 0 for name in CRDS}
    for name, crd in CRDS.items():
        for path, node in _walk(_schema(crd), ""):
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["rule"] and rule["message"], f"{name}{path}"
                checked[name] += 1
    # Every kind has cross-field rules: none found means the walk missed them, not that all is well.
    assert all(checked.values()), f"no CEL rule found in {[n for n, count in checked.items() if not count]}"


def test_api_reference_is_generated_from_the_models() -> None:
    from mlops_operator.api import docgen

    text = docgen.generate()
    assert (ROOT / "docs" / "api-reference.md").read_text() == text, (
        "docs/api-reference.md is stale: run `make crds`"
    )
    for field in (
        "`rollout.analysis.stepWeights`",
        "`estimator.search.maxTrials`",
        "`model.alias`",
        "`conditions[].reason`",
    ):
        assert field in text
