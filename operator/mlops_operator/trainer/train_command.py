"""``mlops-operator train``: one training run, the entry point of a TrainingJob's pod.

Steps, cheapest and most permanent first, so a bad spec fails in seconds without touching
MLflow: parse the spec, check the estimator and its parameters, look in the registry for a
version this run already registered (see below), load and validate the data, then search, fit,
evaluate, log, and register as the very last step. The result is one JSON object, written to
the termination-message file (the operator reads it from the pod's status) and printed as the
last line of stdout.

Idempotent per run: the Job retries a failed pod, and a pod can die after registering but
before writing its result (OOM-kill, node loss, eviction). The retry then finds the READY
version tagged with the run's identity (``MLOPS_RUN_NAME``, namespace, TrainingJob) and reports
it again, the same result, without loading data or training; without that, the registry would
get a second version of the run and the operator would only hear of that one. Manual runs (no
``MLOPS_RUN_NAME``) are not looked up.

Exit codes: 0 success; 3 permanent failure (bad spec, data, estimator, parameters; the Job's
``podFailurePolicy`` fails the Job at once); 1 transient failure (MLflow or the dataset's server
unreachable: the Job retries up to ``backoffLimit``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.logging_setup import configure_logging, log_format_from_env
from mlops_operator.registry.mlflow_registry import RUN_RESULT_TAG
from mlops_operator.trainer.trainer_errors import EXIT_OK, TrainerError

if TYPE_CHECKING:
    import pandas as pd

    from mlops_operator.trainer.data_validation import Columns, Task
    from mlops_operator.trainer.dataset_loading import LoadedDataset
    from mlops_operator.trainer.fit import SearchPlan
    from mlops_operator.trainer.tracking import LoggedModel

log = logging.getLogger("mlops_operator.trainer")

SPEC_ENV: Final = "MLOPS_TRAININGJOB_SPEC"
TERMINATION_PATH_ENV: Final = "MLOPS_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_PATH: Final = "/dev/termination-log"
#: The kubelet keeps at most 4096 bytes of a termination message.
MAX_RESULT_BYTES: Final = 4096
#: On the run: which engine ran the search trials, and the processes ("<host>/<pid>") they ran in.
SEARCH_ENGINE_TAG: Final = "mlops.dev/search-engine"
SEARCH_WORKERS_TAG: Final = "mlops.dev/search-workers"
#: On the registered version of an ``engine: Ray`` run: the result JSON. A RayJob's driver has no
#: termination message the operator can read, so the operator reads the result from there.
RESULT_TAG: Final = RUN_RESULT_TAG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec-file",
        type=Path,
        default=None,
        help=f"TrainingJob spec as JSON (default: the environment variable {SPEC_ENV})",
    )
    parser.add_argument(
        "--termination-message-path",
        default=None,
        help=f"where to write the result JSON (default: ${TERMINATION_PATH_ENV} or {DEFAULT_TERMINATION_PATH})",
    )
    parser.add_argument(
        "--max-dataset-bytes",
        type=int,
        default=None,
        help="refuse larger datasets (default: MLOPS_DATASET_MAX_BYTES)",
    )


@dataclass(frozen=True)
class RunContext:
    """Who asked for this run, from the pod's environment (set by the operator's Job builder)."""

    trainingjob: str | None
    namespace: str | None
    run_name: str | None
    trigger: str | None
    tracking_uri: str | None
    code_version: str | None
    image: str | None

    @classmethod
    def from_env(cls) -> RunContext:
        env = os.environ.get
        return cls(
            trainingjob=env("MLOPS_TRAININGJOB_NAME") or None,
            namespace=env("MLOPS_TRAININGJOB_NAMESPACE") or None,
            run_name=env("MLOPS_RUN_NAME") or None,
            trigger=env("MLOPS_RUN_TRIGGER") or None,
            tracking_uri=env("MLFLOW_TRACKING_URI") or None,
            code_version=env("MLOPS_CODE_VERSION") or None,
            image=env("MLOPS_IMAGE") or None,
        )

    def log_fields(self) -> dict[str, str]:
        """What every JSON log line of this run names: its TrainingJob and run (unset ones left out)."""
        if not self.trainingjob:
            return {}
        fields = {"kind": "TrainingJob", "name": self.trainingjob, "run": self.run_name or ""}
        return {**fields, "namespace": self.namespace or ""}

    def experiment_name(self, model_name: str) -> str:
        """``MLFLOW_EXPERIMENT_NAME``, else ``<namespace>/<trainingjob>``, else the model's name."""
        explicit = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if explicit:
            return explicit
        if self.namespace and self.trainingjob:
            return f"{self.namespace}/{self.trainingjob}"
        return model_name

    def identity(self) -> dict[str, str | None]:
        """The tags that name this run on its registered version (the lookup key of a retried pod)."""
        from mlops_operator.trainer.tracking import NAMESPACE_TAG, RUN_NAME_TAG, TRAININGJOB_TAG

        return {RUN_NAME_TAG: self.run_name, NAMESPACE_TAG: self.namespace, TRAININGJOB_TAG: self.trainingjob}

    def tags(self) -> dict[str, str]:
        """Lineage tags of the run and its version, the identity among them (unset ones left out)."""
        values = {
            **self.identity(),
            "mlops.dev/trigger": self.trigger,
            "mlops.dev/code-version": self.code_version,
            "mlops.dev/image": self.image,
        }
        return {k: v for k, v in values.items() if v}


