"""Parse and validate request bodies into float64 matrices, or say exactly what is wrong.

The happy path is a handful of C-level operations (a JSON parse, a set of element types, one
``numpy.array``); only when that fails does a slower pass walk the input to name the first
offending field, row and column. Nothing here calls the model.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, cast

import numpy as np
import numpy.typing as npt

try:  # orjson: 3-10x faster parse/dump, rejects NaN/Infinity/1e400, bounds nesting at 1024
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]

FloatArray = npt.NDArray[np.float64]

_NUMBER_TYPES = frozenset({int, float})
MAX_ID_LENGTH = 256


class RequestError(Exception):
    """A client error: HTTP ``status`` and a message naming the problem."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def bad(message: str) -> RequestError:
    return RequestError(400, message)


# --- JSON --------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} overflows a 64-bit float")
    return value


def loads(body: bytes) -> Any:
    """Parse JSON strictly: no NaN/Infinity, no overflowing numbers, bounded nesting."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad(f"malformed JSON: {exc}") from None
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_strict_float)
    except RecursionError:
        raise bad("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"malformed JSON: {exc}") from None


def dumps(value: Any) -> bytes:
    """Serialise a response body."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# --- shared checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSchema:
    """What one row must look like: its width and (when known) its feature names."""

    n_features: int
    feature_names: list[str] | None
    max_rows: int

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Feature name -> column (computed once: the v2 path looks it up on every request)."""
        return {n: i for i, n in enumerate(self.feature_names or [])}

    def column(self, j: int) -> str:
        if self.feature_names is not None and 0 <= j < len(self.feature_names):
            return f"column {j} ({self.feature_names[j]!r})"
        return f"column {j}"

    def describe(self) -> str:
        if self.feature_names is not None:
            names = ", ".join(self.feature_names[:20]) + (", ..." if len(self.feature_names) > 20 else "")
            return f"{self.n_features} features ({names})"
        return f"{self.n_features} features"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _value_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable feature value, or None when it is."""
    if type(value) not in _NUMBER_TYPES:
        return f"is {_kind(value)}, expected a number"
    try:
        as_float = float(value)
    except OverflowError:
        return "overflows a 64-bit float"
    if not math.isfinite(as_float):
        return "is not a finite number"
    return None


def _diagnose_rows(rows: Sequence[Any], schema: InputSchema, field: str) -> RequestError:
    """The first problem in a list of list-rows, as a 400 naming row and column."""
    for i, row in enumerate(rows):
        where = f"{field}[{i}]"
        if not isinstance(row, list):
            return bad(f"{where} is {_kind(row)}: each row must be an array of {schema.describe()}")
        if len(row) != schema.n_features:
            return bad(f"{where} has {len(row)} values, expected {schema.describe()}")
        for j, value in enumerate(row):
            if (problem := _value_problem(value)) is not None:
                return bad(f"{where}[{j}] ({schema.column(j)}) {problem}")
    return bad(f"{field}: rows could not be read as numbers")


def _finite_or_raise(matrix: FloatArray, schema: InputSchema, field: str, single: bool) -> None:
    if not np.isfinite(matrix).all():
        i, j = (int(v) for v in np.argwhere(~np.isfinite(matrix))[0])
        where = f"{field}[{j}]" if single else f"{field}[{i}][{j}]"
        raise bad(f"{where} ({schema.column(j)}) is not a finite number")


def rows_to_matrix(rows: list[Any], schema: InputSchema, field: str) -> FloatArray:
    """A list of rows (arrays of numbers, or objects keyed by feature name) to a matrix."""
    if not rows:
        raise bad(f"{field} has zero rows; send at least one")
    if len(rows) > schema.max_rows:
        raise RequestError(413, f"{field} has {len(rows)} rows, more than the limit of {schema.max_rows}")
    row_types = set(map(type, rows))
    if row_types == {dict}:
        return np.array([_named_row(row, schema, f"{field}[{i}]") for i, row in enumerate(rows)])
    if row_types != {list}:
        if list not in row_types and dict not in row_types:
            raise bad(
                f"{field} must be a 2-D array: a list of rows, each an array of {schema.describe()}; "
                f"got {_kind(rows[0])} at {field}[0] (for one row use 'features')"
            )
        raise _diagnose_rows(rows, schema, field)
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
        raise _diagnose_rows(rows, schema, field)
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (ValueError, OverflowError):
        raise _diagnose_rows(rows, schema, field) from None
    if matrix.ndim != 2 or matrix.shape[1] != schema.n_features:
        raise _diagnose_rows(rows, schema, field)
    _finite_or_raise(matrix, schema, field, single=False)
    return matrix


