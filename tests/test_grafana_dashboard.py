"""The Grafana dashboard queries only series the operator and the model servers export.

Every PromQL expression of the dashboard (panel targets and template variables) is checked
twice: ``promtool`` parses it (as a recording rule, after Grafana's variables are filled in),
and a small PromQL reader takes out each metric name, the labels its matchers use and the
labels of every ``by``/``on`` clause, which must all be exported. What is exported is read
from the real code: the operator's metrics after its public recording functions ran once,
and a model server's registry with one model attached. A query of a metric or label that
does not exist fails, and the reader itself is tested on such queries.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from tests import tools

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "mlops-operator" / "dashboards" / "mlops-operator.json"
#: Labels Prometheus adds to every scraped series (kubernetes_sd / prometheus-operator targets).
TARGET_LABELS = frozenset({"namespace", "pod", "instance", "job"})
#: Grafana's own variables, and what they stand for when promtool parses an expression.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__range": "1h", "__interval": "1m"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
#: Aggregation operators: ``sum by (x) (...)`` has its clause between the name and the "(".
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
AGGREGATIONS |= {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_TOKEN = re.compile(
    r"""\s+|(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"""|(?P<number>\d[\w.]*)"""
    r"""|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"""
    r"""|(?P<op>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/^%@])"""
)


# --- what is exported ---------------------------------------------------------------------


def _samples(registry: Any) -> dict[str, set[str]]:
    exported: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def _operator_series() -> dict[str, set[str]]:
    """The operator's series, from its one registry after each recording function ran once."""
    from mlops_operator.controllers import operator_metrics as m

    ns, name, kind = "dashboard-test", "probe", "DashboardTest"
    with m.reconcile_metrics(kind):
        pass
    with pytest.raises(kopf.TemporaryError), m.reconcile_metrics(kind):
        raise kopf.TemporaryError("probe")
    m.set_rollout_metrics(ns, name, "Progressing", 25)
    m.record_rollout_event(ns, name, "Promoted", "")
    m.record_rollout_event(ns, name, "RolledBack", "AnalysisFailed")
    m.record_retrain_requested(ns, name, "drift in 3 of the last 5 checks")
    run = {"phase": "Succeeded", "reason": "Succeeded", "startTime": "2025-03-01T10:00:00Z"}
    m.record_run_finished(ns, name, {**run, "completionTime": "2025-03-01T10:02:00Z"})
    try:
        return _samples(m.REGISTRY)
    finally:
        m.forget_rollout_metrics(ns, name)
        m.forget_retrain_metrics(ns, name)
        m.forget_trainingjob_metrics(ns, name)
        m.RECONCILE_TOTAL.remove(kind, "success")
        m.RECONCILE_TOTAL.remove(kind, "requeue")
        m.RECONCILE_ERRORS.remove(kind)
        m.RECONCILE_TIME.remove(kind)


def _server_series() -> dict[str, set[str]]:
    """A model server's series, from a registry with one model version and every gauge set."""
    from prometheus_client import CollectorRegistry

    from mlops_operator.monitoring.server_metrics import FeatureSample, MonitorSample, ServerMetrics

    class Source:
        def metric_sample(self) -> MonitorSample:
            return MonitorSample(
                model="iris",
                version="1",
                drift_samples=100,
                features=[FeatureSample("petal_width", "ks", 0.4, 0.01, True)],
                drift_share=0.25,
                dataset_drift=False,
                predictions_total={"setosa": 3},
                class_ratio={"setosa": 1.0},
                prediction_drift_psi=0.1,
                accuracy=0.9,
                rmse=0.1,
                mae=0.1,
                labelled_samples=10,
                feedback_total={"matched": 10},
                pending_predictions=2,
            )

    registry = CollectorRegistry()
    recorder = ServerMetrics.for_registry(registry).attach(Source(), "iris", "1")
    recorder.record("/predict", 200, 0.01)
    return _samples(registry)


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    series = _operator_series()
    for name, labels in _server_series().items():
        series.setdefault(name, set()).update(labels)
    return series


# --- reading PromQL -----------------------------------------------------------------------


@dataclass
class Selector:
    metric: str
    matchers: set[str] = field(default_factory=set)


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r}")
        position = match.end()
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group()))
    return tokens