def run(args: argparse.Namespace) -> int:
    context = RunContext.from_env()
    configure_logging(log_format_from_env(), static=context.log_fields())
    started = time.monotonic()
    try:
        spec = load_spec(args.spec_file)
        result = train(spec, context, max_dataset_bytes=args.max_dataset_bytes)
        if spec.engine == "Ray":
            publish_result(spec, result)
        code = EXIT_OK
    except TrainerError as exc:
        log.error("training failed: %s", exc)
        result, code = failure(exc), exc.exit_code
    except Exception as exc:  # a bug or an unforeseen library error: still a readable result
        log.error("training failed unexpectedly:\n%s", traceback.format_exc())
        from mlops_operator.registry.mlflow_registry import is_transient

        error = TrainerError(
            "MLflowUnavailable" if is_transient(exc) else "TrainingFailed", f"{type(exc).__name__}: {exc}"
        )
        result, code = failure(error), error.exit_code
    log.info(
        "finished in %.1fs with exit code %d",
        time.monotonic() - started,
        code,
        extra={"model_version": result.get("modelVersion")},
    )
    emit(result, args.termination_message_path)
    return code


def load_spec(path: Path | None) -> TrainingJobSpec:
    """The spec from ``--spec-file`` or ``$MLOPS_TRAININGJOB_SPEC``; ``InvalidSpec`` with the field's path."""
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TrainerError("InvalidSpec", f"cannot read --spec-file {path}: {exc}") from exc
        origin = str(path)
    else:
        text = os.environ.get(SPEC_ENV, "")
        origin = SPEC_ENV
        if not text:
            raise TrainerError("InvalidSpec", f"no spec: pass --spec-file or set {SPEC_ENV}")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainerError("InvalidSpec", f"{origin} is not JSON: {exc}") from exc
    if isinstance(raw, dict) and "spec" in raw and "kind" in raw:
        raw = raw["spec"]  # a whole TrainingJob object is accepted too
    try:
        return TrainingJobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"spec.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()[:10]
        ]
        raise TrainerError("InvalidSpec", "; ".join(problems)) from exc


