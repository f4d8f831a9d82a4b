"""The three patch formats of the Kubernetes API: JSON merge, JSON patch and strategic merge.

kmock merges dicts and overwrites keys; a real API server does not: ``null`` deletes a key
(RFC 7386), JSON patch is a list of operations (RFC 6902), and a strategic merge patch merges
lists of named objects (containers, env, ports, conditions) by a key instead of replacing them.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError

JsonDict = dict[str, Any]

# The patch-merge keys of the builtin types, by field name. Real servers read them from the Go
# struct tags (``patchMergeKey``); a field-name table covers every list kubectl and controllers
# patch in practice. ``ports`` depends on its parent (containers use containerPort, services port).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "resourceClaims": ("name",),
    "schedulingGates": ("name",),
}
# Lists of scalars whose patch strategy is "merge" (set union) rather than replace.
MERGED_SCALAR_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: dicts merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JsonDict = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: path {path!r} does not exist")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str, *, replace: bool = False) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(
                422, "Invalid", f"jsonpatch replace operation does not apply: doc is missing key: {path}"
            )
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: index out of range in {path!r}")
    else:
        raise ApiError(422, "Invalid", f"jsonpatch: cannot add to a scalar at {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise ApiError(422, "Invalid", "jsonpatch: cannot remove the whole document")
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, "Invalid", f"jsonpatch remove operation does not apply: doc is missing path: {path}")


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test), all or nothing."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    result = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise ApiError(400, "BadRequest", f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], operation["path"]
        parts = _pointer(path)
        if op == "add":
            result = _add(result, parts, copy.deepcopy(operation.get("value")), path)
        elif op == "replace":
            result = _add(result, parts, copy.deepcopy(operation.get("value")), path, replace=True)
        elif op == "remove":
            _remove(result, parts, path)
        elif op in ("move", "copy"):
            source = operation.get("from", "")
            value = _resolve(result, _pointer(source), source)
            if op == "move":
                _remove(result, _pointer(source), source)
            result = _add(result, parts, copy.deepcopy(value), path)
        elif op == "test":
            if _resolve(result, parts, path) != operation.get("value"):
                raise ApiError(422, "Invalid", f"jsonpatch test operation does not apply: {path}")
        else:
            raise ApiError(400, "BadRequest", f"unknown JSON patch operation {op!r}")
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in MERGE_KEYS.get(field, ()):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def _merge_list(field: str, original: list[Any], patch: list[Any]) -> list[Any]:
    if field in MERGED_SCALAR_LISTS:
        return list(original) + [v for v in patch if v not in original]
    key = _merge_key(field, [p for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")])
    if key is None or not all(isinstance(o, dict) for o in original):
        return [_strip_directives(p) for p in patch]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip_directives(p) for p in patch if p.get("$patch") != "replace"]
    result = copy.deepcopy(original)
    for item in patch:
        index = next((i for i, o in enumerate(result) if o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _order(items: list[Any], order: list[Any], field: str) -> list[Any]:
    """Honour ``$setElementOrder/<field>``: kubectl sends the intended order of a merged list."""
    key = _merge_key(field, order) if order and isinstance(order[0], dict) else None

    def identity(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, dict) else item

    wanted = [identity(o) for o in order]
    ranked = sorted(
        enumerate(items),
        key=lambda pair: (
            wanted.index(identity(pair[1])) if identity(pair[1]) in wanted else len(wanted),
            pair[0],
        ),
    )
    return [item for _, item in ranked]


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch the way the API server does for builtin kinds.

    Maps merge like a JSON merge patch. Lists of named objects (see ``MERGE_KEYS``) merge item by
    item on their key; other lists replace. The directives kubectl emits are honoured:
    ``$patch: replace|delete``, ``$retainKeys``, ``$setElementOrder/<list>`` and
    ``$deleteFromPrimitiveList/<list>``.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if patch.get("$patch") == "delete":
        return None
    result: JsonDict = copy.deepcopy(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        else:
            result[key] = _strip_directives(value)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
        elif key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = _order(result[field], value, field)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result
