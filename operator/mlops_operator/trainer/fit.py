"""Fitting: the estimator allow-list, the preprocessing pipeline, hyperparameter search.

The allow-list, the parameter checks and the search plan are pure functions of plain data; only
:func:`run_search` and :func:`fit_final` fit anything. Nothing here talks to MLflow: the caller
passes a callback that records each trial (as a nested MLflow run).

scikit-learn quirks handled here:

- A user's class name is never imported before it is found in :data:`ALLOWED_ESTIMATORS`
  (``sklearn.os.system`` or ``sklearn.cluster.KMeans`` are refused without importing anything).
- Constructor parameters are only checked when ``fit`` runs. Unknown names are caught up front
  against ``estimator.get_params()``; values are checked up front with the estimator's own
  parameter constraints (``_validate_params``, the same check ``fit`` makes, raising
  ``InvalidParameterError``), so a rejected value fails the run before any MLflow run exists.
  Combinations only ``fit`` rejects (``penalty="l1"`` with ``solver="lbfgs"``) surface as a
  ``ValueError`` during the trial.
- ``SimpleImputer`` refuses boolean columns and JSON has no tuples: :func:`prepare_features`
  turns boolean features into text categories and integer features into float64 (so the
  model's signature accepts ``5`` and ``5.0`` alike, and a missing value later).
"""

from __future__ import annotations

import difflib
import importlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from mlops_operator.api.trainingjob import Estimator, Search
from mlops_operator.trainer.data_validation import Columns, Task
from mlops_operator.trainer.trainer_errors import TrainerError

CLASSIFIERS: Final = frozenset(
    {
        "sklearn.linear_model.LogisticRegression",
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.GradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.ExtraTreesClassifier",
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.neighbors.KNeighborsClassifier",
        "sklearn.svm.SVC",
        "sklearn.naive_bayes.GaussianNB",
    }
)
REGRESSORS: Final = frozenset(
    {
        "sklearn.linear_model.LinearRegression",
        "sklearn.linear_model.Ridge",
        "sklearn.linear_model.Lasso",
        "sklearn.linear_model.ElasticNet",
        "sklearn.ensemble.RandomForestRegressor",
        "sklearn.ensemble.GradientBoostingRegressor",
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "sklearn.tree.DecisionTreeRegressor",
        "sklearn.neighbors.KNeighborsRegressor",
        "sklearn.svm.SVR",
    }
)
#: Every estimator a TrainingJob may name (dotted names, resolved only after membership).
ALLOWED_ESTIMATORS: Final = CLASSIFIERS | REGRESSORS
#: Defaults the trainer sets unless the spec overrides them.
ESTIMATOR_DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "sklearn.svm.SVC": {"probability": True},  # predict_proba, hence ROC AUC and served probabilities
}
#: Upper bound on trials when a grid search sets no maxTrials (the API's own maximum).
DEFAULT_MAX_TRIALS: Final = 1000

CLASSIFICATION_METRICS: Final = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS: Final = ("rmse", "mae", "r2")
#: The metric that picks the best trial when ``search.metric`` is not set. f1 (macro) rather than
#: accuracy for classifiers: it does not reward ignoring a rare class. r2 for regressors.
DEFAULT_SEARCH_METRIC: Final[Mapping[Task, str]] = {"classification": "f1", "regression": "r2"}
#: Metric name -> (scikit-learn scorer name, sign): scorers are maximised, so errors come negated.
_SCORERS: Final[Mapping[str, tuple[str, float]]] = {
    "accuracy": ("accuracy", 1.0),
    "precision": ("precision_macro", 1.0),
    "recall": ("recall_macro", 1.0),
    "f1": ("f1_macro", 1.0),
    "rmse": ("neg_root_mean_squared_error", -1.0),
    "mae": ("neg_mean_absolute_error", -1.0),
    "r2": ("r2", 1.0),
}
_LOWER_IS_BETTER: Final = frozenset({"rmse", "mae"})


# --- allow-list ---------------------------------------------------------------------------------