def train(
    spec: TrainingJobSpec, context: RunContext, *, max_dataset_bytes: int | None = None
) -> dict[str, Any]:
    """Run the whole training; the success result. Raises :class:`TrainerError`.

    Cheapest and most permanent checks first: a bad estimator fails before MLflow is touched,
    bad data before a run exists. From :func:`start_run` on, a failure also marks the MLflow
    run FAILED with its reason (:func:`failures_recorded_on_run`).
    """
    plan = check_estimator(spec)
    if context.run_name:
        earlier = reuse_registration(
            spec, context, task=plan.task, fixed=plan.fixed, plan=plan.search, metric=plan.metric
        )
        if earlier is not None:
            return earlier
    loaded = load_data(spec, max_bytes=max_dataset_bytes)
    check_data(spec, plan, loaded)
    split = split_data(spec, plan, loaded)
    run = start_run(spec, context, plan, loaded)
    with failures_recorded_on_run():
        best = search_parameters(spec, plan, split)
        model = fit_model(spec, plan, split, best.params)
        scores = evaluate_model(model, split, plan.task)
        log_run_details(spec, plan, loaded, split, model, best.params, scores)
        logged = log_model(model, split)
        metrics = reported_metrics(spec, plan.task, scores)
        version = register_version(spec, context, plan, run, loaded, logged, best.params, metrics)
        finish_run()
    return success_result(
        spec,
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        version=version,
        artifact_uri=logged.artifact_uri,
        sha256=logged.sha256,
        metrics=metrics,
        dataset=dataset_result(loaded.uri, loaded.sha256, loaded.rows, loaded.sources),
        params=best.params,
        task=plan.task,
        code_version=context.code_version,
        image=context.image,
        search=search_summary(spec, plan.search, plan.metric, best.trial),
    )


# --- the steps of a training, in the order :func:`train` takes them -----------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """What the spec asks to train, checked: the estimator, its fixed parameters, the search."""

    dotted: str  # the estimator's class, e.g. sklearn.linear_model.LogisticRegression
    task: Task
    fixed: dict[str, Any]  # the spec's parameters, defaults and the seed: every trial's base
    seed: int  # the evaluation seed (train/test split, estimator)
    metric: str  # the metric the search ranks trials by
    search: SearchPlan | None  # the trials to run; None without spec.estimator.search
    search_seed: int  # the search's own seed, else the evaluation seed


@dataclass(frozen=True)
class Split:
    """The prepared data, cut into a training and a test part."""

    columns: Columns
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass(frozen=True)
class ActiveRun:
    """The MLflow run this training logs to, and the lineage tags it was started with."""

    experiment_id: str
    run_id: str
    lineage: dict[str, str]


@dataclass(frozen=True)
class BestParams:
    """The parameters of the final fit, and the search trial they came from (None: no search)."""

    params: dict[str, Any]
    trial: int | None


def check_estimator(spec: TrainingJobSpec) -> TrainingPlan:
    """The estimator, its parameters, the search and the metrics checked; ``InvalidSpec`` otherwise.

    Pure apart from importing scikit-learn, and nothing is imported before the class is found in
    the allow-list. Every search trial's parameters are checked too, so a bad one fails now
    rather than after an hour of searching.
    """
    from mlops_operator.trainer import fit

    dotted = spec.estimator.class_
    task = fit.task_of(dotted)
    cls = fit.resolve_estimator_class(dotted)
    valid = set(cls().get_params(deep=False))
    seed = spec.evaluation.seed
    fixed = fit.base_params(spec.estimator, valid, seed)
    fit.check_param_names(dotted, list(spec.estimator.params or {}), valid, "spec.estimator.params")
    fit.check_param_values(dotted, fixed, "spec.estimator.params")
    search = spec.estimator.search
    plan = None
    metric = fit.DEFAULT_SEARCH_METRIC[task]
    search_seed = seed
    if search is not None:
        fit.check_param_names(dotted, list(search.params), valid, "spec.estimator.search.params")
        metric = search.metric or metric
        fit.check_metric(metric, task, "spec.estimator.search.metric")
        search_seed = search.seed if search.seed is not None else seed
        plan = fit.plan_search(search, search_seed)
        for index, trial in enumerate(plan.trials):
            fit.check_param_values(dotted, {**fixed, **trial}, f"search trial {index} {trial}")
    for name in spec.evaluation.metrics or []:
        fit.check_metric(name, task, "spec.evaluation.metrics")
    wants_auc = metric == "roc_auc" or "roc_auc" in (spec.evaluation.metrics or [])
    if wants_auc and not hasattr(cls(**fixed), "predict_proba"):
        raise TrainerError("InvalidSpec", f"roc_auc needs predict_proba, which {dotted} with {fixed} lacks")
    return TrainingPlan(
        dotted=dotted,
        task=task,
        fixed=fixed,
        seed=seed,
        metric=metric,
        search=plan,
        search_seed=search_seed,
    )


