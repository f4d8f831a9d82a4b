"""Label and field selectors, parsed the way ``k8s.io/apimachinery/pkg/labels`` parses them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

JsonDict = dict[str, Any]
Predicate = Callable[[JsonDict], bool]

_SET_TERM = re.compile(r"^\s*(?P<key>[^\s!=]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*(?P<key>[^\s!=]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s,]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=()]+)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` value sets."""
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def _label_in(key: str, values: frozenset[str], positive: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (labels.get(key) in values) == positive


def _label_equals(key: str, value: str, positive: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (labels.get(key) == value) == positive


def _label_exists(key: str, positive: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (key in labels) == positive


def parse_label_selector(selector: str | None) -> Predicate:
    """Compile ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into a predicate over an object.

    Like the real server, ``!=`` and ``notin`` also match objects without the label at all.
    """
    if not selector:
        return lambda obj: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            checks.append(_label_in(match["key"], values, match["op"] == "in"))
        elif match := _EQ_TERM.match(term):
            checks.append(_label_equals(match["key"], match["value"], match["op"] != "!="))
        elif match := _EXISTS_TERM.match(term):
            checks.append(_label_exists(match["key"], not match["neg"]))
        else:
            raise bad_request(f"unable to parse requirement: invalid label selector term {term.strip()!r}")

    def predicate(obj: JsonDict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field_value(obj: JsonDict, path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_equals(path: str, value: str, positive: bool) -> Predicate:
    return lambda obj: ((_field_value(obj, path) or "") == value) == positive


def parse_field_selector(selector: str | None) -> Predicate:
    """Compile ``metadata.name=x,metadata.namespace!=y`` into a predicate.

    The real server allows only a per-kind list of fields (``metadata.name``,
    ``metadata.namespace``, ``status.phase`` for pods, ...); this one accepts any dotted path.
    A missing field compares as the empty string, as it does in the real field sets.
    """
    if not selector:
        return lambda obj: True
    checks: list[Callable[[JsonDict], bool]] = []
    for term in _split_terms(selector):
        match = _EQ_TERM.match(term)
        if not match:
            raise bad_request(f"invalid field selector: {term.strip()!r}")
        checks.append(_field_equals(match["key"], match["value"], match["op"] != "!="))
    return lambda obj: all(check(obj) for check in checks)


def selector_string(match_labels: dict[str, str] | None, expressions: list[JsonDict] | None = None) -> str:
    """Render a ``LabelSelector`` (matchLabels + matchExpressions) as the string form used by Scale."""
    terms = [f"{k}={v}" for k, v in sorted((match_labels or {}).items())]
    for expr in expressions or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)
