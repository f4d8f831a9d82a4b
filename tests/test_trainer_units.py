"""Pure parts of the trainer: allow-list, search plan, validation, profile, data loading, result JSON."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_operator.api.trainingjob import Dataset, Search
from mlops_operator.monitoring.reference_profile import ReferenceProfile
from mlops_operator.trainer import fit, tracking, train_command
from mlops_operator.trainer.data_validation import column_kinds, format_problems, validate
from mlops_operator.trainer.dataset_loading import detect_format, load_dataset, load_sklearn, read_bytes
from mlops_operator.trainer.profile_builder import build_profile, categorical_profile, numeric_profile
from mlops_operator.trainer.trainer_errors import TrainerError

DATA = Path(__file__).parent / "data" / "trainer"


# --- allow-list -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "task"),
    [
        ("sklearn.linear_model.LogisticRegression", "classification"),
        ("sklearn.svm.SVC", "classification"),
        ("sklearn.ensemble.HistGradientBoostingRegressor", "regression"),
        ("sklearn.linear_model.Ridge", "regression"),
    ],
    ids=["logreg", "svc", "hgb-regressor", "ridge"],
)
def test_allowed_estimators_resolve(dotted: str, task: str) -> None:
    assert fit.task_of(dotted) == task
    assert fit.resolve_estimator_class(dotted).__name__ == dotted.rsplit(".", 1)[1]


@pytest.mark.parametrize(
    "dotted",
    [
        "sklearn.cluster.KMeans",
        "sklearn.os.system",
        "sklearn.linear_model.LogisticRegression.__init__",
        "sklearn.utils._testing.ignore_warnings",
        "sklearn.LogisticRegression",
    ],
    ids=["clusterer", "os-system", "dunder", "private-module", "wrong-path"],
)
def test_not_allowed_is_refused_without_import(dotted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(
        "mlops_operator.trainer.fit.importlib.import_module", lambda name: imported.append(name)
    )
    with pytest.raises(TrainerError) as info:
        fit.resolve_estimator_class(dotted)
    assert info.value.reason == "EstimatorNotAllowed"
    assert dotted in info.value.message and "allow-list" in info.value.message
    assert imported == []


def test_unknown_param_names_the_param_and_a_suggestion() -> None:
    with pytest.raises(TrainerError) as info:
        fit.check_param_names(
            "sklearn.linear_model.LogisticRegression", ["max_iters"], {"max_iter", "C"}, "x"
        )
    assert info.value.reason == "InvalidHyperparameters"
    assert "'max_iters'" in info.value.message and "did you mean 'max_iter'" in info.value.message


def test_rejected_value_is_caught_before_fit() -> None:
    with pytest.raises(TrainerError) as info:
        fit.check_param_values("sklearn.linear_model.LogisticRegression", {"C": -1}, "spec.estimator.params")
    assert info.value.reason == "InvalidHyperparameters"
    assert "'C'" in info.value.message and "-1" in info.value.message


# --- search plan ----------------------------------------------------------------------------------


def test_grid_is_complete_under_the_cap() -> None:
    plan = fit.plan_search(Search(type="grid", params={"C": [0.1, 1], "max_iter": [100, 200]}), seed=1)
    assert len(plan.trials) == 4 and not plan.truncated
    assert {"C": 0.1, "max_iter": 100} in plan.trials


def test_grid_truncation_is_seeded_and_stated() -> None:
    search = Search(type="grid", params={"a": list(range(5)), "b": list(range(4))}, max_trials=6)
    first, second = fit.plan_search(search, seed=7), fit.plan_search(search, seed=7)
    assert first.trials == second.trials and len(first.trials) == 6
    assert first.truncated and "20 combinations truncated to maxTrials=6" in first.note
    assert len({b["b"] for b in first.trials}) > 1  # not just the first row of the grid


def test_random_ranges_map_to_distributions() -> None:
    search = Search(
        type="random",
        params={
            "C": {"low": 0.001, "high": 100, "log": True},
            "alpha": {"low": 0.0, "high": 1.0},
            "n": {"low": 2, "high": 5},
            "kernel": ["rbf", "linear"],
            "fixed": 3,
        },
        max_trials=25,
        seed=3,
    )
    plan = fit.plan_search(search, seed=3)
    assert len(plan.trials) == 25
    assert all(0.001 <= t["C"] <= 100 for t in plan.trials)
    assert all(0.0 <= t["alpha"] <= 1.0 for t in plan.trials)
    assert {t["n"] for t in plan.trials} <= {2, 3, 4, 5} and all(type(t["n"]) is int for t in plan.trials)
    assert {t["kernel"] for t in plan.trials} == {"rbf", "linear"} and {t["fixed"] for t in plan.trials} == {
        3
    }
    assert plan.trials == fit.plan_search(search, seed=3).trials


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"C": {"low": 1, "high": 1}}, "below high"),
        ({"C": {"low": 0, "high": 1, "log": True}}, "low > 0"),
        ({"C": {"min": 0, "max": 1}}, "{low, high, log}"),
        ({"C": []}, "empty list"),
    ],
    ids=["empty-range", "log-from-zero", "wrong-keys", "empty-list"],
)
def test_bad_search_space_is_invalid_spec(params: dict[str, Any], words: str) -> None:
    with pytest.raises(TrainerError) as info:
        fit.plan_search(Search(type="random", params=params, max_trials=3), seed=0)
    assert info.value.reason == "InvalidSpec" and words in info.value.message


def test_grid_refuses_a_range() -> None:
    with pytest.raises(TrainerError, match=r"use search\.type: random"):
        fit.plan_search(Search(type="grid", params={"C": {"low": 1, "high": 2}}), seed=0)


# --- validation -----------------------------------------------------------------------------------


def _frame(rows: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "color": rng.choice(["red", "blue"], size=rows),
            "y": ["a", "b", "c"] * (rows // 3),
        }
    )


def _dataset(**kwargs: Any) -> Dataset:
    return Dataset.model_validate({"uri": "file:///x.csv", "target": "y", **kwargs})


def test_clean_data_has_no_problems() -> None:
    assert validate(_frame(), _dataset(), task="classification", test_size=0.2, cv=3) == []


@pytest.mark.parametrize(
    ("mutate", "dataset", "task", "words"),
    [
        (lambda f: f.drop(columns=["y"]), {}, "classification", ["target column 'y' not found"]),
        (lambda f: f.head(9), {"validation": {"minRows": 10}}, "classification", ["9 rows", "minRows=10"]),
        (
            lambda f: f.assign(x=[None] * 6 + list(f.x[6:])),
            {"validation": {"maxNullFraction": "0.1"}},
            "classification",
            ["'x'", "20.0% null", "maxNullFraction=0.1"],
        ),
        (
            lambda f: f.assign(y=["a"] * 28 + ["b"] * 2),
            {"validation": {"minClassFraction": "0.1"}},
            "classification",
            ["class imbalance", "'b' 6.7%"],
        ),
        (lambda f: f.assign(y=["a"] * 30), {}, "classification", ["1 class", "at least 2"]),
        (
            lambda f: f.assign(y=["a"] * 29 + ["b"]),
            {},
            "classification",
            ["fewer than 2 rows", "'b' (1 row)"],
        ),
        (
            lambda f: f.assign(x=["1.5"] * 25 + ["abc"] * 5),
            {},
            "classification",
            ["numeric column 'x'", "non-numeric", "'abc'"],
        ),
        (
            lambda f: f,
            {"validation": {"schema": [{"name": "color", "dtype": "float"}]}},
            "classification",
            ["'color' should be float", "non-numeric values"],
        ),
        (
            lambda f: f,
            {"validation": {"schema": [{"name": "missing"}]}},
            "classification",
            ["declared column 'missing' not found"],
        ),
        (
            lambda f: f,
            {"validation": {"schema": [{"name": "x", "min": "5"}]}},
            "classification",
            ["values below min 5"],
        ),
        (
            lambda f: f,
            {"validation": {"schema": [{"name": "color", "dtype": "string", "allowed": ["red"]}]}},
            "classification",
            ["outside allowed", "'blue'"],
        ),
        (lambda f: f, {"features": ["x", "nope"]}, "classification", ["feature columns ['nope'] not found"]),
        (lambda f: f, {}, "regression", ["regressor needs numbers"]),
    ],
    ids=[
        "no-target",
        "too-few-rows",
        "too-many-nulls",
        "imbalance",
        "one-class",
        "singleton-class",
        "text-in-numeric",
        "schema-dtype",
        "schema-missing",
        "schema-min",
        "schema-allowed",
        "missing-feature",
        "regression-text-target",
    ],
)
def test_validation_problems(mutate: Any, dataset: dict[str, Any], task: Any, words: list[str]) -> None:
    problems = validate(mutate(_frame()), _dataset(**dataset), task=task, test_size=0.2)
    text = format_problems(problems)
    for word in words:
        assert word in text, text


def test_all_problems_reported_together() -> None:
    frame = _frame().drop(columns=["y"]).head(5)
    dataset = _dataset(validation={"minRows": 10, "schema": [{"name": "color", "dtype": "int"}]})
    problems = validate(frame, dataset, task="classification", test_size=0.2)
    assert len(problems) == 3
    many = format_problems([f"p{i}" for i in range(13)])
    assert many.startswith("13 data problems") and "p9" in many and "p10" not in many and "3 more" in many


def test_declared_category_is_one_hot() -> None:
    frame = pd.DataFrame(
        {"zip": [1, 2, 3], "x": [1.0, 2.0, 3.0], "flag": [True, False, True], "y": [0, 1, 0]}
    )
    kinds = column_kinds(frame, _dataset(validation={"schema": [{"name": "zip", "dtype": "category"}]}))
    assert kinds.numeric == ["x"] and kinds.categorical == ["zip", "flag"]


# --- profile --------------------------------------------------------------------------------------


def test_numeric_profile_bins_the_way_the_server_does() -> None:
    series = pd.Series(np.arange(1000, dtype=float), name="x")
    profile = numeric_profile(series)
    assert profile.binning == "quantiles"
    assert len(profile.bin_edges) == 99 and profile.bin_counts == [10] * 100
    slots = np.searchsorted(profile.bin_edges, series.to_numpy(), side="left")
    assert np.bincount(slots).tolist() == profile.bin_counts
    assert profile.bin_frequencies == pytest.approx([0.01] * 100)
    assert profile.min == 0 and profile.max == 999 and profile.mean == pytest.approx(499.5)


def test_constant_column_gets_a_bin_and_nulls_are_counted() -> None:
    profile = numeric_profile(pd.Series([3.0, 3.0, None, 3.0], name="c"))
    # Binned by value: below 3, exactly 3, above 3.
    assert profile.binning == "values" and profile.bin_edges[1:] == [3.0] and profile.bin_edges[0] < 3.0
    assert profile.bin_counts == [0, 3, 0] and profile.bin_frequencies == [0.0, 1.0, 0.0]
    assert profile.null_fraction == pytest.approx(0.25)


def test_categorical_profile_keeps_the_top_categories() -> None:
    values = [f"c{i:03d}" for i in range(60) for _ in range(60 - i)]
    profile = categorical_profile(pd.Series(values, name="k"))
    assert len(profile.categories) == 50 and profile.categories[0] == "c000"
    assert sum(profile.category_frequencies) < 1.0
    assert profile.category_counts is not None and profile.category_counts[0] == 60
    assert profile.unlisted_count == sum(60 - i for i in range(50, 60))


def test_profile_of_iris_round_trips() -> None:
    loaded = load_sklearn("sklearn://iris", "species")
    frame = loaded.frame
    dataset = _dataset(target="species")
    columns = column_kinds(frame, dataset)
    features = fit.prepare_features(frame, columns)
    profile = build_profile(features, frame["species"], columns, task="classification", target="species")
    again = ReferenceProfile.model_validate_json(profile.model_dump_json())
    assert again.feature_names == list(features.columns) and again.classes == [
        "setosa",
        "versicolor",
        "virginica",
    ]
    assert again.class_frequencies == pytest.approx([1 / 3] * 3)


# --- data loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local http.server on 127.0.0.1 serving a temporary directory."""
    root = tmp_path_factory.mktemp("http")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_csv_over_http_and_file_hash_the_bytes(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    source = (DATA / "tiny.csv").read_bytes()
    (root / "tiny.csv").write_bytes(source)
    over_http = load_dataset(_dataset(uri=f"{base}/tiny.csv", target="label"))
    local = load_dataset(_dataset(uri=f"file://{DATA / 'tiny.csv'}", target="label"))
    assert over_http.sha256 == local.sha256 and over_http.rows == local.rows == 12
    assert list(local.frame.columns) == ["size", "color", "label"]


def test_parquet_by_extension(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "y": ["p", "q"]})
    frame.to_parquet(tmp_path / "d.parquet")
    loaded = load_dataset(_dataset(uri=f"file://{tmp_path / 'd.parquet'}"))
    assert loaded.frame.equals(frame)