def load_data(spec: TrainingJobSpec, *, max_bytes: int | None) -> LoadedDataset:
    """The dataset, read within the size bound, with its digest (logged)."""
    import datetime as dt

    from mlops_operator.trainer.dataset_loading import add_production, load_dataset

    loaded = load_dataset(spec.dataset, max_bytes=max_bytes)
    log.info(
        "loaded %s: %d rows, %d columns, sha256 %s",
        loaded.uri,
        loaded.rows,
        loaded.frame.shape[1],
        loaded.sha256,
    )
    if spec.dataset.production is not None:
        loaded = add_production(
            loaded, spec.dataset, model=spec.model.name, now=dt.datetime.now(dt.UTC), max_bytes=max_bytes
        )
        production = loaded.sources[-1]
        log.info(
            "added %d labelled production rows of model %s from %s (predicted %s .. %s), sha256 %s: "
            "%d rows in all",
            production["rows"],
            production["model"],
            production["uri"],
            production["firstRequestTime"],
            production["lastRequestTime"],
            production["sha256"],
            loaded.rows,
        )
    return loaded


def check_data(spec: TrainingJobSpec, plan: TrainingPlan, loaded: LoadedDataset) -> None:
    """``DataValidationFailed`` listing every problem: schema, nulls, classes, too few rows to split."""
    from mlops_operator.trainer.data_validation import format_problems, validate, validate_sources

    search = spec.estimator.search
    options: dict[str, Any] = {
        "task": plan.task,
        "test_size": float(spec.evaluation.test_size),
        "cv": search.cv if search is not None else None,
    }
    if loaded.sources:
        problems = validate_sources(loaded.frame, loaded.sources, spec.dataset, **options)
    else:
        problems = validate(loaded.frame, spec.dataset, **options)
    if problems:
        raise TrainerError("DataValidationFailed", format_problems(problems))


def split_data(spec: TrainingJobSpec, plan: TrainingPlan, loaded: LoadedDataset) -> Split:
    """Rows with a target, features prepared, split by the seed (stratified for classification)."""
    from sklearn.model_selection import train_test_split

    from mlops_operator.trainer import fit
    from mlops_operator.trainer.data_validation import column_kinds

    frame = loaded.frame.dropna(subset=[spec.dataset.target])
    columns = column_kinds(frame, spec.dataset)
    features = fit.prepare_features(frame, columns)
    labels = frame[spec.dataset.target]
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        labels,
        test_size=float(spec.evaluation.test_size),
        random_state=plan.seed,
        stratify=labels.astype(str) if plan.task == "classification" else None,
    )
    return Split(columns=columns, x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)


def start_run(
    spec: TrainingJobSpec, context: RunContext, plan: TrainingPlan, loaded: LoadedDataset
) -> ActiveRun:
    """Connect to MLflow and start this training's run, tagged with its lineage."""
    import mlflow

    from mlops_operator.trainer import tracking

    experiment_id = tracking.connect(context.tracking_uri, context.experiment_name(spec.model.name))
    lineage = {
        **context.tags(),
        tracking.DATASET_URI_TAG: loaded.uri,
        tracking.DATASET_SHA256_TAG: loaded.sha256,
        **({tracking.DATASET_SOURCES_TAG: json.dumps(list(loaded.sources))} if loaded.sources else {}),
        "mlops.dev/task": plan.task,
        "mlops.dev/estimator": plan.dotted,
        "mlflow.source.name": "mlops-operator train",
    }
    try:
        active = mlflow.start_run(run_name=context.run_name, tags=lineage)
    except Exception as exc:
        raise tracking.mlflow_error(exc, "starting a run") from exc
    return ActiveRun(experiment_id=experiment_id, run_id=active.info.run_id, lineage=lineage)