def _named_row(row: dict[str, Any], schema: InputSchema, where: str) -> list[float]:
    names = schema.feature_names
    if names is None:
        raise bad(f"{where}: this model's features have no names; send an array of {schema.describe()}")
    index = schema.index
    unknown = [k for k in row if k not in index]
    missing = [n for n in names if n not in row]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing feature(s) {', '.join(map(repr, missing[:10]))}")
        if unknown:
            parts.append(f"unknown feature(s) {', '.join(map(repr, unknown[:10]))}")
        raise bad(f"{where}: {'; '.join(parts)}; expected {schema.describe()}")
    values = [row[n] for n in names]
    for j, value in enumerate(values):
        if (problem := _value_problem(value)) is not None:
            raise bad(f"{where}[{names[j]!r}] {problem}")
    return [float(v) for v in values]


# --- /predict -----------------------------------------------------------------------------------


def parse_predict(payload: Any, schema: InputSchema) -> tuple[FloatArray, bool]:
    """The matrix to predict on and whether the request was a single row (``features``)."""
    if type(payload) is not dict:
        raise bad(
            f"body must be a JSON object with 'features' (one row) or 'instances' (rows), got {_kind(payload)}"
        )
    features = payload.get("features")
    instances = payload.get("instances")
    if features is not None and instances is not None:
        raise bad("send either 'features' (one row) or 'instances' (rows), not both")
    if features is not None:
        return _single_row(features, schema), True
    if instances is not None:
        if type(instances) is not list:
            raise bad(f"'instances' must be an array of rows, got {_kind(instances)}")
        return rows_to_matrix(instances, schema, "instances"), False
    if "features" in payload or "instances" in payload:
        raise bad("'features' / 'instances' is null")
    raise bad("body must have 'features' (one row) or 'instances' (a list of rows)")


def _single_row(features: Any, schema: InputSchema) -> FloatArray:
    if type(features) is dict:
        return np.array([_named_row(features, schema, "features")])
    if type(features) is not list:
        raise bad(
            f"'features' must be an array of {schema.describe()} or an object by name, got {_kind(features)}"
        )
    if len(features) != schema.n_features or not set(map(type, features)) <= _NUMBER_TYPES:
        if features and all(isinstance(v, list) for v in features):
            raise bad("'features' must be one flat row (1-D); to send several rows use 'instances'")
        if len(features) != schema.n_features:
            raise bad(f"'features' has {len(features)} values, expected {schema.describe()}")
        for j, value in enumerate(features):
            if (problem := _value_problem(value)) is not None:
                raise bad(f"features[{j}] ({schema.column(j)}) {problem}")
    try:
        matrix = np.array([features], dtype=np.float64)
    except OverflowError:
        for j, value in enumerate(features):
            if (problem := _value_problem(value)) is not None:
                raise bad(f"features[{j}] ({schema.column(j)}) {problem}") from None
        raise bad("'features' could not be read as numbers") from None
    _finite_or_raise(matrix, schema, "features", single=True)
    return matrix


# --- /feedback ----------------------------------------------------------------------------------


def parse_feedback(payload: Any, max_items: int) -> list[tuple[str, str | float]]:
    """``(request_id, label)`` pairs from one object or an array of them."""
    items = payload if type(payload) is list else [payload]
    if not items:
        raise bad("feedback list is empty")
    if len(items) > max_items:
        raise RequestError(413, f"feedback has {len(items)} items, more than the limit of {max_items}")
    out: list[tuple[str, str | float]] = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if type(payload) is list else "feedback"
        if type(item) is not dict:
            raise bad(f"{where} must be an object with 'request_id' and 'label', got {_kind(item)}")
        request_id = item.get("request_id")
        if type(request_id) is not str or not request_id or len(request_id) > MAX_ID_LENGTH:
            raise bad(f"{where}.request_id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
        label = item.get("label")
        if type(label) is str or (type(label) in _NUMBER_TYPES and _value_problem(label) is None):
            # Keep ints as ints: the monitor matches labels to predicted classes by value.
            out.append((request_id, cast("str | float", label)))
        else:
            raise bad(f"{where}.label must be a string or a finite number, got {_kind(label)}")
    return out