def read_promql(expr: str) -> Query:
    """The metrics (with their matchers' labels) and the grouping labels of one expression."""
    tokens = _tokens(expr)
    query = Query()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "op" and text == "[":
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == "]") + 1
            continue
        if kind == "ident" and text.lower() in GROUPING:
            if following == "(":
                close = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")")
                query.grouping |= {t for k, t in tokens[i + 2 : close] if k == "ident"}
                i = close
        elif kind == "ident" and text.lower() not in KEYWORDS | AGGREGATIONS and following != "(":
            selector = Selector(text)
            if following == "{":
                close = next(j for j in range(i, len(tokens)) if tokens[j][1] == "}")
                inner = tokens[i + 2 : close]
                selector.matchers = {t for j, (k, t) in enumerate(inner) if k == "ident" and j % 4 == 0}
                i = close
            query.selectors.append(selector)
        i += 1
    return query


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in ``expr`` is not exported: unknown metrics, matcher labels, grouping labels."""
    query = read_promql(expr)
    found = []
    if not query.selectors:
        found.append("selects no metric")
    for selector in query.selectors:
        labels = exported.get(selector.metric)
        if labels is None:
            found.append(f"{selector.metric} is not exported")
            continue
        for label in sorted(selector.matchers - labels - TARGET_LABELS):
            found.append(f"{selector.metric} has no label {label}")
        for label in sorted(query.grouping - labels - TARGET_LABELS):
            found.append(f"{selector.metric} has no label {label} (grouped by)")
    return found


# --- the dashboard ------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (inside label_values)."""
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query}"
            found.append((f"variable {variable['name']}", f"count by ({match.group(2)}) ({match.group(1)})"))
    return found


def _filled(expr: str, variables: set[str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES or name in variables, f"unknown variable ${name} in {expr}"
        return GRAFANA_VARIABLES.get(name, "x")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _variables(dashboard: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in dashboard["templating"]["list"]}


def test_dashboard_queries_only_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    dashboard = _dashboard()
    variables = _variables(dashboard)
    failures = [
        f"{where}: {found}"
        for where, expr in _expressions(dashboard)
        for found in problems(_filled(expr, variables), exported)
    ]
    assert not failures, "\n".join(failures)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    dashboard = _dashboard()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": _filled(expr, _variables(dashboard))}
        for n, (_, expr) in enumerate(_expressions(dashboard))
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    try:
        promtool = tools.promtool()
    except tools.ToolMissingError as exc:
        pytest.fail(str(exc))
    result = subprocess.run(
        [str(promtool), "check", "rules", "rules.yaml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = _dashboard()
    text = " ".join(expr for _, expr in _expressions(dashboard))
    for metric in (
        "mlops_model_requests_total",
        "mlops_model_request_duration_seconds_bucket",
        "mlops_model_drift_share",
        "mlops_model_drift_score",
        "mlops_model_accuracy",
        "mlops_model_labelled_samples",
        "mlops_rollout_canary_weight",
        "mlops_rollout_phase",
        "mlops_retrains_requested_total",
        "mlops_trainingjob_runs_total",
        "mlops_trainingjob_run_duration_seconds_bucket",
    ):
        assert metric in text, f"no panel shows {metric}"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what the panel shows"
    assert dashboard["uid"] == "mlops-operator" and "id" not in dashboard


@pytest.mark.parametrize(
    ("expr", "wanted"),
    [
        ("rate(mlops_model_bogus_total[5m])", "mlops_model_bogus_total is not exported"),
        ("mlops_model_request_duration_seconds", "mlops_model_request_duration_seconds is not exported"),
        ('mlops_model_accuracy{feature="x"}', "mlops_model_accuracy has no label feature"),
        ("sum by (kind) (mlops_model_accuracy)", "mlops_model_accuracy has no label kind (grouped by)"),
        ("mlops_rollout_canary_weight * on (phase) mlops_rollout_phase", "has no label phase"),
        ("vector(1)", "selects no metric"),
    ],
)
def test_the_checker_refuses_what_is_not_exported(
    expr: str, wanted: str, exported: dict[str, set[str]]
) -> None:
    assert any(wanted in found for found in problems(expr, exported)), problems(expr, exported)


@pytest.mark.parametrize(
    "expr",
    [
        'histogram_quantile(0.99, sum by (le, version) (rate(mlops_model_request_duration_seconds_bucket{code=~"5.."}[5m])))',
        "topk(5, max by (feature, method) (mlops_model_drift_score offset 5m))",
        'sum without (pod) (mlops_model_drift_share{namespace="ml", model=~"iris|x"}) > bool 0.5',
        "increase(mlops_trainingjob_runs_total[1h]) / ignoring (reason) group_left mlops_trainingjob_runs_total",
    ],
)
def test_the_checker_accepts_what_is_exported(expr: str, exported: dict[str, set[str]]) -> None:
    assert problems(expr, exported) == []