@contextmanager
def failures_recorded_on_run() -> Iterator[None]:
    """Mark the active MLflow run FAILED with the reason of any error raised inside, then re-raise.

    A :class:`TrainerError` keeps its reason; an error from MLflow (or its transport) becomes
    the transient ``MLflowUnavailable`` family, anything else ``TrainingFailed``. A
    ``BaseException`` (a kill) passes untouched, as nothing runs after a SIGKILL either.
    """
    from mlops_operator.trainer import tracking

    try:
        yield
    except TrainerError as exc:
        tracking.fail_run(exc.reason, exc.message)
        raise
    except Exception as exc:
        error = (
            tracking.mlflow_error(exc, "training")
            if _from_mlflow(exc)
            else TrainerError("TrainingFailed", f"{type(exc).__name__}: {exc}")
        )
        tracking.fail_run(error.reason, error.message)
        raise error from exc


def search_parameters(spec: TrainingJobSpec, plan: TrainingPlan, split: Split) -> BestParams:
    """Run the planned search (each trial a nested MLflow run); the fixed parameters without one.

    Tags the run with the search and its best trial and logs the best cross-validated score.
    """
    import mlflow

    from mlops_operator.trainer import fit, tracking

    search = spec.estimator.search
    if plan.search is None or search is None:
        return BestParams(params=dict(plan.fixed), trial=None)
    metric = plan.metric
    log.info("search: %s %s by %s on engine %s", search.type, plan.search.note, metric, spec.engine)
    with fit.search_backend(spec.engine) as n_jobs:
        outcome = fit.run_search(
            dotted=plan.dotted,
            fixed=plan.fixed,
            plan=plan.search,
            columns=split.columns,
            preprocessing=spec.estimator.preprocessing,
            task=plan.task,
            metric=metric,
            cv=search.cv,
            seed=plan.search_seed,
            features=split.x_train,
            labels=split.y_train,
            on_trial=lambda t: tracking.log_trial(t.index, t.params, metric, t.score, t.score_std, t.error),
            n_jobs=n_jobs,
        )
    assert outcome.best is not None
    workers = sorted({t.worker for t in outcome.trials if t.worker})
    log.info(
        "search: %d trials ran in %d processes: %s", len(outcome.trials), len(workers), ", ".join(workers)
    )
    best = BestParams(params={**plan.fixed, **outcome.best.params}, trial=outcome.best.index)
    mlflow.set_tags(
        {
            "mlops.dev/search": plan.search.note,
            tracking.BEST_TRIAL_TAG: str(best.trial),
            SEARCH_ENGINE_TAG: spec.engine,
            SEARCH_WORKERS_TAG: ",".join(workers)[:4000],
        }
    )
    tracking.log_metrics({f"cv_{metric}": float(outcome.best.score or 0.0)})
    return best


def fit_model(spec: TrainingJobSpec, plan: TrainingPlan, split: Split, params: dict[str, Any]) -> Any:
    """The final pipeline (preprocessing + estimator), fitted on the whole training part."""
    from mlops_operator.trainer import fit

    return fit.fit_final(
        dotted=plan.dotted,
        params=params,
        columns=split.columns,
        preprocessing=spec.estimator.preprocessing,
        features=split.x_train,
        labels=split.y_train,
    )


def evaluate_model(model: Any, split: Split, task: Task) -> dict[str, float]:
    """Every metric of the task, scored on the test part."""
    from mlops_operator.trainer import evaluate

    return evaluate.evaluate(model, split.x_test, split.y_test, task)


def reported_metrics(spec: TrainingJobSpec, task: Task, scores: dict[str, float]) -> dict[str, str]:
    """The metrics the result and the version carry (asked for, or the task's, plus gated ones), as decimals."""
    from mlops_operator.trainer import evaluate, fit

    wanted = list(spec.evaluation.metrics or fit.metrics_for(task))
    wanted += [g.metric for g in spec.evaluation.gates or [] if g.metric in fit.metrics_for(task)]
    return evaluate.decimal_strings({k: v for k, v in scores.items() if k in wanted})


