"""Kubernetes API errors as the real API server reports them: a ``Status`` object with a code."""

from __future__ import annotations

import json
from typing import Any

JsonDict = dict[str, Any]


class ApiError(Exception):
    """An error answered with a ``v1 Status`` body, the shape every Kubernetes client decodes.

    Clients (kopf, the ``kubernetes`` client, kubectl) branch on ``code`` and ``reason``
    (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``), so both must be exact.
    """

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JsonDict | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JsonDict:
        body: JsonDict = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(plural: str, group: str) -> str:
    """``pods`` for the core group, ``trainingjobs.mlops.dev`` otherwise, as in real messages."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    details: JsonDict = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(404, "NotFound", f'{qualified(plural, group)} "{name}" not found', details)


def already_exists(plural: str, group: str, name: str) -> ApiError:
    details: JsonDict = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists', details)


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    details: JsonDict = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    message = f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}'
    return ApiError(409, "Conflict", message, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
    )


def forbidden(plural: str, group: str, name: str, why: str) -> ApiError:
    details: JsonDict = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(403, "Forbidden", f'{qualified(plural, group)} "{name}" is forbidden: {why}', details)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def go_value(value: Any) -> str:
    """Render a value roughly the way Go's ``%v``/``%q`` renders it in validation messages."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class FieldError:
    """One entry of ``details.causes``: the field path, a reason and a one-line detail."""

    def __init__(self, field: str, reason: str, text: str) -> None:
        self.field = field
        self.reason = reason
        self.text = text  # the whole "<field>: <type>: <detail>" line as Kubernetes prints it

    def cause(self) -> JsonDict:
        # Causes carry the detail without the "<field>: " prefix; clients print field + message.
        prefix = f"{self.field}: "
        message = self.text[len(prefix) :] if self.text.startswith(prefix) else self.text
        return {"reason": self.reason, "message": message, "field": self.field}

    @classmethod
    def invalid(cls, field: str, value: Any, detail: str) -> FieldError:
        return cls(field, "FieldValueInvalid", f"{field}: Invalid value: {go_value(value)}: {detail}")

    @classmethod
    def required(cls, field: str, detail: str = "") -> FieldError:
        suffix = f": {detail}" if detail else ""
        return cls(field, "FieldValueRequired", f"{field}: Required value{suffix}")

    @classmethod
    def not_supported(cls, field: str, value: Any, allowed: list[Any]) -> FieldError:
        choices = ", ".join(go_value(a) for a in allowed)
        return cls(
            field,
            "FieldValueNotSupported",
            f"{field}: Unsupported value: {go_value(value)}: supported values: {choices}",
        )

    @classmethod
    def forbidden(cls, field: str, detail: str) -> FieldError:
        return cls(field, "FieldValueForbidden", f"{field}: Forbidden: {detail}")

    @classmethod
    def too_many(cls, field: str, count: int, limit: int) -> FieldError:
        return cls(field, "FieldValueTooMany", f"{field}: Too many: {count}: must have at most {limit} items")

    @classmethod
    def too_long(cls, field: str, limit: int) -> FieldError:
        return cls(field, "FieldValueTooLong", f"{field}: Too long: may not be more than {limit} bytes")


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """The 422 ``Invalid`` error: ``<Kind>.<group> "<name>" is invalid: <causes>``."""
    qualified_kind = f"{kind}.{group}" if group else kind
    # One cause prints bare; several print as a bracketed list, as apimachinery's aggregate does.
    summary = errors[0].text if len(errors) == 1 else "[" + ", ".join(e.text for e in errors) + "]"
    details: JsonDict = {"name": name, "kind": kind, "causes": [e.cause() for e in errors]}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {summary}', details)
