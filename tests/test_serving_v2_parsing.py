"""The v2 request parser's fast path gives exactly what the full validation gives, or defers to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlops_operator.serving import v2
from mlops_operator.serving.request_validation import InputSchema, RequestError

SCHEMA = InputSchema(3, ["a", "b", "c"], max_rows=10)


def tensor(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "input-0",
        "shape": [2, 3],
        "datatype": "FP64",
        "data": [1, 2.5, 3, 4, 5, 6],
    }
    spec.update(over)
    return {"inputs": [spec]}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(tensor(), id="flat"),
        pytest.param(tensor(data=[[1, 2.5, 3], [4, 5, 6]]), id="nested"),
        pytest.param(tensor(datatype="FP32"), id="fp32"),
        pytest.param(tensor(datatype="INT64", data=[1, 2, 3, 4, 5, 6]), id="int64"),
        pytest.param({**tensor(), "id": "r1", "outputs": [{"name": "predict"}]}, id="id-and-outputs"),
    ],
)
def test_fast_path_equals_full_validation(header: dict[str, Any]) -> None:
    fast = v2._fast_matrix(header, b"", SCHEMA)
    assert fast is not None
    full = v2.parse_infer(header, b"", SCHEMA, is_classifier=True)
    slow_header = {**header, "inputs": [{**header["inputs"][0], "parameters": {"content_type": "np"}}]}
    assert v2._fast_matrix(slow_header, b"", SCHEMA) is None  # parameters: the full path
    slow = v2.parse_infer(slow_header, b"", SCHEMA, is_classifier=True)
    assert np.array_equal(full.matrix, slow.matrix) and np.array_equal(fast, slow.matrix)
    assert full.request_id == slow.request_id and full.outputs == slow.outputs


@pytest.mark.parametrize(
    ("header", "field"),
    [
        pytest.param(tensor(shape=[2, 4]), "shape [2, 4]", id="wrong-width"),
        pytest.param(tensor(data=[1, 2, 3, 4, 5]), "5 values", id="too-few-values"),
        pytest.param(tensor(data=[1, 2, "x", 4, 5, 6]), "data[2]", id="a-string"),
        pytest.param(tensor(data=[1, 2, True, 4, 5, 6]), "data[2]", id="a-boolean"),
        pytest.param(tensor(data=[[1, 2, 3], 4, 5, 6]), "nested", id="ragged-nesting"),
        pytest.param(tensor(datatype="INT64"), "non-integers", id="int-with-floats"),
        pytest.param(tensor(shape=[0, 3], data=[]), "zero rows", id="zero-rows"),
        pytest.param({**tensor(), "id": 7}, "'id'", id="id-not-a-string"),
    ],
)
def test_what_the_fast_path_refuses_gets_the_full_paths_error(header: dict[str, Any], field: str) -> None:
    assert v2._fast_matrix(header, b"", SCHEMA) is None or "id" in header
    with pytest.raises(RequestError) as caught:
        v2.parse_infer(header, b"", SCHEMA, is_classifier=True)
    assert 400 <= caught.value.status < 500 and field in caught.value.message
