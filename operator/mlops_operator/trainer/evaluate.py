"""Evaluation on the held-out split: metrics, the confusion-matrix image, the model card text.

Classifiers: accuracy, and precision / recall / f1 *macro-averaged* (each class counts the same,
also for binary targets, so a rare class is not hidden and string labels need no
``pos_label``), and ROC AUC (binary: on the second class's probability; multiclass: one-vs-rest,
macro) when the estimator has ``predict_proba``. Regressors: rmse, mae, r2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.trainer.data_validation import Task
from mlops_operator.trainer.fit import metrics_for, score

#: Decimal places of metrics in the termination message, ModelVersion and tags.
METRIC_PLACES: Final = 4


def evaluate(model: Any, features: pd.DataFrame, labels: pd.Series, task: Task) -> dict[str, float]:
    """Every metric of ``task`` the model supports, on held-out data (NaN results left out)."""
    results: dict[str, float] = {}
    for metric in metrics_for(task):
        if metric == "roc_auc" and not hasattr(model, "predict_proba"):
            continue
        value = score(metric, model, features, labels)
        if not math.isnan(value):
            results[metric] = value
    return results


def decimal_strings(metrics: Mapping[str, float], places: int = METRIC_PLACES) -> dict[str, str]:
    """Metrics as decimal strings ("0.9533"), the way thresholds are written in spec."""
    return {name: f"{value:.{places}f}" for name, value in metrics.items() if math.isfinite(value)}


def confusion_matrix_figure(labels: pd.Series, predictions: np.ndarray[Any, Any], classes: list[Any]) -> Any:
    """A matplotlib figure of the confusion matrix (Agg backend: no display in a pod)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.6 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        labels, predictions, labels=classes, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title("Confusion matrix (held-out split)")
    fig.tight_layout()
    return fig


def predicted_vs_actual_figure(labels: pd.Series, predictions: np.ndarray[Any, Any]) -> Any:
    """Regressors' counterpart of the confusion matrix: predictions against true values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(labels, predictions, s=10, alpha=0.6)
    low, high = float(min(labels.min(), predictions.min())), float(max(labels.max(), predictions.max()))
    ax.plot([low, high], [low, high], linestyle="--", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual (held-out split)")
    fig.tight_layout()
    return fig


def model_card(
    spec: TrainingJobSpec,
    *,
    task: Task,
    metrics: Mapping[str, str],
    dataset_uri: str,
    dataset_sha256: str,
    rows: int,
    params: Mapping[str, Any],
    trainingjob: str | None,
    code_version: str | None,
) -> str:
    """The registered version's description (Markdown): what it is, what it was trained on, how it scored."""
    lines = [f"# {spec.model.name}"]
    if spec.model.description:
        lines += ["", spec.model.description]
    lines += [
        "",
        f"- Task: {task}; estimator: `{spec.estimator.class_}`",
        f"- Dataset: `{dataset_uri}` ({rows} rows, sha256 `{dataset_sha256[:16]}...`), target `{spec.dataset.target}`",
        f"- Held-out metrics: {', '.join(f'{k} {v}' for k, v in metrics.items())}",
        f"- Parameters: {', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))}",
    ]
    if trainingjob:
        lines.append(f"- TrainingJob: {trainingjob}")
    if code_version:
        lines.append(f"- Code version: {code_version}")
    card = spec.model_card
    if card and card.intended_use:
        lines += ["", "## Intended use", "", card.intended_use]
    if card and card.limitations:
        lines += ["", "## Limitations", "", card.limitations]
    if card and card.owners:
        lines += ["", "## Owners", "", ", ".join(card.owners)]
    text = "\n".join(lines)
    return text if len(text) <= 5000 else text[:4997] + "..."