@pytest.mark.parametrize(
    ("uri", "fmt", "expected"),
    [
        ("s3://b/k.csv", "auto", "csv"),
        ("https://h/x.parquet?sig=1", "auto", "parquet"),
        ("file:///x", "csv", "csv"),
    ],
    ids=["csv", "parquet-query", "declared"],
)
def test_detect_format(uri: str, fmt: str, expected: str) -> None:
    assert detect_format(uri, fmt) == expected


@pytest.mark.parametrize(
    ("uri", "reason", "transient", "words"),
    [
        ("file:///nonexistent/data.csv", "DatasetUnreachable", False, ["not found"]),
        ("HTTP/missing.csv", "DatasetUnreachable", False, ["not found", "HTTP 404"]),
        ("http://127.0.0.1:9/x.csv", "DatasetUnreachable", True, ["cannot connect"]),
        ("s3://bucket/key.csv", "DatasetUnreachable", False, ["mlops-operator[s3]"]),
        ("sklearn://mnist", "DatasetUnreachable", False, ["sklearn://iris"]),
        ("file:///x.txt", "InvalidSpec", False, ["spec.dataset.format"]),
        (
            f"file://{DATA / 'malformed.csv'}",
            "DatasetMalformed",
            False,
            ["not valid CSV", "Expected 3 fields"],
        ),
    ],
    ids=[
        "file-missing",
        "http-404",
        "connection-refused",
        "s3-without-s3fs",
        "unknown-bundled",
        "no-format",
        "malformed-csv",
    ],
)
def test_dataset_errors(
    uri: str, reason: str, transient: bool, words: list[str], http_root: tuple[str, Path]
) -> None:
    uri = uri.replace("HTTP", http_root[0])
    with pytest.raises(TrainerError) as info:
        load_dataset(_dataset(uri=uri))
    assert info.value.reason == reason and info.value.transient is transient
    for word in words:
        assert word in info.value.message, info.value.message


