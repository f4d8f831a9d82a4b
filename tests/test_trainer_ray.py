"""``engine: Ray``: the trainer's search trials spread over a real, local Ray cluster.

A RayJob runs the trainer as the Ray job's driver on the cluster's head; here the test starts a
local Ray with two worker CPUs (``ray.init(num_cpus=2)``) and the trainer joins it the way it
joins a RayJob's cluster (an initialised Ray is used as it is). What runs is the trainer's own
code: the grid search through Ray's joblib backend, and the whole ``mlops-operator train``
command against a SQLite MLflow. KubeRay itself is not run (see the README).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris

from mlops_operator.api.trainingjob import Search
from mlops_operator.trainer import fit
from mlops_operator.trainer.data_validation import Columns
from mlops_operator.trainer.train_command import RESULT_TAG, SEARCH_ENGINE_TAG, SEARCH_WORKERS_TAG
from tests.test_trainer_e2e import client, iris_spec, run_in_process


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray cluster of 2 CPUs for the module (starting one takes seconds)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _iris_search(n_jobs: int) -> fit.SearchResult:
    data = load_iris(as_frame=True)
    features = data.data.astype("float64")
    columns = Columns(features=list(features.columns), numeric=list(features.columns), categorical=[])
    plan = fit.plan_search(
        Search.model_validate(
            {"type": "grid", "params": {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]}}
        ),
        seed=7,
    )
    return fit.run_search(
        dotted="sklearn.linear_model.LogisticRegression",
        fixed={"max_iter": 500, "random_state": 7},
        plan=plan,
        columns=columns,
        preprocessing="auto",
        task="classification",
        metric="f1",
        cv=3,
        seed=7,
        features=features,
        labels=data.target,
        on_trial=lambda trial: None,
        n_jobs=n_jobs,
    )


def _pids(workers: list[str]) -> set[int]:
    return {int(worker.rsplit("/", 1)[1]) for worker in workers}


def test_grid_search_trials_run_in_ray_workers(local_ray: Any) -> None:
    with fit.search_backend("Ray") as n_jobs:
        spread = _iris_search(n_jobs)
    assert len(spread.trials) == 8
    assert all(trial.score is not None for trial in spread.trials)
    workers = [trial.worker for trial in spread.trials if trial.worker]
    assert len(workers) == 8
    pids = _pids(workers)
    assert os.getpid() not in pids, "a trial ran in the test's own process, not in a Ray worker"
    # The processes are Ray's workers (Ray titles them "ray::<task>", "ray::IDLE" between tasks).
    titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid in pids}
    assert all(title.startswith("ray::") for title in titles.values()), titles

    # Where a trial ran does not change what it scored: the same search in this process agrees.
    with fit.search_backend("Job") as n_jobs:
        assert n_jobs == 1
        local = _iris_search(n_jobs)
    assert {t.index: t.worker for t in local.trials} == dict.fromkeys(range(8), local.trials[0].worker)
    assert _pids([local.trials[0].worker or ""]) == {os.getpid()}
    assert [t.score for t in spread.trials] == pytest.approx([t.score for t in local.trials])
    assert spread.best is not None and local.best is not None
    assert spread.best.params == local.best.params


def test_train_command_on_ray_registers_and_publishes_its_result(
    local_ray: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = iris_spec("iris-on-ray", engine="Ray", ray={"workers": 2})
    code, result = run_in_process(tmp_path, spec, monkeypatch, capsys)
    assert code == 0, result
    assert result["status"] == "Succeeded" and result["search"]["trials"] == 3

    mlflow = client(tmp_path)
    version = mlflow.get_model_version("iris-on-ray", result["modelVersion"])
    # What the operator reads for a RayJob run (a driver has no termination message).
    assert json.loads(version.tags[RESULT_TAG]) == result
    run = mlflow.get_run(result["mlflowRunId"])
    assert run.data.tags[SEARCH_ENGINE_TAG] == "Ray"
    pids = _pids(run.data.tags[SEARCH_WORKERS_TAG].split(","))
    assert pids and os.getpid() not in pids


def test_train_command_without_ray_engine_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = run_in_process(tmp_path, iris_spec("iris-local"), monkeypatch, capsys)
    assert code == 0, result
    mlflow = client(tmp_path)
    assert RESULT_TAG not in mlflow.get_model_version("iris-local", result["modelVersion"]).tags
    run = mlflow.get_run(result["mlflowRunId"])
    assert run.data.tags[SEARCH_ENGINE_TAG] == "Job"
    assert _pids(run.data.tags[SEARCH_WORKERS_TAG].split(",")) == {os.getpid()}
