"""The ``/scale`` subresource: an ``autoscaling/v1 Scale`` view of the replica paths a resource
declares (a CRD's ``subresources.scale``, or a builtin's), read and written through the writer."""

from __future__ import annotations

import copy
from typing import Any

from . import errors, patching, printing
from .catalog import ResourceType
from .errors import FieldError
from .object_store import JsonDict
from .object_writes import ObjectWriter
from .selectors import selector_string


def scale_of(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    """The ``autoscaling/v1 Scale`` view: spec/status replicas from the declared paths."""
    assert rtype.scale is not None
    meta = obj["metadata"]
    spec_replicas = printing.jsonpath(obj, rtype.scale.spec_replicas_path)
    status_replicas = printing.jsonpath(obj, rtype.scale.status_replicas_path)
    status: JsonDict = {"replicas": status_replicas[0] if status_replicas else 0}
    if rtype.scale.label_selector_path:
        selector = printing.jsonpath(obj, rtype.scale.label_selector_path)
        if selector and isinstance(selector[0], dict):  # builtins keep a LabelSelector
            status["selector"] = selector_string(
                selector[0].get("matchLabels"), selector[0].get("matchExpressions")
            )
        elif selector:
            status["selector"] = selector[0]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec_replicas[0] if spec_replicas else 0},
        "status": status,
    }


def put_scale(
    writer: ObjectWriter,
    rtype: ResourceType,
    namespace: str | None,
    name: str,
    body: Any,
    query: dict[str, str],
) -> JsonDict:
    """PUT ``/scale``: set the spec replicas (a resourceVersion in the Scale is a precondition)."""
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a Scale")
    old = writer.store.read(rtype, namespace, name)
    rv = (body.get("metadata") or {}).get("resourceVersion")
    if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
        raise errors.conflict(rtype.plural, rtype.group, name)
    replicas = (body.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid(
            "Scale",
            "autoscaling",
            name,
            [FieldError.invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
        )
    assert rtype.scale is not None
    new = copy.deepcopy(old)
    _set_path(new, rtype.scale.spec_replicas_path, replicas)
    updated = writer.update(rtype, namespace, name, new, None, query, require_rv=False)
    return scale_of(rtype, updated.obj)


def patch_scale(
    writer: ObjectWriter,
    rtype: ResourceType,
    namespace: str | None,
    name: str,
    body: Any,
    content_type: str,
    query: dict[str, str],
) -> JsonDict:
    """PATCH ``/scale``: a JSON patch, or else a merge patch, of the Scale view."""
    current = scale_of(rtype, writer.store.read(rtype, namespace, name))
    if content_type == "application/json-patch+json":
        patched = patching.json_patch(current, body)
    else:
        patched = patching.merge_patch(current, body)
    return put_scale(writer, rtype, namespace, name, patched, query)


def _set_path(obj: JsonDict, path: str, value: Any) -> None:
    """Set a ``.a.b.c`` path (the only form specReplicasPath may take), creating maps on the way."""
    parts = [p for p in path.strip().lstrip(".").split(".") if p]
    target = obj
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = value
