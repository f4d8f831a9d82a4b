"""The served model: its input schema, a fast predict path and the batching decision.

Everything here is computed once at load time so the request path only indexes precomputed
tables: feature names and positions, class labels as JSON-ready Python values, and whether
``predict`` is cheap enough to call inline on the event loop.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mlops_operator.monitoring.reference_profile import ReferenceProfile

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

# For these estimators ``predict`` is exactly ``classes_[argmax(predict_proba)]``, so one call to
# predict_proba gives both outputs (half the cost for a forest). Others get two calls.
_ARGMAX_CONSISTENT = (
    "RandomForestClassifier",
    "ExtraTreesClassifier",
    "DecisionTreeClassifier",
    "ExtraTreeClassifier",
    "GradientBoostingClassifier",
    "HistGradientBoostingClassifier",
    "LogisticRegression",
    "KNeighborsClassifier",
    "GaussianNB",
    "MultinomialNB",
    "BernoulliNB",
)

# A model call slower than this runs in a worker thread, so it does not stall the event loop
# (and the other requests' parsing) while it computes; faster calls run inline, where a thread
# hop (~50-100 us round trip through the executor) would cost more than it saves.
INLINE_CALL_LIMIT_S = 200e-6


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch of rows, as JSON-ready Python lists."""

    labels: list[Any]
    probabilities: list[list[float]] | None


@dataclass(frozen=True)
class Calibration:
    """Measured cost of one predict call: for one row and for a batch of rows."""

    one_row_s: float
    batch_rows: int
    batch_s: float

    @property
    def per_row_s(self) -> float:
        return max(self.batch_s - self.one_row_s, 0.0) / max(self.batch_rows - 1, 1)

    @property
    def batching_gain(self) -> float:
        """How many times cheaper a row is inside a batch than alone."""
        return (self.one_row_s * self.batch_rows) / max(self.batch_s, 1e-9)

    def should_batch(self) -> bool:
        """Batch when a call has a fixed cost that batching amortises (the forest case).

        Rule: the single-row call costs at least INLINE_CALL_LIMIT_S (otherwise the HTTP
        work per request dominates and a batching window only adds latency), and a batch of
        ``batch_rows`` costs less than a quarter of that many single calls.
        """
        return self.one_row_s >= INLINE_CALL_LIMIT_S and self.batching_gain >= 4.0


def _unwrap_estimator_name(estimator: Any) -> str:
    final = estimator
    steps = getattr(estimator, "steps", None)
    if steps:
        final = steps[-1][1]
    return type(final).__name__