def task_of(dotted: str) -> Task:
    """``classification`` or ``regression`` for an allowed class; ``EstimatorNotAllowed`` otherwise."""
    if dotted in CLASSIFIERS:
        return "classification"
    if dotted in REGRESSORS:
        return "regression"
    short = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(short, [name.rsplit(".", 1)[-1] for name in ALLOWED_ESTIMATORS], n=1)
    hint = ""
    if close:
        hint = f"; did you mean {next(n for n in sorted(ALLOWED_ESTIMATORS) if n.endswith('.' + close[0]))}?"
    raise TrainerError(
        "EstimatorNotAllowed",
        f"estimator {dotted!r} is not on the trainer's allow-list{hint} "
        f"(classifiers: {', '.join(sorted(n.rsplit('.', 1)[-1] for n in CLASSIFIERS))}; "
        f"regressors: {', '.join(sorted(n.rsplit('.', 1)[-1] for n in REGRESSORS))})",
    )


def resolve_estimator_class(dotted: str) -> type[Any]:
    """The class for an allowed dotted name. The membership check runs before any import."""
    task_of(dotted)
    module_name, class_name = dotted.rsplit(".", 1)
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return cls


# --- parameters -----------------------------------------------------------------------------------


def check_param_names(dotted: str, names: list[str], valid: set[str], where: str) -> None:
    """``InvalidHyperparameters`` naming the first unknown parameter and its nearest valid name."""
    unknown = [n for n in names if n not in valid]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TrainerError(
        "InvalidHyperparameters",
        f"{where}: {dotted.rsplit('.', 1)[-1]} has no parameter {name!r}{hint} "
        f"(valid: {', '.join(sorted(valid))})",
    )


def base_params(estimator: Estimator, valid: set[str], seed: int) -> dict[str, Any]:
    """The fixed parameters: trainer defaults, ``random_state`` = the seed if the class takes one, the spec's."""
    params: dict[str, Any] = dict(ESTIMATOR_DEFAULTS.get(estimator.class_, {}))
    if "random_state" in valid:
        params["random_state"] = seed
    params.update(estimator.params or {})
    return params


def check_param_values(dotted: str, params: Mapping[str, Any], where: str) -> None:
    """Build the estimator and run its own parameter-constraint check (what ``fit`` would raise)."""
    cls = resolve_estimator_class(dotted)
    try:
        instance = cls(**params)
        validate = getattr(instance, "_validate_params", None)
        if callable(validate):
            validate()
    except Exception as exc:
        if is_invalid_parameter_error(exc) or isinstance(exc, TypeError | ValueError):
            raise TrainerError("InvalidHyperparameters", f"{where}: {exc}") from exc
        raise


def is_invalid_parameter_error(exc: BaseException) -> bool:
    """scikit-learn's ``InvalidParameterError`` (a ValueError) lives in a private module: match by name."""
    return type(exc).__name__ == "InvalidParameterError"


# --- metrics --------------------------------------------------------------------------------------


def metrics_for(task: Task) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def check_metric(metric: str, task: Task, where: str) -> None:
    if metric not in metrics_for(task):
        raise TrainerError(
            "InvalidSpec",
            f"{where}: metric {metric!r} does not apply to {task} (use {', '.join(metrics_for(task))})",
        )


def score(metric: str, estimator: Any, features: pd.DataFrame, labels: pd.Series) -> float:
    """``metric`` of a fitted estimator on held-out data, in its natural orientation (rmse: lower is better)."""
    from sklearn.metrics import get_scorer

    if metric == "roc_auc":
        return roc_auc(estimator, features, labels)
    name, sign = _SCORERS[metric]
    with warnings.catch_warnings():
        # UndefinedMetricWarning: a class that is never predicted scores 0, as it should.
        warnings.simplefilter("ignore")
        return float(sign * get_scorer(name)(estimator, features, labels))


def roc_auc(estimator: Any, features: pd.DataFrame, labels: pd.Series) -> float:
    """ROC AUC from ``predict_proba``: binary on the second class, one-vs-rest macro for multiclass.

    Written out because scikit-learn's ``roc_auc`` scorer needs a ``pos_label`` for string
    classes and ``roc_auc_ovr`` refuses binary targets.
    """
    from sklearn.metrics import roc_auc_score

    proba = estimator.predict_proba(features)
    classes = list(estimator.classes_)
    if len(classes) == 2:
        return float(roc_auc_score(np.asarray(labels) == classes[1], proba[:, 1]))
    return float(roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=classes))


