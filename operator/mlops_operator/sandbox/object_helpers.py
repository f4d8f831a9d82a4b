"""Small pure helpers over Kubernetes objects as plain dicts (metadata, selectors, conditions, time).

The runtime keeps every object as the JSON dict the API server returned; these helpers are the
only place that knows where fields live, so that the controllers read like the Kubernetes docs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

Obj = dict[str, Any]

# Kubernetes generates name suffixes from this alphabet (no vowels, no look-alikes): the same
# here, so names look like the ones users know (``train-x7k2p``).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def name_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("namespace") or "default")


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    return namespace_of(obj), name_of(obj)


def uid_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("uid") or "")


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(length))


def stable_hash(value: Any, length: int = 10) -> str:
    """A short, deterministic, DNS-safe hash of a JSON value (like a pod-template-hash)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(_SUFFIX_ALPHABET))
        chars.append(_SUFFIX_ALPHABET[index])
    return "".join(chars)


def owner_reference(owner: Mapping[str, Any], *, controller: bool = True) -> Obj:
    ref: Obj = {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": name_of(owner),
        "controller": controller,
        "blockOwnerDeletion": True,
    }
    # The plain emulator assigns no uid; an empty uid would not validate on a real server.
    if uid_of(owner):
        ref["uid"] = uid_of(owner)
    return ref


def controller_ref(obj: Mapping[str, Any]) -> Obj | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def is_controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """Whether ``owner`` is the controller of ``obj``: same kind and name, and same uid when both have one."""
    ref = controller_ref(obj)
    if ref is None or namespace_of(obj) != namespace_of(owner):
        return False
    if ref.get("kind") != owner.get("kind") or ref.get("name") != name_of(owner):
        return False
    return not (ref.get("uid") and uid_of(owner) and ref["uid"] != uid_of(owner))


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions). An empty or missing selector matches nothing,
    as for Services and Deployments (a Service without selector has manually managed endpoints)."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def map_selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service's plain map selector."""
    if not selector:
        return False
    return all(labels.get(key) == value for key, value in selector.items())


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def find_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Obj | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: str,
    *,
    now: datetime.datetime,
    reason: str = "",
    message: str = "",
    probe_time: bool = False,
) -> list[Obj]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when the status changes."""
    result: list[Obj] = []
    found = False
    for condition in conditions or []:
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        updated: Obj = dict(condition)
        if condition.get("status") != status:
            updated["lastTransitionTime"] = format_time(now)
        updated.update({"status": status})
        _set_optional(updated, "reason", reason)
        _set_optional(updated, "message", message)
        result.append(updated)
    if not found:
        new: Obj = {"type": type_, "status": status, "lastTransitionTime": format_time(now)}
        if probe_time:
            new["lastProbeTime"] = None
        _set_optional(new, "reason", reason)
        _set_optional(new, "message", message)
        result.append(new)
    return result


def _set_optional(condition: Obj, key: str, value: str) -> None:
    if value:
        condition[key] = value
    else:
        condition.pop(key, None)
