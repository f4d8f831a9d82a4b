"""Argo CD health checks of the three kinds, run as Argo CD runs them: a real Lua 5.1.

Argo CD keeps each script as ``<group>/<Kind>/health.lua`` beside ``health_test.yaml`` (cases:
an input object and the expected ``healthStatus``) and ``testdata/``; its own test loads each
input, hands it to gopher-lua (a Lua 5.1) as the global ``obj`` and compares status *and*
message. This does the same with lupa's bundled Lua 5.1 (``lupa.lua51``): objects become
tables with string keys, arrays 1-based tables, numbers Lua numbers, and null is nil, as
Argo CD's ``decodeValue`` does; the libraries are the ones Argo CD opens without
``useOpenLibs`` (no io, os, debug, file loading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parent.parent
HEALTH = ROOT / "charts" / "mlops-operator" / "argocd" / "mlops.dev"
KINDS = ("TrainingJob", "ModelVersion", "InferenceService")
#: The health codes Argo CD accepts from a script (anything else becomes Unknown).
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
#: The statuses each kind must be able to report.
REQUIRED = {
    "TrainingJob": {"Healthy", "Progressing", "Degraded", "Suspended"},
    "ModelVersion": {"Healthy", "Progressing", "Degraded"},
    "InferenceService": {"Healthy", "Progressing", "Degraded", "Suspended"},
}
#: Bad input every kind has a fixture for: it must read as Progressing or Healthy, not fail.
BAD_INPUT = ("no-status", "unknown-fields", "empty")


class _KubernetesYamlLoader(yaml.SafeLoader):
    """YAML as the API server's JSON sees it: a timestamp stays a string."""


_KubernetesYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_KubernetesYamlLoader)


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, 1):
            if item is not None:
                table[index] = _to_lua(lua, item)
        return table
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)  # Lua 5.1 has one number type (gopher-lua: float64)
    raise TypeError(f"not a JSON value: {value!r}")


def run_health(kind: str, obj: Any) -> dict[str, str]:
    """The ``hs`` table of ``<kind>/health.lua`` for ``obj``, as Argo CD reads it."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=False)
    assert lua.eval("_VERSION") == "Lua 5.1"
    for unsafe in ("io", "os", "debug", "dofile", "loadfile"):
        lua.globals()[unsafe] = None
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute((HEALTH / kind / "health.lua").read_text())
    assert lua.eval("type")(result) == "table", f"{kind}/health.lua returned {result!r}, not a table"
    return {key: result[key] for key in ("status", "message") if result[key] is not None}


def _cases() -> list[Any]:
    params = []
    for kind in KINDS:
        tests = _load(HEALTH / kind / "health_test.yaml")["tests"]
        for case in tests:
            params.append(pytest.param(kind, case, id=f"{kind}/{Path(case['inputPath']).stem}"))
    return params


@pytest.mark.parametrize(("kind", "case"), _cases())
def test_health_script_gives_the_expected_status_and_message(kind: str, case: dict[str, Any]) -> None:
    obj = _load(HEALTH / kind / case["inputPath"])
    expected = {"status": case["healthStatus"]["status"], "message": case["healthStatus"].get("message", "")}
    assert run_health(kind, obj) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_every_fixture_is_a_case_and_every_status_is_covered(kind: str) -> None:
    tests = _load(HEALTH / kind / "health_test.yaml")["tests"]
    used = {case["inputPath"] for case in tests}
    present = {f"testdata/{path.name}" for path in (HEALTH / kind / "testdata").glob("*.yaml")}
    assert used == present, (
        f"fixtures without a case: {present - used}; cases without a file: {used - present}"
    )
    statuses = {case["healthStatus"]["status"] for case in tests}
    assert statuses <= HEALTH_CODES
    assert REQUIRED[kind] <= statuses, f"{kind}: no case for {REQUIRED[kind] - statuses}"
    assert all(case["healthStatus"].get("message") for case in tests), "every status says why"
    for name in BAD_INPUT:
        (case,) = [c for c in tests if c["inputPath"] == f"testdata/{name}.yaml"]
        assert case["healthStatus"]["status"] in ("Progressing", "Healthy"), f"{kind}/{name}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {"status": None},
        {"status": []},
        {"status": "Ready"},
        {"metadata": {"generation": 3}, "status": {"observedGeneration": "3"}},
        {"spec": None, "status": {"conditions": [None, "x", {"type": None}, {"type": "Ready", "status": 1}]}},
        {"status": {"rollout": {"phase": 4}, "stable": "2", "phase": ["Validated"]}},
    ],
    ids=lambda value: repr(value)[:40],
)
def test_odd_objects_never_raise_a_lua_error(kind: str, obj: Any) -> None:
    assert run_health(kind, obj)["status"] in ("Progressing", "Healthy")


def test_the_checker_catches_a_wrong_expectation() -> None:
    # The comparison is exact: a script returning something else must fail the case.
    serving = _load(HEALTH / "InferenceService" / "testdata" / "serving.yaml")
    assert run_health("InferenceService", serving) != {"status": "Healthy", "message": "Serving"}
    rolled_back = _load(HEALTH / "InferenceService" / "testdata" / "auto-rolled-back-pinned.yaml")
    assert run_health("InferenceService", rolled_back)["status"] == "Degraded"
