"""Structural schemas of CustomResourceDefinitions: pruning, defaulting and validation.

A real API server does three things with a CRD version's ``openAPIV3Schema`` on every write:
it *prunes* fields the schema does not declare (unless ``x-kubernetes-preserve-unknown-fields``),
applies ``default`` values, then validates (OpenAPI value validations plus
``x-kubernetes-validations`` CEL rules, with ``oldSelf`` on updates). Failures come back as a
422 whose causes name each field (``spec.replicas``). This module reproduces that with
``jsonschema`` (the OpenAPI v3 dialect converted to draft 4) and ``cel-python``.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterator
from typing import Any

from .errors import FieldError

JsonDict = dict[str, Any]
logger = logging.getLogger(__name__)


def _optional(module: str) -> Any:
    """Import a validation library if installed, typed as Any.

    ``jsonschema`` and ``cel-python`` ship no type information, and the sandbox must still start
    (pruning and defaulting only, with a warning) where they are not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        logger.warning("%s is not installed: the emulated API server will not enforce it", module)
        return None


_jsonschema = _optional("jsonschema")
_cel = _optional("mlops_operator.api.cel")  # needs cel-python

# Draft 4 understands OpenAPI 3.0's boolean exclusiveMinimum/Maximum; the draft 6 type checker
# accepts 1.0 as an integer, as Go's JSON decoding into int64 does.
_Validator: Any = (
    None
    if _jsonschema is None
    else _jsonschema.validators.extend(
        _jsonschema.Draft4Validator, type_checker=_jsonschema.Draft6Validator.TYPE_CHECKER
    )
)
_VALUE_KEYS = (
    "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "multipleOf",
    "required",
)  # fmt: skip
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def field_path(parts: Iterator[Any] | list[Any]) -> str:
    """``['spec', 'items', 0, 'name']`` -> ``spec.items[0].name``, the way field errors print paths."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def to_json_schema(schema: Any) -> Any:
    """Convert the OpenAPI v3 dialect of CRDs into a JSON Schema draft 4 document."""
    if not isinstance(schema, dict):
        return schema
    out: JsonDict = {}
    if "type" in schema and not schema.get("x-kubernetes-int-or-string"):
        out["type"] = schema["type"]
    for key in _VALUE_KEYS:
        if key in schema:
            out[key] = copy.deepcopy(schema[key])
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    if "additionalProperties" in schema:
        ap = schema["additionalProperties"]
        out["additionalProperties"] = ap if isinstance(ap, bool) else to_json_schema(ap)
    if "items" in schema:
        out["items"] = to_json_schema(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [to_json_schema(s) for s in schema[key]]
    if isinstance(schema.get("not"), dict):
        out["not"] = to_json_schema(schema["not"])
    if schema.get("x-kubernetes-int-or-string"):
        either = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        out.setdefault("allOf", []).append(either)
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "allOf" in out:  # int-or-string that may also be null
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def to_openapi_v2(schema: Any) -> Any:
    """Publish a schema in swagger 2.0 terms: v2 has no ``nullable`` nor int-or-string types."""
    if isinstance(schema, list):
        return [to_openapi_v2(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: JsonDict = {}
    for key, value in schema.items():
        if key in ("nullable", "x-kubernetes-validations", "default", "anyOf", "oneOf", "allOf", "not"):
            continue
        if key == "type" and schema.get("x-kubernetes-int-or-string"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: to_openapi_v2(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_openapi_v2(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# bool before int: a bool is an int in Python, but a "boolean" in JSON.
_JSON_TYPE_NAMES = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"),
)  # fmt: skip


def _type_name(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPE_NAMES if isinstance(value, kind)), "null")


class StructuralSchema:
    """One CRD version's schema, ready to prune, default and validate objects."""

    def __init__(self, schema: JsonDict) -> None:
        self.schema = schema
        self._validator = None if _Validator is None else _Validator(to_json_schema(schema))

    # -- pruning ------------------------------------------------------------------------------

    def prune(self, obj: JsonDict) -> list[str]:
        """Drop undeclared fields in place, as the server does; return their paths (for Strict)."""
        pruned: list[str] = []
        root = {k: v for k, v in obj.items() if k not in _ROOT_FIELDS}
        self._prune(root, self.schema, [], pruned, root=True)
        for key in list(obj):
            if key not in _ROOT_FIELDS and key not in root:
                del obj[key]
        return pruned

    def _prune(self, value: Any, schema: Any, path: list[Any], pruned: list[str], root: bool = False) -> None:
        if not isinstance(schema, dict):
            return
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            embedded = bool(schema.get("x-kubernetes-embedded-resource"))
            for key in list(value):
                if key in props:
                    self._prune(value[key], props[key], [*path, key], pruned)
                elif isinstance(extra, dict):
                    self._prune(value[key], extra, [*path, key], pruned)
                elif (
                    extra is True
                    or preserve
                    or (embedded and key in _ROOT_FIELDS)
                    or (root and key in _ROOT_FIELDS)
                ):
                    continue
                else:
                    pruned.append(field_path([*path, key]))
                    del value[key]
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                self._prune(item, schema["items"], [*path, index], pruned)

    # -- defaulting ---------------------------------------------------------------------------

    def apply_defaults(self, obj: JsonDict) -> None:
        """Apply ``default`` values and drop nulls of non-nullable fields, in place."""
        self._default(obj, self.schema)

    def _default(self, value: Any, schema: Any) -> None:
        if not isinstance(schema, dict):
            return
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for key, sub in props.items():
                if key in _ROOT_FIELDS and schema is self.schema:
                    continue
                if key in value and value[key] is None and not sub.get("nullable"):
                    del value[key]
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    self._default(value[key], sub)
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for key, item in value.items():
                    if key not in props:
                        self._default(item, extra)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self._default(item, schema["items"])

    # -- validation ---------------------------------------------------------------------------

    def validate(self, obj: JsonDict, old: JsonDict | None) -> list[FieldError]:
        """Return the field errors of ``obj`` (``old`` enables CEL transition rules)."""
        body = {k: v for k, v in obj.items() if k not in _ROOT_FIELDS}
        found = [] if self._validator is None else self._validator.iter_errors(body)
        errors = [self._translate(e) for e in found]
        flat = [e for group in errors for e in group]
        old_body = None if old is None else {k: v for k, v in old.items() if k not in _ROOT_FIELDS}
        flat.extend(self._cel(body, old_body, self.schema, []))
        return flat

    def _translate(self, error: Any) -> list[FieldError]:
        """A jsonschema error as the Kubernetes field error(s) with the same meaning."""
        parts = list(error.absolute_path)
        path = field_path(parts) or "<root>"
        kind, limit, value = error.validator, error.validator_value, error.instance
        if kind == "required":
            missing = [n for n in limit if isinstance(value, dict) and n not in value]
            return [FieldError.required(field_path([*parts, n])) for n in missing]
        if kind == "enum":
            return [FieldError.not_supported(path, value, [v for v in limit if v is not None])]
        if kind == "type" or (kind in ("anyOf", "allOf") and not isinstance(value, (dict, list))):
            expected = limit if kind == "type" else "integer-or-string"
            if isinstance(expected, list):
                expected = next((t for t in expected if t != "null"), "null")
            got = _type_name(value)
            return [
                FieldError.invalid(
                    path, got, f"{path} in body must be of type {expected}: {got!r}".replace("'", '"')
                )
            ]
        messages = {
            "minimum": f"should be greater than or equal to {limit}",
            "maximum": f"should be less than or equal to {limit}",
            "minLength": f"should be at least {limit} chars long",
            "maxLength": f"should be at most {limit} chars long",
            "pattern": f"should match '{limit}'",
            "minItems": f"should have at least {limit} items",
            "maxItems": f"should have at most {limit} items",
            "minProperties": f"should have at least {limit} properties",
            "maxProperties": f"should have at most {limit} properties",
            "multipleOf": f"should be a multiple of {limit}",
            "uniqueItems": "shouldn't contain duplicates",
        }
        detail = messages.get(str(kind), error.message)
        if kind == "minimum" and _exclusive(error.schema, "exclusiveMinimum"):
            detail = f"should be greater than {limit}"
        if kind == "maximum" and _exclusive(error.schema, "exclusiveMaximum"):
            detail = f"should be less than {limit}"
        if kind == "maxItems" and isinstance(value, list):
            return [FieldError.too_many(path, len(value), int(limit))]
        shown: Any = len(value) if kind in ("minItems",) and isinstance(value, list) else value
        return [FieldError.invalid(path, shown, f"{path} in body {detail}")]

    # -- CEL ----------------------------------------------------------------------------------

    def _cel(self, value: Any, old: Any, schema: Any, path: list[Any]) -> list[FieldError]:
        """The CEL rules, evaluated by the same module the operator uses (``mlops_operator.api.cel``)."""
        if _cel is None or not isinstance(schema, dict):
            return []
        old_value = _cel.MISSING if old is None else old
        errors = []
        for violation in _cel.validate(schema, value, old_value, field_path(path)):
            if violation.reason == "FieldValueRequired":
                errors.append(FieldError.required(violation.field, violation.message))
            elif violation.reason == "FieldValueForbidden":
                errors.append(FieldError.forbidden(violation.field, violation.message))
            elif violation.reason == "FieldValueDuplicate":
                errors.append(
                    FieldError(
                        violation.field,
                        violation.reason,
                        f"{violation.field}: Duplicate value: {violation.message}",
                    )
                )
            else:
                shown = "object" if isinstance(violation.value, dict) else violation.value
                errors.append(FieldError.invalid(violation.field, shown, violation.message))
        return errors


def _exclusive(schema: Any, key: str) -> bool:
    return isinstance(schema, dict) and schema.get(key) is True
