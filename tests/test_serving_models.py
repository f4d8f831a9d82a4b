"""Models for the serving tests, logged to a throwaway MLflow store and registered.

Test modules import the ``*_fixture`` functions (the fixtures are named without the suffix, so
the parameters that request them do not shadow the import). Session-scoped: logging and registering takes seconds, and every serving test reads the same
models. ``iris`` is a LogisticRegression on iris with string classes; ``forest`` a 100-tree
RandomForest on 20 synthetic features with integer classes. Both carry a reference profile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_operator.monitoring.reference_profile import (
    PROFILE_ARTIFACT,
    FeatureProfile,
    Quantile,
    ReferenceProfile,
)
from mlops_operator.registry.digest import directory_sha256


@dataclass(frozen=True)
class LoggedModel:
    name: str
    version: str
    run_id: str
    tracking_uri: str
    sha256: str
    feature_names: list[str]
    classes: list[object]
    sample: list[list[float]]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def build_profile(frame: pd.DataFrame, target: pd.Series) -> ReferenceProfile:
    """A reference profile of ``frame`` (deciles as bins), like the trainer's."""
    features = []
    for column in frame.columns:
        values = frame[column].to_numpy(dtype=float)
        edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
        bins = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        features.append(
            FeatureProfile(
                name=str(column),
                kind="numeric",
                dtype=str(frame[column].dtype),
                bin_edges=edges.tolist(),
                bin_frequencies=(bins / bins.sum()).tolist(),
                quantiles=[Quantile(q=q, value=float(np.quantile(values, q))) for q in (0.05, 0.5, 0.95)],
                mean=float(values.mean()),
                std=float(values.std()),
                min=float(values.min()),
                max=float(values.max()),
            )
        )
    classes = sorted(str(c) for c in target.unique())
    freq = target.astype(str).value_counts(normalize=True)
    return ReferenceProfile(
        task="classification",
        target=str(target.name),
        rows=len(frame),
        features=features,
        classes=classes,
        class_frequencies=[float(freq[c]) for c in classes],
    )


def log_model(
    tracking_uri: str,
    name: str,
    estimator: object,
    frame: pd.DataFrame,
    target: pd.Series,
    **log_options: object,
) -> LoggedModel:
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    estimator.fit(frame, target)  # type: ignore[attr-defined]
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(frame, target),
            registered_model_name=name,
            **log_options,
        )
        mlflow.log_text(build_profile(frame, target).model_dump_json(), PROFILE_ARTIFACT)
    client = mlflow.MlflowClient()
    version = str(max(int(v.version) for v in client.search_model_versions(f"name='{name}'")))
    client.set_registered_model_alias(name, "champion", version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri)
    Path(local, "registered_model_meta").unlink(missing_ok=True)
    return LoggedModel(
        name=name,
        version=version,
        run_id=run.info.run_id,
        tracking_uri=tracking_uri,
        sha256=directory_sha256(local),
        feature_names=[str(c) for c in frame.columns],
        classes=[c.item() if hasattr(c, "item") else c for c in estimator.classes_],  # type: ignore[attr-defined]
        sample=frame.head(5).to_numpy(dtype=float).tolist(),
    )


@pytest.fixture(scope="session", name="mlflow_store")
def mlflow_store_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    # Artifacts next to the database, not in the working directory (MLflow's default for a
    # sqlite store is ./mlruns); the directory is put back when the session ends.
    cwd = os.getcwd()
    os.chdir(root)
    yield uri
    os.chdir(cwd)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session", name="iris_model")
def iris_model_fixture(mlflow_store: str) -> LoggedModel:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris(as_frame=True)
    frame = data.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    target = data.target.map(dict(enumerate(data.target_names))).rename("species")
    return log_model(mlflow_store, "iris", LogisticRegression(max_iter=500), frame, target)


@pytest.fixture(scope="session", name="forest_model")
def forest_model_fixture(mlflow_store: str) -> LoggedModel:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(600, 20)), columns=[f"f{i}" for i in range(20)])
    target = pd.Series((frame["f0"] + frame["f1"] > 0).astype(int), name="label")
    return log_model(
        mlflow_store,
        "forest",
        RandomForestClassifier(n_estimators=100, random_state=0),
        frame,
        target,
        # skops (MLflow's default format) refuses tree node arrays unless they are trusted.
        skops_trusted_types=["sklearn.tree._tree.Tree"],
    )