def better(metric: str, candidate: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(candidate)
    return candidate < best if metric in _LOWER_IS_BETTER else candidate > best


# --- search plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """The trials to run, in order, and whether a grid was cut down to ``maxTrials``."""

    trials: list[dict[str, Any]]
    total: int | None = None  # size of the full grid (grid search only)
    truncated: bool = False

    @property
    def note(self) -> str:
        if self.truncated:
            return (
                f"grid of {self.total} combinations truncated to maxTrials={len(self.trials)} "
                "(a seeded random subset)"
            )
        return f"{len(self.trials)} trial{'s' if len(self.trials) != 1 else ''}"


def plan_search(search: Search, seed: int) -> SearchPlan:
    """The parameter sets to try (pure, seeded).

    grid: each parameter maps to a list of values (a scalar is a list of one); the grid is
    capped at ``maxTrials`` (default :data:`DEFAULT_MAX_TRIALS`) by a seeded random subset, not
    the first N (which would explore only the last parameters). random: each parameter maps to a
    list (sampled uniformly), a scalar (fixed) or ``{low, high, log}``: ``uniform`` or
    ``loguniform`` for floats, ``randint`` for two integers (``high`` inclusive; with ``log`` a
    log-uniform draw rounded to an integer).
    """
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if not search.params:
        raise TrainerError("InvalidSpec", "spec.estimator.search.params is empty")
    cap = search.max_trials or DEFAULT_MAX_TRIALS
    if search.type == "grid":
        grid_space: dict[str, list[Any]] = {}
        for name, values in search.params.items():
            if isinstance(values, dict):
                raise TrainerError(
                    "InvalidSpec",
                    f"search.params.{name}: a grid takes a list of values, not a range; use search.type: random",
                )
            grid_space[name] = list(values) if isinstance(values, list) else [values]
            if not grid_space[name]:
                raise TrainerError("InvalidSpec", f"search.params.{name}: empty list of values")
        grid = ParameterGrid(grid_space)
        total = len(grid)
        if total <= cap:
            return SearchPlan(trials=[dict(grid[i]) for i in range(total)], total=total)
        picked = sorted(np.random.default_rng(seed).choice(total, size=cap, replace=False).tolist())
        return SearchPlan(trials=[dict(grid[i]) for i in picked], total=total, truncated=True)

    space: dict[str, Any] = {}
    rounded: set[str] = set()
    for name, values in search.params.items():
        if isinstance(values, dict):
            space[name], is_int_log = _distribution(name, values)
            if is_int_log:
                rounded.add(name)
        elif isinstance(values, list):
            if not values:
                raise TrainerError("InvalidSpec", f"search.params.{name}: empty list of values")
            space[name] = values
        else:
            space[name] = [values]
    sampled = list(ParameterSampler(space, n_iter=cap, random_state=seed))
    trials = [
        {k: (round(float(v)) if k in rounded else _plain(v)) for k, v in params.items()} for params in sampled
    ]
    return SearchPlan(trials=trials)


def _distribution(name: str, spec: Mapping[str, Any]) -> tuple[Any, bool]:
    from scipy import stats

    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise TrainerError(
            "InvalidSpec",
            f"search.params.{name}: a range is {{low, high, log}}; got keys {sorted(spec)}",
        )
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise TrainerError("InvalidSpec", f"search.params.{name}: low and high must be numbers")
    if not low < high:
        raise TrainerError("InvalidSpec", f"search.params.{name}: low ({low}) must be below high ({high})")
    integers = isinstance(low, int) and isinstance(high, int)
    if log:
        if low <= 0:
            raise TrainerError("InvalidSpec", f"search.params.{name}: a log range needs low > 0 (got {low})")
        return stats.loguniform(low, high), integers
    if integers:
        return stats.randint(low, high + 1), False
    return stats.uniform(loc=low, scale=high - low), False


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (JSON, MLflow params, estimator constructors)."""
    return value.item() if isinstance(value, np.generic) else value


# --- pipeline -------------------------------------------------------------------------------------


def prepare_features(frame: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """The model's input frame: features in order, integers as float64, booleans as text categories."""
    out = frame.loc[:, columns.features].copy()
    for name in columns.numeric:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    for name in columns.categorical:
        series = out[name]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_object_dtype(series):
            out[name] = series.map(
                lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
    return out


def build_pipeline(estimator: Any, columns: Columns, preprocessing: str) -> Any:
    """The estimator behind standard preprocessing, as one scikit-learn Pipeline (one artifact).

    ``auto``: median-impute + standardise numeric columns; most-frequent-impute + one-hot encode
    categorical ones (``handle_unknown="ignore"``: a category unseen in training predicts
    instead of failing). All-numeric data skips the ColumnTransformer (iris-like data stays
    lean). ``none``: the bare estimator inside a one-step Pipeline.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if preprocessing == "none":
        return Pipeline([("model", estimator)])
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    if not columns.categorical:
        return Pipeline([*numeric.steps, ("model", estimator)])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    transformers: list[tuple[str, Any, list[str]]] = []
    if columns.numeric:
        transformers.append(("numeric", numeric, columns.numeric))
    transformers.append(("categorical", categorical, columns.categorical))
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("model", estimator)])


# --- search and fit -------------------------------------------------------------------------------


@dataclass
class Trial:
    index: int
    params: dict[str, Any]
    score: float | None = None
    score_std: float | None = None
    error: str | None = None
    worker: str | None = None  # "<host>/<pid>" of the process that cross-validated it


@dataclass
class SearchResult:
    metric: str
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None


TrialCallback = Callable[[Trial], None]


def run_search(
    *,
    dotted: str,
    fixed: Mapping[str, Any],
    plan: SearchPlan,
    columns: Columns,
    preprocessing: str,
    task: Task,
    metric: str,
    cv: int,
    seed: int,
    features: pd.DataFrame,
    labels: pd.Series,
    on_trial: TrialCallback,
    n_jobs: int = 1,
) -> SearchResult:
    """Cross-validate every planned trial on the training split; the best by ``metric`` wins.

    Trials run through joblib with ``n_jobs`` workers of whatever joblib backend is active:
    the default ``n_jobs=1`` runs them one after the other in this process; inside
    :func:`search_backend` for ``engine: Ray`` they are spread over the Ray cluster. Results
    are taken in trial order (``on_trial`` logs each), so the outcome does not depend on where
    a trial ran.

    A trial whose parameter *value* the estimator rejects fails the whole run
    (``InvalidHyperparameters``: retrying does not help); a trial that fails otherwise (an
    incompatible combination) is recorded and skipped. If every trial fails, the run fails.
    """
    import joblib
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter: Any = (
        StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        if task == "classification"
        else KFold(n_splits=cv, shuffle=True, random_state=seed)
    )
    scoring: Any
    if metric == "roc_auc":
        scoring = roc_auc
        sign = 1.0
    else:
        scoring, sign = _SCORERS[metric]
    for index, trial_params in enumerate(plan.trials):
        check_param_values(dotted, {**fixed, **trial_params}, f"search trial {index} {trial_params}")
    # In this process each trial is logged as it finishes; Ray's backend cannot stream results
    # (no return_as="generator"), so there they are logged, in order, once all have finished.
    outcomes = joblib.Parallel(n_jobs=n_jobs, return_as="generator" if n_jobs == 1 else "list")(
        joblib.delayed(_cross_validate_trial)(
            dotted, {**fixed, **trial_params}, columns, preprocessing, features, labels, scoring, splitter
        )
        for trial_params in plan.trials
    )
    result = SearchResult(metric=metric)
    for index, (trial_params, outcome) in enumerate(zip(plan.trials, outcomes, strict=True)):
        trial = Trial(index=index, params=dict(trial_params), worker=outcome.worker)
        if outcome.invalid_parameter is not None:
            raise TrainerError(
                "InvalidHyperparameters", f"search trial {index} {trial_params}: {outcome.invalid_parameter}"
            )
        if outcome.error is not None:
            trial.error = outcome.error
        else:
            trial.score = float(sign * np.mean(outcome.scores))
            trial.score_std = float(np.std(outcome.scores))
        result.trials.append(trial)
        on_trial(trial)
        if trial.score is not None and better(
            metric, trial.score, result.best.score if result.best else None
        ):
            result.best = trial
    if result.best is None:
        first = result.trials[0] if result.trials else None
        detail = f"first: trial 0 {first.params}: {first.error}" if first else "no trials"
        raise TrainerError(
            "InvalidHyperparameters",
            f"all {len(result.trials)} search trials failed ({detail})",
        )
    return result


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial's cross-validation returned, wherever it ran (plain data: it may cross processes)."""

    scores: list[float]
    error: str | None
    invalid_parameter: str | None
    worker: str


def _cross_validate_trial(
    dotted: str,
    params: Mapping[str, Any],
    columns: Columns,
    preprocessing: str,
    features: pd.DataFrame,
    labels: pd.Series,
    scoring: Any,
    splitter: Any,
) -> TrialOutcome:
    """One trial's cross-validation; runs in a joblib worker (a Ray worker under ``engine: Ray``).

    Errors come back as data, not exceptions: an exception raised in a Ray worker arrives
    wrapped in ``RayTaskError``, which would hide scikit-learn's ``InvalidParameterError``.
    """
    import os
    import socket

    from sklearn.model_selection import cross_val_score

    worker = f"{socket.gethostname()}/{os.getpid()}"
    pipeline = build_pipeline(resolve_estimator_class(dotted)(**params), columns, preprocessing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning per fold would drown the log
            scores = cross_val_score(
                pipeline, features, labels, scoring=scoring, cv=splitter, error_score="raise"
            )
    except Exception as exc:
        if is_invalid_parameter_error(exc):
            return TrialOutcome([], None, str(exc), worker)
        return TrialOutcome([], f"{type(exc).__name__}: {exc}", None, worker)
    return TrialOutcome([float(x) for x in scores], None, None, worker)


@contextmanager
def search_backend(engine: str) -> Iterator[int]:
    """The joblib backend search trials run on, for the block; yields ``n_jobs`` for :func:`run_search`.

    ``Job``: 1, this process (the default backend). ``Ray``: Ray's joblib backend
    (``ray.util.joblib.register_ray()`` + ``joblib.parallel_backend("ray")``) with ``n_jobs=-1``,
    every CPU of the Ray cluster. Under a RayJob the trainer is the Ray job's driver on the head
    node, so ``ray.init()`` joins the cluster it runs in (``RAY_ADDRESS``, else ``auto``); a Ray
    already initialised in this process (a test's local Ray) is used as it is and left running.
    """
    if engine != "Ray":
        yield 1
        return
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError as exc:
        raise TrainerError(
            "RayUnavailable",
            "spec.engine is Ray but Ray is not installed in the trainer image: build it with the "
            "'ray' extra (pip install 'mlops-operator[trainer,ray]')",
        ) from exc
    import joblib

    started = False
    if not ray.is_initialized():
        import os

        address = os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise TrainerError(
                "RayUnavailable", f"cannot join the Ray cluster at {address}: {exc}", transient=True
            ) from exc
        started = True
    register_ray()  # type: ignore[no-untyped-call]
    try:
        with joblib.parallel_backend("ray"):
            yield -1
    finally:
        if started:
            ray.shutdown()


def fit_final(
    *,
    dotted: str,
    params: Mapping[str, Any],
    columns: Columns,
    preprocessing: str,
    features: pd.DataFrame,
    labels: pd.Series,
) -> Any:
    """Fit the chosen parameters on the whole training split; errors get a reason."""
    cls = resolve_estimator_class(dotted)
    check_param_values(dotted, params, "spec.estimator.params")
    pipeline = build_pipeline(cls(**params), columns, preprocessing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline.fit(features, labels)
    except Exception as exc:
        if is_invalid_parameter_error(exc) or (isinstance(exc, ValueError) and _mentions(exc, params)):
            raise TrainerError(
                "InvalidHyperparameters", f"{dotted.rsplit('.', 1)[-1]} rejected {dict(params)}: {exc}"
            ) from exc
        raise TrainerError(
            "TrainingFailed", f"fitting {dotted.rsplit('.', 1)[-1]} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return pipeline


def _mentions(exc: BaseException, params: Mapping[str, Any]) -> bool:
    """Whether an error from ``fit`` is about one of the given parameters (by name or value)."""
    text = str(exc).lower()
    return any(
        name.lower() in text or (isinstance(value, str) and value.lower() in text)
        for name, value in params.items()
        if name != "random_state"
    )
