"""What the server serves: builtin resources (from kmock's bundled discovery) and CRD-defined ones."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import FieldError
from .kmock_adapter import bundled_discovery
from .schema import StructuralSchema

JsonDict = dict[str, Any]

# Builtins whose /status the real server splits from the main resource. The bundled discovery
# lists a /status subresource for more kinds; all of them behave like this.
STANDARD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclasses.dataclass
class ScaleSpec:
    """Where a resource keeps its replica counts, as a CRD's ``subresources.scale`` declares."""

    spec_replicas_path: str = ".spec.replicas"
    status_replicas_path: str = ".status.replicas"
    label_selector_path: str | None = None


@dataclasses.dataclass
class ResourceType:
    """One served group/version/resource with everything discovery and the handlers need."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: list[str]
    short_names: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    status: bool = False
    scale: ScaleSpec | None = None
    schema: StructuralSchema | None = None
    raw_schema: JsonDict | None = None
    printer_columns: list[JsonDict] = dataclasses.field(default_factory=list)
    storage_version: str = ""
    served_versions: list[str] = dataclasses.field(default_factory=list)
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        # Objects are stored once per group/resource and served at any version of it, the way
        # the real server stores a storage version and converts (here: with strategy None).
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


def load_builtins() -> list[ResourceType]:
    """Builtin resources from the discovery dump kmock ships (a real K3s cluster's answers)."""
    lists = bundled_discovery()
    result: list[ResourceType] = []
    for api_list in lists:
        group_version: str = api_list["groupVersion"]
        group, _, version = group_version.rpartition("/")
        if group == "metrics.k8s.io":
            continue  # an aggregated API with computed, read-only objects: not emulated
        names = {r["name"] for r in api_list["resources"]}
        for res in api_list["resources"]:
            if "/" in res["name"]:
                continue
            plural = res["name"]
            scale = ScaleSpec(label_selector_path=".spec.selector") if f"{plural}/scale" in names else None
            result.append(
                ResourceType(
                    group=group,
                    version=version,
                    plural=plural,
                    kind=res["kind"],
                    singular=res.get("singularName") or plural,
                    namespaced=bool(res["namespaced"]),
                    verbs=list(res.get("verbs") or STANDARD_VERBS),
                    short_names=list(res.get("shortNames") or []),
                    categories=list(res.get("categories") or []),
                    status=f"{plural}/status" in names,
                    scale=scale,
                    storage_version=version,
                    served_versions=[version],
                )
            )
    # Discovery dumps of K3s omit categories; kubectl's "get all" relies on them.
    for rtype in result:
        if (rtype.group, rtype.plural) in _ALL_CATEGORY:
            rtype.categories = sorted({*rtype.categories, "all"})
    return result


_ALL_CATEGORY = {
    ("", "pods"), ("", "services"), ("", "replicationcontrollers"), ("apps", "deployments"),
    ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"), ("batch", "jobs"),
    ("batch", "cronjobs"), ("autoscaling", "horizontalpodautoscalers"),
}  # fmt: skip


def validate_crd(crd: JsonDict) -> list[FieldError]:
    """The checks of the real CRD validation that protect this server from unusable definitions."""
    errors: list[FieldError] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    if not group:
        errors.append(FieldError.required("spec.group"))
    if not plural:
        errors.append(FieldError.required("spec.names.plural"))
    if not names.get("kind"):
        errors.append(FieldError.required("spec.names.kind"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errors.append(FieldError.not_supported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        errors.append(FieldError.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    versions = spec.get("versions") or []
    if not versions:
        errors.append(FieldError.required("spec.versions", "must have at least one version"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            FieldError.invalid("spec.versions", "", "must have exactly one version marked as storage version")
        )
    for index, version in enumerate(versions):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is not None and schema.get("type") != "object":
            errors.append(
                FieldError.required(f"spec.versions[{index}].schema.openAPIV3Schema.type", "must be object")
            )
    return errors


def types_from_crd(crd: JsonDict) -> list[ResourceType]:
    """The served versions of a CRD as resource types (schema, subresources, printer columns)."""
    spec = crd["spec"]
    names = spec["names"]
    versions = spec.get("versions") or []
    storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"] if versions else "")
    served = [v["name"] for v in versions if v.get("served", True)]
    result: list[ResourceType] = []
    for version in versions:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        scale_def = subresources.get("scale")
        scale = None
        if isinstance(scale_def, dict):
            scale = ScaleSpec(
                spec_replicas_path=scale_def.get("specReplicasPath", ".spec.replicas"),
                status_replicas_path=scale_def.get("statusReplicasPath", ".status.replicas"),
                label_selector_path=scale_def.get("labelSelectorPath"),
            )
        raw_schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs=list(STANDARD_VERBS),
                short_names=list(names.get("shortNames") or []),
                categories=list(names.get("categories") or []),
                status="status" in subresources,
                scale=scale,
                schema=StructuralSchema(raw_schema) if isinstance(raw_schema, dict) else None,
                raw_schema=raw_schema if isinstance(raw_schema, dict) else None,
                printer_columns=list(version.get("additionalPrinterColumns") or []),
                storage_version=storage,
                served_versions=served,
                custom=True,
            )
        )
    return result
