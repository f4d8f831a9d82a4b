"""A corpus of bad manifests: each is rejected with the offending field named.

Three enforcers are checked: the API server (the emulated one, with the project's CRDs: a
422 whose causes name the field), the operator's own parse (pydantic schema + the CRD's CEL
rules, evaluated with cel-python), which is what protects a cluster that skips CEL, and the
CEL rules alone for the cross-field cases.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from mlops_operator.api import cel
from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers.invalid_spec import InvalidSpecError, parse_spec
from mlops_operator.sandbox.apiserver import ApiServerThread
from mlops_operator.sandbox.apiserver.patching import merge_patch

ROOT = Path(__file__).resolve().parent.parent
BASES: dict[str, tuple[Path, type[BaseModel]]] = {
    "trainingjob": (ROOT / "examples/iris-trainingjob.yaml", TrainingJobSpec),
    "modelversion": (ROOT / "examples/iris-modelversion.yaml", ModelVersionSpec),
    "inferenceservice": (ROOT / "examples/iris-inferenceservice.yaml", InferenceServiceSpec),
}
CORPUS: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests/data/bad_manifests.yaml").read_text())


def bad_manifest(case: dict[str, Any]) -> tuple[dict[str, Any], type[BaseModel]]:
    path, model = BASES[case["base"]]
    return merge_patch(yaml.safe_load(path.read_text()), case["patch"]), model


def test_corpus_is_large_and_covers_every_kind() -> None:
    assert len(CORPUS) >= 20
    assert {case["base"] for case in CORPUS} == set(BASES)
    assert len({case["id"] for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("base", sorted(BASES))
def test_examples_are_valid(base: str) -> None:
    path, model = BASES[base]
    manifest = yaml.safe_load(path.read_text())
    parse_spec(model, manifest["spec"])


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_operator_rejects_bad_spec_naming_the_field(case: dict[str, Any]) -> None:
    manifest, model = bad_manifest(case)
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(model, manifest["spec"])
    message = str(info.value)
    assert f"{case['field']}:" in message or f"{case['field']}." in message, message


@pytest.mark.parametrize(
    "case",
    [case for case in CORPUS if case.get("cel")],
    ids=[case["id"] for case in CORPUS if case.get("cel")],
)
def test_cross_field_rules_are_cel_rules(case: dict[str, Any]) -> None:
    manifest, model = bad_manifest(case)
    # The per-field schema accepts it: only the CEL rule (or the operator) can catch it.
    model.model_validate(manifest["spec"])
    violations = cel.validate_model(model, manifest["spec"])
    assert [violation.field for violation in violations] == [case["field"]]


def test_transition_rule_keeps_model_name_immutable() -> None:
    manifest, _ = bad_manifest({"base": "modelversion", "patch": {}})
    renamed = merge_patch(manifest, {"spec": {"model": {"name": "other-model"}}})
    violations = cel.validate_model(ModelVersionSpec, renamed["spec"], old=manifest["spec"])
    assert [(v.field, v.message) for v in violations] == [("spec.model.name", "model.name is immutable")]
    assert cel.validate_model(ModelVersionSpec, manifest["spec"], old=manifest["spec"]) == []


@pytest.fixture(scope="module")
def api_url() -> Iterator[tuple[str, str, ssl.SSLContext]]:
    server = ApiServerThread(crds_dir=ROOT / "crds").start()
    try:
        assert server.admin_token is not None
        yield server.url, server.admin_token, server.certificates.client_context()
    finally:
        server.stop()


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_api_server_rejects_bad_manifest_naming_the_field(
    api_url: tuple[str, str, ssl.SSLContext], case: dict[str, Any]
) -> None:
    url, token, tls = api_url
    manifest, _ = bad_manifest(case)
    manifest["metadata"]["name"] = case["id"]
    plural = {
        "trainingjob": "trainingjobs",
        "modelversion": "modelversions",
        "inferenceservice": "inferenceservices",
    }
    response = httpx.post(
        f"{url}/apis/mlops.dev/v1alpha1/namespaces/default/{plural[case['base']]}",
        json=manifest,
        headers={"Authorization": f"Bearer {token}"},
        verify=tls,
        timeout=10,
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["kind"] == "Status" and body["reason"] == "Invalid"
    fields = [cause["field"] for cause in body["details"]["causes"]]
    assert case["field"] in fields, (fields, body["message"])
    assert case["field"] in body["message"]
