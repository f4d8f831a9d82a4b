"""Accuracy from ground-truth feedback, and the distribution of predicted classes.

Ground truth arrives later than the prediction, on ``/feedback``, carrying the request id of
the prediction it labels. :class:`PredictionStore` remembers recent predictions by request
id, in bounded memory: at most ``max_entries`` (the oldest is dropped first) and each for at
most ``ttl_seconds`` (a label that comes later than that is *unknown*). Time is passed in as
``now`` by the caller (``online.py`` injects the clock), so everything here is pure.

Joining feedback, :class:`FeedbackJoin`:

- *matched*: the id is pending; its outcome enters the window of the last M labelled
  outcomes. **First label wins**: the entry is marked labelled and kept until it expires, so a
  second label for the same id (a client retry, or a second annotator) is a *duplicate*: it
  returns False and counts nothing. Corrections are therefore not possible through
  feedback; the alternative (last wins) would have to rewrite an outcome already in the
  window, and retries are by far the more common case.
- *unknown*: never seen, expired, or dropped because the store was full. Returns False and
  counts nothing (except in the feedback counter, by result).

Classification outcomes are 1/0 (predicted label == true label), compared as label strings
(:func:`label_key`: ``1``, ``1.0``, ``numpy.int64(1)`` and ``"1"`` are all the label ``"1"``);
the window gives the accuracy. Regression outcomes are signed errors (prediction - truth);
the window gives RMSE, MAE and the mean error (bias). These are computed on demand from the
ring (O(M), at scrape time) rather than kept as running float sums, which would accumulate
rounding error over millions of updates.

:class:`ClassWindow` counts the predicted classes of the last W predictions (ring buffer of
class indices with running counts, like the drift window) and compares them with the
reference class frequencies of the training labels (PSI and chi-square from ``drift.py``):
a shift in what the model predicts is often the first visible sign of drift.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from mlops_operator.monitoring.drift import chi_square, psi

Task = Literal["classification", "regression"]
FeedbackResult = Literal["matched", "unknown", "duplicate"]
#: Label value for predicted classes beyond the known ones (keeps metric labels bounded).
OTHER_CLASS = "_other"
#: When the profile lists no classes, the first this-many distinct predicted labels get their
#: own bucket and the rest share ``OTHER_CLASS``.
MAX_DYNAMIC_CLASSES = 64


def label_key(value: object) -> str:
    """The canonical string of a class label: integral numbers lose their ``.0``."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]  # checked just above, cheaply
    if kind is int:
        return str(value)
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(slots=True)
class _Pending:
    time: float
    prediction: str | float
    labelled: bool = False


class PredictionStore:
    """Recent predictions by request id: at most ``max_entries``, each for ``ttl_seconds``."""

    def __init__(self, max_entries: int, ttl_seconds: float) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_seconds > 0")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, request_id: str, prediction: str | float, now: float) -> None:
        """Remember a prediction; a repeated id replaces the older entry (and its label state)."""
        entries = self._entries
        if request_id in entries:
            del entries[request_id]
        entries[request_id] = _Pending(now, prediction)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def expire(self, now: float) -> None:
        """Drop entries older than the TTL (the dict is in insertion order, i.e. time order)."""
        entries = self._entries
        horizon = now - self.ttl_seconds
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.time >= horizon:
                break
            entries.popitem(last=False)

    def claim(self, request_id: str, now: float) -> tuple[FeedbackResult, str | float | None]:
        """Look up a prediction for feedback; the first claim wins, later ones are duplicates."""
        self.expire(now)
        entry = self._entries.get(request_id)
        if entry is None:
            return "unknown", None
        if entry.labelled:
            return "duplicate", None
        entry.labelled = True
        return "matched", entry.prediction


