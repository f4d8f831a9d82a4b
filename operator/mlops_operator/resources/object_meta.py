"""Labels, names and owner references every child object carries (pure)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from mlops_operator import GROUP

MANAGED_BY = "mlops-operator"
PART_OF = "mlops"


def owner_reference(owner: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to ``owner`` so that the garbage collector deletes the child with it.

    ``blockOwnerDeletion`` makes a foreground deletion of the owner wait for the child.
    """
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def labels(
    owner: dict[str, Any], component: str, *, model: str | None = None, **extra: str
) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus ``mlops.dev/<kind>: <owner name>``."""
    name = owner["metadata"]["name"]
    result = {
        "app.kubernetes.io/name": model or name,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": PART_OF,
        f"{GROUP}/{owner['kind'].lower()}": name,
    }
    for key, value in extra.items():
        result[f"{GROUP}/{key.replace('_', '-')}"] = value
    return {key: label_value(value) for key, value in result.items()}


_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends)."""
    cleaned = _LABEL_INVALID.sub("-", value)[:63].strip("-_.")
    return cleaned


def child_name(*parts: str, max_length: int = 63) -> str:
    """A deterministic DNS-1035 name from parts; long names keep a hash suffix to stay unique."""
    name = "-".join(part.lower() for part in parts if part)
    name = re.sub(r"[^a-z0-9-]", "-", name).strip("-")
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: max_length - 9].rstrip('-')}-{digest}"