def test_size_limit_is_refused() -> None:
    with pytest.raises(TrainerError) as info:
        read_bytes(f"file://{DATA / 'tiny.csv'}", 50)
    assert info.value.reason == "DatasetMalformed" and "limit of 50 bytes" in info.value.message


# --- the result JSON ------------------------------------------------------------------------------


def test_result_stays_under_the_kubelet_limit() -> None:
    huge = {"status": "Failed", "reason": "DataValidationFailed", "message": "x" * 10_000}
    assert len(train_command.render(huge).encode()) < 4096
    success = {"status": "Succeeded", "modelName": "m", "params": {f"p{i}": "v" * 300 for i in range(40)}}
    text = train_command.render(success)
    assert len(text.encode()) < 4096 and json.loads(text)["modelName"] == "m"


def test_unwritable_termination_path_warns(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    train_command.emit(
        {"status": "Failed", "reason": "InvalidSpec", "message": "m"}, "/nonexistent-dir/termination-log"
    )
    assert "cannot write the termination message" in caplog.text
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reason"] == "InvalidSpec"


# --- the lookup of a version the run already registered ----------------------------------------------

IDENTITY = {
    "mlops.dev/run-name": "iris-x7k2p",
    "mlops.dev/namespace": "team-a",
    "mlops.dev/trainingjob": "iris",
}


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (
            IDENTITY,
            "name = 'm' AND tags.`mlops.dev/run-name` = 'iris-x7k2p' AND tags.`mlops.dev/namespace` = 'team-a'"
            " AND tags.`mlops.dev/trainingjob` = 'iris'",
        ),
        (
            {"mlops.dev/run-name": "mine", "mlops.dev/namespace": None},
            "name = 'm' AND tags.`mlops.dev/run-name` = 'mine'",
        ),
        ({"mlops.dev/run-name": "it's"}, """name = 'm' AND tags.`mlops.dev/run-name` = "it's\""""),
        ({"mlops.dev/run-name": """it's "x\""""}, None),
    ],
    ids=["cluster-run", "unset-tags-left-out", "single-quote", "both-quotes"],
)
def test_registration_filter(identity: dict[str, str | None], expected: str | None) -> None:
    assert tracking.registration_filter("m", identity) == expected