def log_run_details(
    spec: TrainingJobSpec,
    plan: TrainingPlan,
    loaded: LoadedDataset,
    split: Split,
    model: Any,
    params: dict[str, Any],
    scores: dict[str, float],
) -> None:
    """Log the run's parameters, every score, the evaluation figure and the reference profile."""
    from mlops_operator.trainer import evaluate, tracking
    from mlops_operator.trainer.profile_builder import build_profile

    tracking.log_params(
        {
            "estimator": plan.dotted,
            "preprocessing": spec.estimator.preprocessing,
            "test_size": spec.evaluation.test_size,
            "seed": plan.seed,
            "rows": loaded.rows,
            **source_params(loaded.sources),
            "features": len(split.columns.features),
            **{f"param.{k}": v for k, v in params.items()},
        }
    )
    tracking.log_metrics(scores)
    predictions = model.predict(split.x_test)
    if plan.task == "classification":
        figure = evaluate.confusion_matrix_figure(split.y_test, predictions, list(model.classes_))
        tracking.log_figure(figure, tracking.CONFUSION_MATRIX_ARTIFACT)
    else:
        tracking.log_figure(
            evaluate.predicted_vs_actual_figure(split.y_test, predictions),
            tracking.PREDICTED_VS_ACTUAL_ARTIFACT,
        )
    profile = build_profile(
        split.x_train, split.y_train, split.columns, task=plan.task, target=spec.dataset.target
    )
    tracking.log_profile(profile)


def log_model(model: Any, split: Split) -> LoggedModel:
    """Save and upload the model (with an input example) and tag the run with its digest."""
    import mlflow

    from mlops_operator.trainer import tracking

    example = split.x_train.head(5)
    logged = tracking.save_and_log_model(model, example, model.predict(example))
    mlflow.set_tag(tracking.SHA256_TAG, logged.sha256)
    return logged


def register_version(
    spec: TrainingJobSpec,
    context: RunContext,
    plan: TrainingPlan,
    run: ActiveRun,
    loaded: LoadedDataset,
    logged: LoggedModel,
    params: dict[str, Any],
    metrics: dict[str, str],
) -> str:
    """Register the logged model as a new version, with its model card and tags; the version number.

    The tags carry the run's identity, which is what a retried pod looks up
    (:func:`reuse_registration`), so this is the very last thing a run does before finishing.
    """
    from mlops_operator.trainer import evaluate, tracking

    card = evaluate.model_card(
        spec,
        task=plan.task,
        metrics=metrics,
        dataset_uri=loaded.uri,
        dataset_sha256=loaded.sha256,
        rows=loaded.rows,
        params=params,
        trainingjob=f"{context.namespace}/{context.trainingjob}" if context.trainingjob else None,
        code_version=context.code_version,
    )
    version_tags = {
        **{k: v for k, v in run.lineage.items() if k.startswith("mlops.dev/")},
        tracking.SHA256_TAG: logged.sha256,
        tracking.RUN_ID_TAG: run.run_id,
        **{f"{tracking.METRIC_TAG_PREFIX}{k}": v for k, v in metrics.items()},
    }
    return tracking.register(
        name=spec.model.name,
        source=logged.artifact_uri,
        run_id=run.run_id,
        tags={k: v[:5000] for k, v in version_tags.items()},
        description=card,
        model_description=spec.model.description,
    )


def finish_run() -> None:
    """End the active MLflow run as FINISHED."""
    import mlflow

    from mlops_operator.trainer import tracking

    try:
        mlflow.end_run("FINISHED")
    except Exception as exc:
        raise tracking.mlflow_error(exc, "finishing the run") from exc


