"""Server-side printing: the ``meta.k8s.io/v1 Table`` kubectl asks for with ``Accept: ...;as=Table``.

``kubectl get`` does not format objects itself: it asks the server for a Table whose columns are a
CRD's ``additionalPrinterColumns`` (JSONPath expressions) or, for builtins, the server's own
printers. Columns with ``priority > 0`` are sent too; kubectl shows them only with ``-o wide``.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from .catalog import ResourceType

JsonDict = dict[str, Any]

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
    "priority": 0,
}
_TOKEN = re.compile(
    r"""\.(?P<key>[A-Za-z0-9_\-]+)"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\[['"](?P<quoted>[^'"]+)['"]\]"""
    r"""|\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*['"]?(?P<fval>[^'")]*)['"]?\)\]"""
)


def jsonpath(obj: Any, expression: str) -> list[Any]:
    """Evaluate the JSONPath subset printer columns use: ``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``."""
    expr = expression.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = expr.lstrip("$")
    values = [obj]
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            return []  # an expression beyond the subset prints as <none>, as a failed lookup does
        position = match.end()
        nxt: list[Any] = []
        for value in values:
            if match["key"] is not None or match["quoted"] is not None:
                key = match["key"] if match["key"] is not None else match["quoted"]
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif match["index"] is not None and isinstance(value, list):
                if match["index"] == "*":
                    nxt.extend(value)
                elif -len(value) <= int(match["index"]) < len(value):
                    nxt.append(value[int(match["index"])])
            elif match["fkey"] is not None and isinstance(value, list):
                for item in value:
                    found = jsonpath(item, "." + match["fkey"])
                    actual = _text(found[0]) if found else None
                    if (actual == match["fval"]) == (match["fop"] == "=="):
                        nxt.append(item)
        values = nxt
    return values


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """Go's ``duration.HumanDuration`` of the time since ``timestamp`` (``5s``, ``3m2s``, ``4h``, ``2d``)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    now = now or datetime.datetime.now(datetime.UTC)
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 else f"{days // 365}y"


def _cell(column: JsonDict, obj: JsonDict) -> Any:
    found = jsonpath(obj, str(column.get("jsonPath", "")))
    if not found:
        return None
    if column.get("type") == "date":
        return human_age(found[0]) if isinstance(found[0], str) else None
    if len(found) == 1:
        value = found[0]
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        return value
    return ",".join(_text(v) for v in found)


def _builtin_columns(rtype: ResourceType) -> list[tuple[JsonDict, Any]]:
    """A few of the real server's printers for builtins kubectl users look at most."""

    def col(name: str, kind: str = "string", priority: int = 0) -> JsonDict:
        return {"name": name, "type": kind, "format": "", "description": name, "priority": priority}

    def ready(obj: JsonDict) -> str:
        status = obj.get("status") or {}
        wanted = (obj.get("spec") or {}).get("replicas", 1)
        return f"{status.get('readyReplicas', 0)}/{wanted}"

    def pod_ready(obj: JsonDict) -> str:
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        containers = (obj.get("spec") or {}).get("containers") or []
        return f"{sum(1 for s in statuses if s.get('ready'))}/{len(containers)}"

    if (rtype.group, rtype.plural) == ("", "pods"):
        return [
            (col("Ready"), pod_ready),
            (col("Status"), lambda o: (o.get("status") or {}).get("phase", "Pending")),
            (col("IP", priority=1), lambda o: (o.get("status") or {}).get("podIP")),
        ]
    if (rtype.group, rtype.plural) in (
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
    ):
        return [
            (col("Ready"), ready),
            (col("Up-to-date", "integer"), lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
            (col("Available", "integer"), lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
        ]
    if (rtype.group, rtype.plural) == ("", "services"):
        return [
            (col("Type"), lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
            (col("Cluster-IP"), lambda o: (o.get("spec") or {}).get("clusterIP", "<none>")),
        ]
    if (rtype.group, rtype.plural) == ("batch", "jobs"):
        return [
            (col("Status"), _job_status),
            (col("Completions"), lambda o: f"{(o.get('status') or {}).get('succeeded', 0)}/"
             f"{(o.get('spec') or {}).get('completions', 1)}"),
        ]  # fmt: skip
    return []


def _job_status(obj: JsonDict) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed", "Suspended"):
            return str(condition["type"])
    return "Running"


def columns_for(rtype: ResourceType) -> list[JsonDict]:
    if rtype.custom:
        if not rtype.printer_columns:
            return [NAME_COLUMN, AGE_COLUMN]
        return [NAME_COLUMN] + [
            {
                "name": c.get("name", ""),
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": int(c.get("priority", 0)),
            }
            for c in rtype.printer_columns
        ]
    return [NAME_COLUMN] + [c for c, _ in _builtin_columns(rtype)] + [AGE_COLUMN]


def row_for(rtype: ResourceType, obj: JsonDict, include: str) -> JsonDict:
    meta = obj.get("metadata") or {}
    cells: list[Any] = [meta.get("name")]
    if rtype.custom and rtype.printer_columns:
        cells += [_cell(c, obj) for c in rtype.printer_columns]
    elif rtype.custom:
        cells.append(human_age(meta.get("creationTimestamp")))
    else:
        cells += [fn(obj) for _, fn in _builtin_columns(rtype)]
        cells.append(human_age(meta.get("creationTimestamp")))
    row: JsonDict = {"cells": cells}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
        }
    return row


def table(rtype: ResourceType, objs: list[JsonDict], resource_version: str, include: str) -> JsonDict:
    """A Table of ``objs``; ``include`` is the ``includeObject`` parameter (Metadata by default)."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns_for(rtype),
        "rows": [row_for(rtype, obj, include) for obj in objs],
    }
