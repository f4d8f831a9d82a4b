"""What a request's URL says: the parts of a resource path, and Go-style boolean query flags."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ParsedPath:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> ParsedPath | None:
    """Split an API path into its parts, including ``/api/v1/namespaces[/<name>[/status]]``.

    kmock 0.8's parser fails on ``/api/v1/namespaces`` (it takes it for a namespace prefix) and
    answers 500; kopf lists namespaces whenever it watches namespace patterns.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return ParsedPath(
        group=group,
        version=version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource=rest[2] if len(rest) > 2 else None,
    )


def is_true(value: str | None) -> bool:
    """Go's ``strconv.ParseBool``: the Python client sends ``watch=True``, kubectl ``watch=true``."""
    return value in ("1", "t", "T", "true", "TRUE", "True")