def success_result(
    spec: TrainingJobSpec,
    *,
    run_id: str,
    experiment_id: str,
    version: str,
    artifact_uri: str,
    sha256: str,
    metrics: dict[str, str],
    dataset: dict[str, Any],
    params: dict[str, Any],
    task: str,
    code_version: str | None,
    image: str | None,
    search: dict[str, Any] | None,
) -> dict[str, Any]:
    """The result of a run that registered a version (built once, whether trained now or found again)."""
    result: dict[str, Any] = {
        "status": "Succeeded",
        "mlflowRunId": run_id,
        "experimentId": experiment_id,
        "modelName": spec.model.name,
        "modelVersion": version,
        "modelUri": f"models:/{spec.model.name}/{version}",
        "artifactUri": artifact_uri,
        "sha256": sha256,
        "metrics": metrics,
        "dataset": dataset,
        "params": {k: _jsonable(v) for k, v in params.items()},
        "estimator": spec.estimator.class_,
        "codeVersion": code_version,
        "image": image,
        "task": task,
    }
    if search is not None:
        result["search"] = search
    return result


def publish_result(spec: TrainingJobSpec, result: dict[str, Any]) -> None:
    """Tag the registered version with the result (:data:`RESULT_TAG`), for the operator of a RayJob run.

    Done by every attempt that succeeds, a retried one that found its version too, so a driver
    killed between registering and tagging leaves the tag to the RayJob's next attempt. MLflow
    down fails the attempt as transient (the RayJob's backoffLimit retries it).
    """
    from mlflow import MlflowClient

    from mlops_operator.trainer import tracking

    try:
        MlflowClient().set_model_version_tag(
            spec.model.name, str(result["modelVersion"]), RESULT_TAG, render(result)
        )
    except Exception as exc:
        raise tracking.mlflow_error(exc, "tagging the version with its result") from exc


def search_summary(
    spec: TrainingJobSpec, plan: SearchPlan | None, metric: str, best_trial: int | None
) -> dict[str, Any] | None:
    search = spec.estimator.search
    if search is None or plan is None or best_trial is None:
        return None
    return {
        "type": search.type,
        "metric": metric,
        "trials": len(plan.trials),
        "bestTrial": best_trial,
        "truncated": plan.truncated,
    }


def reuse_registration(
    spec: TrainingJobSpec,
    context: RunContext,
    *,
    task: Task,
    fixed: dict[str, Any],
    plan: SearchPlan | None,
    metric: str,
) -> dict[str, Any] | None:
    """The result of the version an earlier attempt of this run registered, rebuilt; None to train.

    Rebuilt from the version's tags (sha256, metrics, dataset) and its run (experiment, rows,
    best trial). The parameters are recomputed as the first attempt computed them: the spec is
    the same (it is the Job's), so are the fixed parameters and the seeded search plan, and the
    run says which trial won; MLflow keeps parameters only as strings. A version missing one of
    these is not reused (and the run trains and registers again).
    """
    from mlops_operator.trainer import fit, tracking

    tracking.configure(context.tracking_uri)
    found = tracking.find_registration(spec.model.name, context.identity())
    if found is None:
        return None
    tags = found.tags
    sha256 = tags.get(tracking.SHA256_TAG)
    logged = {
        key.removeprefix(tracking.METRIC_TAG_PREFIX): value
        for key, value in tags.items()
        if key.startswith(tracking.METRIC_TAG_PREFIX)
    }
    order = list(fit.metrics_for(task))  # the order the first attempt reported them in
    metrics = {
        k: logged[k] for k in sorted(logged, key=lambda k: (order.index(k) if k in order else len(order), k))
    }
    best_trial = _int(found.run_tags.get(tracking.BEST_TRIAL_TAG))
    trial_known = plan is None or (best_trial is not None and 0 <= best_trial < len(plan.trials))
    if not sha256 or not metrics or not trial_known:
        missing = [
            what
            for what, present in (
                ("a sha256 tag", sha256),
                ("metric tags", metrics),
                ("the best-trial tag on its run", trial_known),
            )
            if not present
        ]
        log.warning(
            "run %s registered version %s of %s, but it lacks %s: not reused, training again",
            context.run_name,
            found.version,
            found.name,
            " and ".join(missing),
        )
        return None
    params = dict(fixed)
    if plan is not None and best_trial is not None:
        params.update(plan.trials[best_trial])
    log.warning(
        "run %s had already registered version %s of %s (MLflow run %s, sha256 %s) in an earlier "
        "attempt: reporting that version, not training again",
        context.run_name,
        found.version,
        found.name,
        found.run_id,
        sha256,
    )
    tracking.finish_interrupted_run(found)
    return success_result(
        spec,
        run_id=found.run_id,
        experiment_id=found.experiment_id,
        version=found.version,
        artifact_uri=found.source,
        sha256=sha256,
        metrics=metrics,
        dataset=dataset_result(
            tags.get(tracking.DATASET_URI_TAG),
            tags.get(tracking.DATASET_SHA256_TAG),
            _int(found.run_params.get("rows")),
            _sources_from_tag(tags.get(tracking.DATASET_SOURCES_TAG)),
        ),
        params=params,
        task=task,
        code_version=tags.get(f"{tracking.TAG_PREFIX}code-version"),
        image=tags.get(f"{tracking.TAG_PREFIX}image"),
        search=search_summary(spec, plan, metric, best_trial),
    )


