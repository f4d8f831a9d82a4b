"""Open Inference Protocol v2 (KServe / Triton / MLServer) request and response tensors.

Supports the JSON tensor form (``data`` flat or nested, row-major) and the binary tensor
extension that ``tritonclient.http`` uses by default (``Inference-Header-Content-Length``: a
JSON header followed by raw little-endian tensor bytes), in both directions.

Inputs: one tensor of shape ``[rows, n_features]`` (MLServer's sklearn runtime does the
same), or one tensor per feature named after it, each of shape ``[rows]`` or ``[rows, 1]``.
Outputs: ``predict`` (labels) and, for classifiers, ``predict_proba`` (``[rows, classes]``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from mlops_operator.serving.request_validation import (
    _NUMBER_TYPES,
    MAX_ID_LENGTH,
    FloatArray,
    InputSchema,
    RequestError,
    _kind,
    _value_problem,
    bad,
    loads,
)

# v2 datatype -> little-endian numpy dtype, for numeric tensors.
NUMERIC_DATATYPES: dict[str, str] = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "<i1",
    "UINT64": "<u8",
    "UINT32": "<u4",
    "UINT16": "<u2",
    "UINT8": "<u1",
}
ALL_DATATYPES = {*NUMERIC_DATATYPES, "BOOL", "BYTES"}
OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"


@dataclass(frozen=True)
class InferRequest:
    """A validated v2 request: the matrix, the request id and which outputs to return how."""

    matrix: FloatArray
    request_id: str | None
    # output name -> whether to send it as binary
    outputs: dict[str, bool]


def split_binary(body: bytes, header_length: int | None) -> tuple[Any, bytes]:
    """The JSON header (parsed) and the binary tail of a request body."""
    if header_length is None:
        return loads(body), b""
    if header_length < 0 or header_length > len(body):
        raise bad(f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)")
    return loads(body[:header_length]), body[header_length:]


def _shape(value: Any, where: str) -> list[int]:
    if type(value) is not list or not all(type(d) is int and d >= 0 for d in value):
        raise bad(f"{where}.shape must be an array of non-negative integers, got {_kind(value)}")
    return list(value)


def _flatten(data: Any, shape: list[int], where: str) -> list[Any]:
    """Row-major flat values from flat or nested ``data``, checked against ``shape``."""
    if type(data) is not list:
        raise bad(f"{where}.data must be an array, got {_kind(data)}")
    flat: list[Any] = data
    depth = 0
    # Nested data: peel one level at a time (C-level chain), never deeper than the shape says,
    # so a nesting bomb costs at most len(shape) passes.
    while flat and type(flat[0]) is list:
        depth += 1
        if depth >= max(len(shape), 1) or not all(type(v) is list for v in flat):
            raise bad(f"{where}.data is nested deeper than its shape {shape} or unevenly")
        flat = list(chain.from_iterable(flat))
    expected = math.prod(shape)
    if len(flat) != expected:
        raise bad(f"{where}.data has {len(flat)} values, shape {shape} needs {expected}")
    return flat


def _tensor(spec: Any, i: int, binary: bytes, offset: int) -> tuple[str, list[int], FloatArray, int]:
    """One input tensor as float64, returning its name, shape, values and the new offset."""
    where = f"inputs[{i}]"
    if type(spec) is not dict:
        raise bad(f"{where} must be an object, got {_kind(spec)}")
    name = spec.get("name")
    if type(name) is not str or not name:
        raise bad(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    shape = _shape(spec.get("shape"), where)
    datatype = spec.get("datatype")
    if datatype not in ALL_DATATYPES:
        raise bad(f"{where}.datatype {datatype!r} is not a v2 datatype ({', '.join(sorted(ALL_DATATYPES))})")
    if datatype not in NUMERIC_DATATYPES:
        raise bad(
            f"{where}.datatype {datatype} is not accepted: this model takes numeric tensors (e.g. FP64)"
        )
    params = spec.get("parameters") or {}
    if type(params) is not dict:
        raise bad(f"{where}.parameters must be an object")
    count = math.prod(shape)
    size = params.get("binary_data_size")
    if size is not None:
        dtype = np.dtype(NUMERIC_DATATYPES[datatype])
        if type(size) is not int or size != count * dtype.itemsize:
            raise bad(f"{where}: binary_data_size {size!r} does not match shape {shape} of {datatype}")
        if offset + size > len(binary):
            raise bad(f"{where}: binary data ends after {len(binary) - offset} of {size} bytes")
        values = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).astype(np.float64)
        offset += size
    else:
        flat = _flatten(spec.get("data"), shape, where)
        if not set(map(type, flat)) <= _NUMBER_TYPES:
            for j, value in enumerate(flat):
                if (problem := _value_problem(value)) is not None:
                    raise bad(f"{where}.data[{j}] {problem}")
        if datatype != "FP64" and datatype[0] in "IU" and float in set(map(type, flat)):
            raise bad(f"{where}: datatype {datatype} but data holds non-integers")
        try:
            values = np.array(flat, dtype=np.float64)
        except OverflowError:
            raise bad(f"{where}.data holds a number that overflows a 64-bit float") from None
        # JSON numbers are finite here: the parser refuses NaN, Infinity and 1e400, and an
        # integer too large for a float raised just above. Only raw bytes need the check.
        return name, shape, values, offset
    if not np.isfinite(values).all():
        j = int(np.argwhere(~np.isfinite(values))[0][0])
        raise bad(f"{where}.data[{j}] is not a finite number")
    return name, shape, values, offset


#: Datatypes whose JSON numbers the fast path takes as they are (integers are exact in float64
#: up to 2**53; narrower float types only round what the client meant).
_FAST_DATATYPES = frozenset({"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8"})


def _fast_matrix(header: dict[str, Any], binary: bytes, schema: InputSchema) -> FloatArray | None:
    """The common request's matrix in a few C-level steps, or None to take the full path.

    One JSON tensor ``[rows, n_features]`` of a numeric datatype, flat or nested data of plain
    numbers, no binary part: what MLServer's, KServe's and Triton's clients send for one row.
    Anything else (or anything wrong) goes through :func:`parse_infer`'s full validation, which
    names the offending field.
    """
    inputs = header.get("inputs")
    if binary or type(inputs) is not list or len(inputs) != 1:
        return None
    spec = inputs[0]
    if type(spec) is not dict or spec.get("parameters") or spec.get("datatype") not in _FAST_DATATYPES:
        return None
    shape, data, name = spec.get("shape"), spec.get("data"), spec.get("name")
    if (
        type(name) is not str
        or not name
        or (schema.feature_names is not None and name in schema.index)
        or type(shape) is not list
        or len(shape) != 2
        or type(shape[0]) is not int
        or shape[1] != schema.n_features
        or type(shape[1]) is not int
        or not 0 < shape[0] <= schema.max_rows
        or type(data) is not list
    ):
        return None
    if data and type(data[0]) is list:
        if not all(type(row) is list for row in data):
            return None
        flat = list(chain.from_iterable(data))
    else:
        flat = data
    if len(flat) != shape[0] * shape[1] or not set(map(type, flat)) <= _NUMBER_TYPES:
        return None
    if spec["datatype"][0] == "I" and float in set(map(type, flat)):
        return None
    try:
        return np.array(flat, dtype=np.float64).reshape(shape[0], shape[1])
    except (OverflowError, ValueError):
        return None


def parse_infer(header: Any, binary: bytes, schema: InputSchema, is_classifier: bool) -> InferRequest:
    """Validate a v2 inference request into a matrix of shape ``[rows, n_features]``."""
    if type(header) is dict and (matrix := _fast_matrix(header, binary, schema)) is not None:
        request_id = header.get("id")
        if request_id is None or (type(request_id) is str and len(request_id) <= MAX_ID_LENGTH):
            return InferRequest(matrix=matrix, request_id=request_id, outputs=_outputs(header, is_classifier))
    if type(header) is not dict:
        raise bad(f"body must be a JSON object with 'inputs', got {_kind(header)}")
    request_id = header.get("id")
    if request_id is not None and (type(request_id) is not str or len(request_id) > MAX_ID_LENGTH):
        raise bad(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    inputs = header.get("inputs")
    if type(inputs) is not list or not inputs:
        raise bad("'inputs' must be a non-empty array of tensors")
    offset = 0
    tensors = []
    for i, spec in enumerate(inputs):
        name, shape, values, offset = _tensor(spec, i, binary, offset)
        tensors.append((name, shape, values))
    if len(tensors) == 1 and (schema.feature_names is None or tensors[0][0] not in schema.index):
        name, shape, values = tensors[0]
        if len(shape) != 2:
            raise bad(
                f"input {name!r} has shape {shape}: expected a 2-D tensor [rows, {schema.n_features}] "
                f"of {schema.describe()}"
            )
        if shape[1] != schema.n_features:
            raise bad(f"input {name!r} has {shape[1]} columns, expected {schema.describe()}")
        matrix = values.reshape(shape)
    else:
        matrix = _columns_by_name(tensors, schema)
    rows = matrix.shape[0]
    if rows == 0:
        raise bad("the input tensor has zero rows; send at least one")
    if rows > schema.max_rows:
        raise RequestError(413, f"the input tensor has {rows} rows, more than the limit of {schema.max_rows}")
    return InferRequest(matrix=matrix, request_id=request_id, outputs=_outputs(header, is_classifier))


def _columns_by_name(tensors: list[tuple[str, list[int], FloatArray]], schema: InputSchema) -> FloatArray:
    if schema.feature_names is None:
        raise bad(
            f"send one input tensor of shape [rows, {schema.n_features}]: this model's features have no names"
        )
    index = schema.index
    unknown = [n for n, _, _ in tensors if n not in index]
    given = {n for n, _, _ in tensors}
    missing = [n for n in schema.feature_names if n not in given]
    if unknown or missing or len(given) != len(tensors):
        raise bad(
            "one tensor per feature expected: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(map(repr, missing[:10]))}" if missing else "",
                    f"unknown {', '.join(map(repr, unknown[:10]))}" if unknown else "",
                    "duplicate names" if len(given) != len(tensors) else "",
                )
                if part
            )
        )
    rows = {len(values) for _, _, values in tensors}
    for name, shape, _ in tensors:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad(f"input {name!r} has shape {shape}: a per-feature tensor is [rows] or [rows, 1]")
    if len(rows) != 1:
        raise bad("per-feature tensors have different numbers of rows")
    columns = dict((name, values) for name, _, values in tensors)
    return np.column_stack([columns[n] for n in schema.feature_names])


#: What is returned when the request names no outputs and sets no parameters (never mutated).
_DEFAULT_OUTPUTS = {
    True: {OUTPUT_PREDICT: False, OUTPUT_PROBA: False},
    False: {OUTPUT_PREDICT: False},
}


def _outputs(header: dict[str, Any], is_classifier: bool) -> dict[str, bool]:
    if "outputs" not in header and "parameters" not in header:
        return _DEFAULT_OUTPUTS[is_classifier]
    available = [OUTPUT_PREDICT, OUTPUT_PROBA] if is_classifier else [OUTPUT_PREDICT]
    params = header.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if type(params) is dict else False
    requested = header.get("outputs")
    if requested is None:
        return dict.fromkeys(available, default_binary)
    if type(requested) is not list:
        raise bad("'outputs' must be an array")
    out: dict[str, bool] = {}
    for i, spec in enumerate(requested):
        name = spec.get("name") if type(spec) is dict else None
        if name not in available:
            raise bad(f"outputs[{i}]: unknown output {name!r}; this model has {', '.join(available)}")
        oparams = spec.get("parameters") or {}
        out[name] = (
            bool(oparams.get("binary_data", default_binary)) if type(oparams) is dict else default_binary
        )
    return out


def _bytes_tensor(labels: list[Any]) -> bytes:
    parts = []
    for label in labels:
        raw = str(label).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def build_response(
    request: InferRequest,
    labels: list[Any],
    probabilities: list[list[float]] | None,
    *,
    model_name: str,
    model_version: str,
    label_datatype: str,
    request_id: str,
) -> tuple[dict[str, Any], bytes]:
    """The JSON part of the response and the binary tail (empty when nothing is binary)."""
    rows = len(labels)
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for name, binary in request.outputs.items():
        if name == OUTPUT_PREDICT:
            datatype, shape, data = label_datatype, [rows], labels
        else:
            width = len(probabilities[0]) if probabilities else 0
            datatype, shape = "FP64", [rows, width]
            data = list(chain.from_iterable(probabilities or []))
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                raw = _bytes_tensor(data)
            else:
                raw = np.asarray(data, dtype="<i8" if datatype == "INT64" else "<f8").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = data
        outputs.append(out)
    body = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request.request_id or request_id,
        "outputs": outputs,
    }
    return body, b"".join(tail)