def _fitted_feature_names(estimator: Any) -> list[str] | None:
    names = getattr(estimator, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _drop_fitted_feature_names(estimator: Any) -> None:
    """Remove ``feature_names_in_`` from a (pipeline of) estimator(s).

    An estimator fitted on a DataFrame warns on every call with a numpy array ("X does not
    have valid feature names"), which costs a warnings round trip per request. The server
    orders the columns itself (from these very names), so the check is redundant.
    """
    parts = [estimator, *(step for _, step in getattr(estimator, "steps", []) or [])]
    for part in parts:
        if "feature_names_in_" in getattr(part, "__dict__", {}):
            del part.__dict__["feature_names_in_"]


class ServedModel:
    """A model ready to answer: schema, labels and a numpy-in, lists-out predict."""

    def __init__(
        self,
        *,
        feature_names: Sequence[str] | None,
        n_features: int,
        predict_fn: Callable[[FloatArray], Prediction],
        is_classifier: bool,
        classes: list[Any] | None,
        name: str,
        version: str,
        profile: ReferenceProfile | None = None,
        platform: str = "sklearn",
    ) -> None:
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.n_features = n_features
        self.feature_index = {n: i for i, n in enumerate(self.feature_names or [])}
        self.predict = predict_fn
        self.is_classifier = is_classifier
        self.classes = classes
        self.name = name
        self.version = version
        self.profile = profile
        self.platform = platform
        # The v2 datatype of the `predict` output.
        labels = classes or []
        if labels and all(isinstance(c, str) for c in labels):
            self.label_datatype = "BYTES"
        elif labels and all(isinstance(c, int) for c in labels):
            self.label_datatype = "INT64"
        else:
            self.label_datatype = "FP64"
        self.calibration: Calibration | None = None

    def calibrate(self, batch_rows: int = 64, repeats: int = 15) -> Calibration:
        """Time predict on one row and on ``batch_rows`` rows (best of ``repeats``).

        The best of many, in this thread's CPU time: on a shared machine calls are slowed by
        neighbours, and the decisions taken from this (inline calls, batching) want the model's
        own cost.
        """
        row = self.example_rows(1)
        batch = self.example_rows(batch_rows)
        self.predict(row)  # warm caches and lazy imports before timing

        def best(x: FloatArray) -> float:
            times = []
            for _ in range(repeats):
                start = time.thread_time()
                self.predict(x)
                times.append(time.thread_time() - start)
            return min(times)

        self.calibration = Calibration(one_row_s=best(row), batch_rows=batch_rows, batch_s=best(batch))
        return self.calibration

    def example_rows(self, n: int) -> FloatArray:
        """Plausible rows for warm-up: the profile's means when known, else zeros."""
        means = np.zeros(self.n_features)
        if self.profile is not None and len(self.profile.features) == self.n_features:
            means = np.array([f.mean if f.mean is not None else 0.0 for f in self.profile.features])
        return np.tile(means, (n, 1)).astype(np.float64)


def _to_native(values: Any) -> list[Any]:
    """numpy values to JSON-ready Python values (``tolist`` does the type conversion in C)."""
    return list(np.asarray(values).tolist())


def sklearn_predict_fn(estimator: Any) -> tuple[Callable[[Any], Prediction], list[Any] | None]:
    """A predict closure around a bare sklearn estimator, and its class labels."""
    is_classifier = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    if not is_classifier:

        def regress(x: Any) -> Prediction:
            return Prediction(labels=_to_native(estimator.predict(x)), probabilities=None)

        return regress, None

    classes_array = np.asarray(estimator.classes_)
    classes = _to_native(classes_array)
    predict_proba = estimator.predict_proba
    if (forest_proba := forest_predict_proba(estimator)) is not None:
        predict_proba = forest_proba
    if _unwrap_estimator_name(estimator) in _ARGMAX_CONSISTENT:

        def classify_once(x: Any) -> Prediction:
            proba = predict_proba(x)
            return Prediction(
                labels=classes_array.take(proba.argmax(axis=1)).tolist(), probabilities=proba.tolist()
            )

        return classify_once, classes

    predict = estimator.predict

    def classify_twice(x: Any) -> Prediction:
        return Prediction(labels=_to_native(predict(x)), probabilities=predict_proba(x).tolist())

    return classify_twice, classes


#: Forests whose ``predict_proba`` is the mean of their trees' leaf values, summed in order.
_FORESTS = ("RandomForestClassifier", "ExtraTreesClassifier")


def forest_predict_proba(estimator: Any) -> Callable[[Any], FloatArray] | None:
    """``predict_proba`` of a forest without scikit-learn's per-call overhead, or None.

    scikit-learn's forest ``predict_proba`` validates the input once per tree and dispatches
    the trees through joblib even with ``n_jobs=1``: for 100 trees that is about 5 ms per call
    whatever the number of rows, against about 0.5 ms for walking the trees themselves. This
    does the same arithmetic in the same order (float32 input, per-tree leaf fractions added
    into zeros tree by tree, divided by the number of trees), so its output is bitwise equal;
    that is checked here on sample rows, and any difference (a future scikit-learn computing
    otherwise) falls back to the estimator's own method. ``MLOPS_SERVE_FOREST_FAST_PATH=0`` keeps
    scikit-learn's method (the benchmark uses it to compare batchers on the same model cost).
    """
    if type(estimator).__name__ not in _FORESTS or os.environ.get("MLOPS_SERVE_FOREST_FAST_PATH") == "0":
        return None
    trees = [getattr(tree, "tree_", None) for tree in getattr(estimator, "estimators_", [])]
    width = getattr(estimator, "n_features_in_", None)
    n_classes = getattr(estimator, "n_classes_", None)
    if not trees or any(t is None for t in trees) or estimator.n_outputs_ != 1 or not width:
        return None
    if type(n_classes) is not int and not isinstance(n_classes, np.integer):
        return None
    n_trees = len(trees)
    tree_predicts = [t.predict for t in trees if t is not None]
    columns = int(n_classes)

    def predict_proba(x: Any) -> FloatArray:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((x32.shape[0], columns), dtype=np.float64)
        for tree_predict in tree_predicts:
            out += tree_predict(x32)[:, :columns]
        out /= n_trees
        return out

    sample = np.random.default_rng(0).normal(size=(64, int(width))) * 3
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            same = np.array_equal(predict_proba(sample), estimator.predict_proba(sample))
    except Exception:
        same = False
    if not same:
        logger.warning("forest fast path disagrees with %s.predict_proba: not used", type(estimator).__name__)
        return None
    return predict_proba


def pyfunc_predict_fn(pyfunc: Any, feature_names: Sequence[str] | None) -> Callable[[FloatArray], Prediction]:
    """A predict closure around an MLflow pyfunc model (DataFrame in: the slow, generic path)."""
    import pandas as pd

    columns = list(feature_names) if feature_names is not None else None

    def predict(x: FloatArray) -> Prediction:
        frame = pd.DataFrame(x, columns=columns)
        out = pyfunc.predict(frame)
        if isinstance(out, pd.DataFrame):
            out = out.iloc[:, 0]
        return Prediction(labels=_to_native(out), probabilities=None)

    return predict


def build_served_model(
    *,
    estimator: Any | None,
    pyfunc: Any | None,
    signature_features: Sequence[str] | None,
    signature_width: int | None,
    profile: ReferenceProfile | None,
    name: str,
    version: str,
) -> ServedModel:
    """Assemble a :class:`ServedModel` and check the fast path works on a warm-up row.

    Feature names come from the MLflow signature, else the estimator's fitted names, else the
    reference profile; the width from those or ``n_features_in_``.
    """
    fitted_names = _fitted_feature_names(estimator) if estimator is not None else None
    names = (
        list(signature_features)
        if signature_features
        else fitted_names or (profile.feature_names if profile is not None else None)
    )
    width = len(names) if names else signature_width or getattr(estimator, "n_features_in_", None)
    if not width:
        raise ValueError(f"model {name}: cannot tell how many input features it takes (no signature)")
    classes: list[Any] | None = None
    if estimator is not None:
        predict_fn, classes = sklearn_predict_fn(estimator)
        platform = "sklearn"
    elif pyfunc is not None:
        predict_fn = pyfunc_predict_fn(pyfunc, names)
        platform = "mlflow_pyfunc"
    else:
        raise ValueError("nothing to serve: neither an estimator nor a pyfunc model")
    served = ServedModel(
        feature_names=names,
        n_features=int(width),
        predict_fn=predict_fn,
        is_classifier=classes is not None,
        classes=classes,
        name=name,
        version=version,
        profile=profile,
        platform=platform,
    )
    if estimator is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                served.predict(served.example_rows(1))
        except Exception:
            # E.g. a ColumnTransformer that selects columns by name needs a DataFrame: the
            # numpy fast path cannot serve it, so fall back to pandas rows with names.
            logger.warning("model %s rejects numpy input; serving through a DataFrame", name)
            served.predict = _dataframe_predict_fn(predict_fn, names)
            served.predict(served.example_rows(1))
        else:
            _drop_fitted_feature_names(estimator)
    return served


def _dataframe_predict_fn(
    inner: Callable[[Any], Prediction], names: Sequence[str] | None
) -> Callable[[FloatArray], Prediction]:
    import pandas as pd

    columns = list(names) if names else None

    def predict(x: FloatArray) -> Prediction:
        return inner(pd.DataFrame(x, columns=columns))

    return predict
