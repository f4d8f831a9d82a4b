"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

The CRDs are never edited by hand: ``mlops-operator crds`` rewrites them and a test fails
when the files in the repository differ from what the models generate. Pydantic emits JSON
Schema (draft 2020-12); the API server wants a *structural* OpenAPI v3 schema, so this
module rewrites it:

- ``$ref``/``$defs`` are inlined (structural schemas cannot reference);
- ``Optional[X]`` (``anyOf: [X, null]``) becomes plain ``X``: absence is how Kubernetes says
  "unset", and ``nullable`` would let ``null`` through to the controller;
- ``dict[str, Any]`` becomes ``type: object`` + ``x-kubernetes-preserve-unknown-fields``
  (free-form estimator parameters), never ``additionalProperties: true``;
- ``title`` is dropped; ``None`` defaults are dropped, other defaults stay so the API server
  fills them in and ``kubectl get -o yaml`` shows what is in effect;
- ``json_schema_extra`` carries ``x-kubernetes-validations`` (CEL) through untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from mlops_operator import GROUP, VERSION
from mlops_operator.api import inferenceservice, modelversion, trainingjob

CATEGORY = "mlops"

_READY = ".status.conditions[?(@.type=='Ready')].status"
_REASON = ".status.conditions[?(@.type=='Ready')].reason"
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _column(
    name: str, json_path: str, type_: str = "string", priority: int = 0, description: str = ""
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


# (module, spec model, status model, shortNames, printer columns, scale subresource)
KINDS: list[dict[str, Any]] = [
    {
        "kind": trainingjob.KIND,
        "plural": trainingjob.PLURAL,
        "short": ["tj"],
        "spec": trainingjob.TrainingJobSpec,
        "status": trainingjob.TrainingJobStatus,
        "description": "How to train a model: data, estimator, search, gates, schedule. Each run is a Job.",
        "columns": [
            _column("Ready", _READY),
            _column("Reason", _REASON),
            _column("Model", ".spec.model.name"),
            _column("Latest", ".status.latestModelVersion", description="The last ModelVersion created"),
            _column("Last-Run", ".status.lastRun.phase"),
            _column("Schedule", ".spec.schedule", priority=1),
            _column("Runs", ".status.runCount", "integer", priority=1),
            _column("Message", ".status.conditions[?(@.type=='Ready')].message", priority=1),
            _AGE,
        ],
        "scale": None,
    },
    {
        "kind": modelversion.KIND,
        "plural": modelversion.PLURAL,
        "short": ["mv"],
        "spec": modelversion.ModelVersionSpec,
        "status": modelversion.ModelVersionStatus,
        "description": "One immutable trained model in the MLflow registry, its lineage, gates and model card.",
        "columns": [
            _column("Ready", _READY),
            _column("Reason", _REASON),
            _column("Model", ".spec.model.name"),
            _column("Version", ".status.resolvedVersion"),
            _column("Validated", ".status.conditions[?(@.type=='Validated')].status"),
            _column("Accuracy", ".spec.metrics.accuracy", priority=1),
            _column("Aliases", ".status.aliases", priority=1),
            _column("Training-Job", ".spec.lineage.trainingJob", priority=1),
            _AGE,
        ],
        "scale": None,
    },
    {
        "kind": inferenceservice.KIND,
        "plural": inferenceservice.PLURAL,
        "short": ["mlisvc"],
        "spec": inferenceservice.InferenceServiceSpec,
        "status": inferenceservice.InferenceServiceStatus,
        "description": "A model served over HTTP, monitored for drift and accuracy, rolled out as a canary.",
        "columns": [
            _column("Ready", _READY),
            _column("Reason", _REASON),
            _column("Model", ".spec.model.name"),
            _column("Version", ".status.stable.modelVersion"),
            _column("Canary", ".status.canary.modelVersion"),
            _column(
                "Weight", ".status.canary.weight", "integer", description="Canary traffic percent (measured)"
            ),
            _column("Phase", ".status.rollout.phase", description="Rollout phase"),
            _column("Step", ".status.rollout.step", "integer", priority=1),
            _column(
                "Failed", ".status.rollout.failedChecks", "integer", priority=1, description="Failed checks"
            ),
            _column("URL", ".status.url", priority=1),
            _column("Runtime", ".status.runtime", priority=1),
            _column("Drift", ".status.monitoring.state", priority=1),
            _AGE,
        ],
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    },
]


_KEY_ORDER = {"type": 0, "description": 1, "required": 2, "default": 3}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _structural(node: Any) -> Any:
    """Rewrite one inlined JSON-Schema node into the structural OpenAPI v3 dialect."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    node.pop("title", None)
    if node.get("default", ...) is None:
        node.pop("default")
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) == 1:
            del node["anyOf"]
            inner = dict(non_null[0])
            # The outer node's own keywords (description, default, CEL) win over the inner's.
            node = {**inner, **node}
            node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("additionalProperties") is False:
        # extra="forbid" in the models: structural schemas forbid this keyword; the API
        # server prunes unknown fields instead (and the models reject them when not pruned).
        del node["additionalProperties"]
    if node.get("format") == "date-time":
        node["type"] = "string"
    result: dict[str, Any] = {}
    # type and description first: the YAML reads like kubectl explain.
    ordered = sorted(node.items(), key=lambda item: _KEY_ORDER.get(item[0], len(_KEY_ORDER)))
    for key, value in ordered:
        if key in ("properties",):
            result[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            result[key] = _structural(value)
        else:
            result[key] = value
    return result


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(_inline(raw, defs))
    return schema


def build_crd(entry: dict[str, Any]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (pure: the same models give the same bytes)."""
    kind: str = entry["kind"]
    plural: str = entry["plural"]
    spec_schema = openapi_schema(entry["spec"])
    status_schema = openapi_schema(entry["status"])
    subresources: dict[str, Any] = {"status": {}}
    if entry["scale"]:
        subresources["scale"] = entry["scale"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "mlops-operator",
                "app.kubernetes.io/part-of": "mlops-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": entry["short"],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": entry["columns"],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": entry["description"],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `mlops-operator crds` from operator/mlops_operator/api. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)


def generate() -> dict[str, str]:
    """File name -> YAML text, for every kind."""
    return {f"{GROUP}_{entry['plural']}.yaml": render(build_crd(entry)) for entry in KINDS}