def source_params(sources: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """MLflow parameters of a merged dataset: rows, hash and time range of each source."""
    params: dict[str, Any] = {}
    for source in sources:
        name = source["name"]
        params[f"rows.{name}"] = source["rows"]
        params[f"{name}.uri"] = source["uri"]
        params[f"{name}.sha256"] = source.get("sha256")
        if name == "production":
            params["production.model"] = source.get("model")
            params["production.from"] = source.get("firstRequestTime")
            params["production.to"] = source.get("lastRequestTime")
    return params


def dataset_result(
    uri: str | None, sha256: str | None, rows: int | None, sources: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The result's ``dataset``: what the ModelVersion's ``lineage.dataset`` becomes."""
    result: dict[str, Any] = {"uri": uri, "sha256": sha256, "rows": rows}
    if sources:
        result["sources"] = [dict(s) for s in sources]
    return result


def _sources_from_tag(text: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [s for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _from_mlflow(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("mlflow", "requests", "urllib3", "sqlalchemy", "botocore"))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def failure(error: TrainerError) -> dict[str, Any]:
    return {"status": "Failed", "reason": error.reason, "message": error.message}


def render(result: dict[str, Any], limit: int = MAX_RESULT_BYTES) -> str:
    """Compact JSON under ``limit`` bytes: long messages and parameter values are cut, never the keys."""
    text = json.dumps(result, separators=(",", ":"), sort_keys=False)
    if len(text.encode()) < limit:
        return text
    trimmed = dict(result)
    if isinstance(trimmed.get("message"), str):
        budget = max(200, len(trimmed["message"]) - (len(text.encode()) - limit) - 64)
        trimmed["message"] = trimmed["message"][:budget] + "..."
    if isinstance(trimmed.get("params"), dict):
        trimmed["params"] = {
            k: (v if len(json.dumps(v)) <= 64 else str(v)[:60] + "...") for k, v in trimmed["params"].items()
        }
    text = json.dumps(trimmed, separators=(",", ":"))
    if len(text.encode()) >= limit and "params" in trimmed:
        trimmed["params"] = {"truncated": True}
        text = json.dumps(trimmed, separators=(",", ":"))
    if len(text.encode()) >= limit:  # last resort: the essentials only
        keep = (
            "status",
            "reason",
            "mlflowRunId",
            "modelName",
            "modelVersion",
            "modelUri",
            "sha256",
            "metrics",
        )
        text = json.dumps({k: trimmed[k] for k in keep if k in trimmed}, separators=(",", ":"))
    return text


def emit(result: dict[str, Any], path: str | None = None) -> None:
    """The result to the termination-message file (warn if unwritable) and as stdout's last line."""
    text = render(result)
    target = path or os.environ.get(TERMINATION_PATH_ENV) or DEFAULT_TERMINATION_PATH
    try:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", target, exc)
    sys.stderr.flush()
    print(text, flush=True)