class OutcomeWindow:
    """The last ``size`` outcomes (floats) in a preallocated ring."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self._values = np.zeros(size, dtype=np.float64)
        self._position = 0
        self._filled = 0

    def __len__(self) -> int:
        return self._filled

    def add(self, value: float) -> None:
        self._values[self._position] = value
        self._position = (self._position + 1) % self._values.size
        self._filled = min(self._values.size, self._filled + 1)

    def values(self) -> npt.NDArray[np.float64]:
        """A copy of the outcomes in the window (order not preserved)."""
        return self._values[: self._filled].copy()


@dataclass(frozen=True)
class AccuracyStats:
    task: Task
    labelled: int
    accuracy: float | None = None
    rmse: float | None = None
    mae: float | None = None
    mean_error: float | None = None


def accuracy_stats(task: Task, outcomes: npt.NDArray[np.float64]) -> AccuracyStats:
    """Accuracy (classification, outcomes 0/1) or RMSE/MAE/bias (regression, signed errors)."""
    n = int(outcomes.size)
    if n == 0:
        return AccuracyStats(task, 0)
    if task == "classification":
        return AccuracyStats(task, n, accuracy=float(outcomes.mean()))
    return AccuracyStats(
        task,
        n,
        rmse=math.sqrt(float(np.mean(outcomes * outcomes))),
        mae=float(np.mean(np.abs(outcomes))),
        mean_error=float(outcomes.mean()),
    )


@dataclass
class FeedbackJoin:
    """Joins feedback to stored predictions and keeps the window of labelled outcomes.

    Not thread-safe: the caller holds a lock.
    """

    task: Task
    store: PredictionStore
    window: OutcomeWindow
    results: dict[str, int] = field(default_factory=lambda: {"matched": 0, "unknown": 0, "duplicate": 0})

    def record(self, request_ids: Sequence[str], predictions: Sequence[str | float], now: float) -> None:
        self.store.expire(now)
        for request_id, prediction in zip(request_ids, predictions, strict=True):
            self.store.put(request_id, prediction, now)

    def feedback(self, request_id: str, label: str | float, now: float) -> FeedbackResult:
        """Join one label; raises ValueError (before touching any state) for a bad label."""
        truth: str | float
        if self.task == "regression":
            truth = float(label)
            if not math.isfinite(truth):
                raise ValueError(f"regression label must be a finite number, got {label!r}")
        else:
            truth = label_key(label)
        result, prediction = self.store.claim(request_id, now)
        self.results[result] += 1
        if result == "matched" and prediction is not None:
            if self.task == "regression":
                assert isinstance(truth, float) and isinstance(prediction, float)
                self.window.add(prediction - truth)
            else:
                self.window.add(1.0 if prediction == truth else 0.0)
        return result

    def stats(self) -> AccuracyStats:
        return accuracy_stats(self.task, self.window.values())


class ClassWindow:
    """Predicted classes of the last ``size`` predictions, plus cumulative counts per class.

    ``classes`` fixes the buckets (from the profile); when it is None the first
    :data:`MAX_DYNAMIC_CLASSES` distinct labels get buckets as they appear. Anything else
    counts as :data:`OTHER_CLASS`. Plain preallocated lists: per prediction this is a few
    list operations, cheaper than numpy scalar indexing. Not thread-safe: the caller locks.
    """

    def __init__(self, size: int, classes: Sequence[str] | None) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.fixed = classes is not None
        self._labels: list[str] = [label_key(c) for c in classes] if classes is not None else []
        self._index: dict[str, int] = {label: i for i, label in enumerate(self._labels)}
        buckets = (len(self._labels) if classes is not None else MAX_DYNAMIC_CLASSES) + 1
        self._other = buckets - 1
        self._window_counts = [0] * buckets
        self._totals = [0] * buckets
        self._ring = [0] * size
        self._position = 0
        self._filled = 0

    def index(self, label: str) -> int:
        found = self._index.get(label)
        if found is not None:
            return found
        if self.fixed or len(self._labels) >= MAX_DYNAMIC_CLASSES:
            return self._other
        self._labels.append(label)
        self._index[label] = len(self._labels) - 1
        return len(self._labels) - 1

    def add(self, labels: Iterable[str]) -> None:
        ring, size = self._ring, len(self._ring)
        window, totals = self._window_counts, self._totals
        position, filled = self._position, self._filled
        for label in labels:
            bucket = self.index(label)
            if filled == size:
                window[ring[position]] -= 1
            else:
                filled += 1
            ring[position] = bucket
            window[bucket] += 1
            totals[bucket] += 1
            position = position + 1 if position + 1 < size else 0
        self._position, self._filled = position, filled

    def labels(self) -> list[str]:
        return [*self._labels, OTHER_CLASS]

    def window_counts(self) -> dict[str, int]:
        """Counts per class over the window (known classes always present, other only if seen)."""
        return self._as_dict(self._window_counts)

    def totals(self) -> dict[str, int]:
        """Cumulative counts per class since start."""
        return self._as_dict(self._totals)

    def _as_dict(self, counts: list[int]) -> dict[str, int]:
        result = {label: counts[i] for i, label in enumerate(self._labels)}
        if counts[self._other] > 0:
            result[OTHER_CLASS] = counts[self._other]
        return result

    @property
    def rows(self) -> int:
        return self._filled


@dataclass(frozen=True)
class ClassDistribution:
    rows: int
    counts: dict[str, int]
    ratios: dict[str, float]
    psi: float | None
    chi_square_p_value: float | None


def class_distribution(
    counts: dict[str, int],
    reference_classes: Sequence[str] | None,
    reference_frequencies: Sequence[float] | None,
) -> ClassDistribution:
    """Shares of predicted classes in the window and their PSI / chi-square vs the reference."""
    rows = sum(counts.values())
    ratios = {label: (count / rows if rows else 0.0) for label, count in counts.items()}
    if not rows or reference_classes is None or reference_frequencies is None:
        return ClassDistribution(rows, counts, ratios, None, None)
    keys = [label_key(c) for c in reference_classes]
    live = [counts.get(k, 0) for k in keys] + [counts.get(OTHER_CLASS, 0)]
    reference = [*reference_frequencies, 0.0]
    _, p_value, _ = chi_square(reference, live)
    return ClassDistribution(rows, counts, ratios, psi(reference, live), p_value)