def _version(version: int, status: str = "READY", **tags: str) -> SimpleNamespace:
    return SimpleNamespace(
        name="m",
        version=str(version),
        status=status,
        tags={**IDENTITY, **tags},
        run_id=f"run{version}",
        source=f"s3://bucket/{version}/model",
    )


class FakeClient:
    """``MlflowClient``'s two calls the lookup makes, with canned answers."""

    versions: list[Any] = []
    error: Exception | None = None
    filters: list[str] = []

    def search_model_versions(self, filter_string: str) -> list[Any]:
        self.filters.append(filter_string)
        if self.error is not None:
            raise self.error
        return self.versions

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(
            info=SimpleNamespace(experiment_id="7", status="RUNNING"),
            data=SimpleNamespace(tags={"mlops.dev/best-trial": "1"}, params={"rows": "150"}),
        )


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr("mlflow.MlflowClient", FakeClient)
    monkeypatch.setattr(FakeClient, "versions", [])
    monkeypatch.setattr(FakeClient, "error", None)
    monkeypatch.setattr(FakeClient, "filters", [])
    return FakeClient


def test_lookup_takes_the_newest_ready_version_of_this_run(
    fake_client: type[FakeClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake_client.versions = [
        _version(3, "PENDING_REGISTRATION"),  # cut short: never reused
        _version(1),
        _version(2),
        _version(4, **{"mlops.dev/namespace": "team-b"}),  # another namespace's run of the same name
    ]
    found = tracking.find_registration("m", IDENTITY)
    assert found is not None
    assert (found.version, found.run_id, found.experiment_id, found.source) == (
        "2",
        "run2",
        "7",
        "s3://bucket/2/model",
    )
    assert found.run_params == {"rows": "150"} and found.run_status == "RUNNING"
    assert len(fake_client.filters) == 1  # one search, whatever the registry holds
    assert "version 3 of m from run iris-x7k2p is PENDING_REGISTRATION" in caplog.text
    assert "registered 2 versions of m (1, 2): reporting the newest" in caplog.text


def test_lookup_finds_nothing_when_only_failed_registrations(fake_client: type[FakeClient]) -> None:
    fake_client.versions = [_version(1, "FAILED_REGISTRATION")]
    assert tracking.find_registration("m", IDENTITY) is None


def test_lookup_with_mlflow_down_is_transient(fake_client: type[FakeClient]) -> None:
    import requests

    fake_client.error = requests.ConnectionError("Connection refused")
    with pytest.raises(TrainerError) as info:
        tracking.find_registration("m", IDENTITY)
    assert (info.value.reason, info.value.exit_code) == ("MLflowUnavailable", 1)
    assert "looking for a version of m from run iris-x7k2p" in info.value.message


def test_lookup_refused_by_the_registry_only_skips_the_check(
    fake_client: type[FakeClient], caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    fake_client.error = MlflowException("Invalid filter", error_code=INVALID_PARAMETER_VALUE)
    assert tracking.find_registration("m", IDENTITY) is None
    assert "could not check whether run iris-x7k2p already registered m" in caplog.text


def _registration(tags: dict[str, str], run_tags: dict[str, str]) -> tracking.Registration:
    return tracking.Registration(
        name="m",
        version="4",
        source="s3://bucket/run9/model",
        tags={**IDENTITY, **tags},
        run_id="run9",
        experiment_id="7",
        run_status="FINISHED",
        run_tags=run_tags,
        run_params={"rows": "150"},
    )


COMPLETE = {
    "mlops.dev/sha256": "ab" * 32,
    "mlops.dev/metric.f1": "0.9000",
    "mlops.dev/metric.accuracy": "0.9333",
    "mlops.dev/dataset-uri": "sklearn://iris",
    "mlops.dev/dataset-sha256": "cd" * 32,
}


@pytest.mark.parametrize(
    ("tags", "run_tags", "missing"),
    [
        (COMPLETE, {"mlops.dev/best-trial": "1"}, None),
        ({**COMPLETE, "mlops.dev/sha256": ""}, {"mlops.dev/best-trial": "1"}, "a sha256 tag"),
        ({"mlops.dev/sha256": "ab" * 32}, {"mlops.dev/best-trial": "1"}, "metric tags"),
        (COMPLETE, {}, "the best-trial tag on its run"),
        (COMPLETE, {"mlops.dev/best-trial": "5"}, "the best-trial tag on its run"),
    ],
    ids=["complete", "no-sha256", "no-metrics", "no-best-trial", "best-trial-out-of-plan"],
)
def test_found_version_is_reused_only_when_complete(
    tags: dict[str, str],
    run_tags: dict[str, str],
    missing: str | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlops_operator.api.trainingjob import TrainingJobSpec

    spec = TrainingJobSpec.model_validate(
        {
            "model": {"name": "m"},
            "dataset": {"uri": "sklearn://iris", "target": "species"},
            "estimator": {
                "class": "sklearn.linear_model.LogisticRegression",
                "params": {"max_iter": 300},
                "search": {"params": {"C": [0.1, 1.0, 10.0]}, "cv": 3},
            },
        }
    )
    assert spec.estimator.search is not None
    plan = fit.plan_search(spec.estimator.search, 42)
    monkeypatch.setattr(tracking, "configure", lambda uri: None)
    monkeypatch.setattr(tracking, "find_registration", lambda name, identity: _registration(tags, run_tags))
    monkeypatch.setattr(tracking, "finish_interrupted_run", lambda found: None)
    context = train_command.RunContext("iris", "team-a", "iris-x7k2p", "Create", None, "abc1234", "img:1")
    fixed = {"max_iter": 300, "random_state": 42}
    result = train_command.reuse_registration(
        spec, context, task="classification", fixed=fixed, plan=plan, metric="f1"
    )
    if missing is not None:
        assert result is None
        assert f"run iris-x7k2p registered version 4 of m, but it lacks {missing}" in caplog.text
        return
    assert result is not None
    assert result["modelVersion"] == "4" and result["modelUri"] == "models:/m/4"
    assert (result["mlflowRunId"], result["experimentId"]) == ("run9", "7")
    assert list(result["metrics"].items()) == [("accuracy", "0.9333"), ("f1", "0.9000")]  # reporting order
    assert result["params"] == {"max_iter": 300, "random_state": 42, "C": 1.0}  # trial 1 of the plan
    assert result["search"] == {
        "type": "grid",
        "metric": "f1",
        "trials": 3,
        "bestTrial": 1,
        "truncated": False,
    }
    assert result["dataset"] == {"uri": "sklearn://iris", "sha256": "cd" * 32, "rows": 150}
    assert (result["codeVersion"], result["image"]) == (None, None)  # as tagged: the version has none
    assert "had already registered version 4 of m" in caplog.text
