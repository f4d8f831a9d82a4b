"""Data validation before training: a DataFrame and the spec in, a list of problems out (pure).

Every check runs and every problem is collected, so one failed run tells the user all that is
wrong with the data (the first :data:`MAX_PROBLEMS_SHOWN` in the message), not one thing at a
time. Messages name the column, the value and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import pandas as pd
from pandas.api import types as ptypes

from mlops_operator.api.trainingjob import ColumnSchema, Dataset, DataValidation

Task = Literal["classification", "regression"]

MAX_PROBLEMS_SHOWN: Final = 10
#: A text column where at least this share of values parse as numbers was meant to be numeric.
_NUMERIC_LOOKING: Final = 0.5
_TRUE_FALSE: Final = frozenset({"true", "false"})


@dataclass(frozen=True)
class Columns:
    """Which columns the model takes, and how preprocessing treats each."""

    features: list[str]
    numeric: list[str]
    categorical: list[str]


def feature_names(frame: pd.DataFrame, dataset: Dataset) -> list[str]:
    """``spec.dataset.features`` in order, else every column but the target (in file order)."""
    if dataset.features:
        return list(dataset.features)
    return [str(c) for c in frame.columns if str(c) != dataset.target]


def column_kinds(frame: pd.DataFrame, dataset: Dataset) -> Columns:
    """Numeric vs categorical: the declared schema's dtype wins, else the pandas dtype decides.

    Booleans and text are categorical; a declared ``category`` turns an integer code column
    (zip codes, product ids) into one-hot features instead of a number.
    """
    declared = {c.name: c.dtype for c in (dataset.validation.schema_ or [])}
    numeric: list[str] = []
    categorical: list[str] = []
    features = [f for f in feature_names(frame, dataset) if f in frame.columns]
    for name in features:
        kind = declared.get(name)
        if kind in ("int", "float") or (kind is None and is_numeric(frame[name])):
            numeric.append(name)
        else:
            categorical.append(name)
    return Columns(features=features, numeric=numeric, categorical=categorical)


def is_numeric(series: pd.Series) -> bool:
    return bool(ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series))


def format_problems(problems: Sequence[str]) -> str:
    """One message for a condition: the first problems, and how many more there were."""
    shown = list(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - len(shown)
    text = "; ".join(shown)
    if more > 0:
        text += f"; and {more} more problem{'s' if more > 1 else ''}"
    return f"{len(problems)} data problem{'s' if len(problems) != 1 else ''}: {text}"


def validate(
    frame: pd.DataFrame,
    dataset: Dataset,
    *,
    task: Task,
    test_size: float,
    cv: int | None = None,
) -> list[str]:
    """Every problem that stops ``frame`` from training the model ``dataset`` describes."""
    problems: list[str] = []
    rules = dataset.validation
    columns = [str(c) for c in frame.columns]
    target = dataset.target

    if target not in frame.columns:
        problems.append(f"target column {target!r} not found (columns: {_some(columns)})")
    features = feature_names(frame, dataset)
    missing_features = [f for f in features if f not in frame.columns]
    if missing_features:
        problems.append(f"feature columns {_some(missing_features)} not found (columns: {_some(columns)})")
    if target in features:
        problems.append(f"the target column {target!r} is also listed in spec.dataset.features")
    if not [f for f in features if f in frame.columns and f != target]:
        problems.append("no feature columns: the dataset holds only the target")

    if len(frame) < rules.min_rows:
        problems.append(f"{len(frame)} rows, fewer than validation.minRows={rules.min_rows}")

    for column in rules.schema_ or []:
        problems.extend(_check_declared(frame, column))

    problems.extend(_check_nulls(frame, [f for f in features if f in frame.columns] + [target], rules))

    declared = {c.name for c in rules.schema_ or []}
    for name in features:
        if name in frame.columns and name not in declared:
            problem = _numeric_looking_text(frame[name], name)
            if problem:
                problems.append(problem)

    if target in frame.columns:
        labels = frame[target].dropna()
        if task == "regression":
            if not is_numeric(frame[target]):
                problems.append(
                    f"target column {target!r} has dtype {frame[target].dtype} but a regressor needs numbers"
                    f"{_bad_numbers(frame[target])}"
                )
        else:
            problems.extend(_check_classes(labels, target, rules.min_class_fraction, test_size, cv))
    return problems


def validate_sources(
    frame: pd.DataFrame,
    sources: Sequence[dict[str, Any]],
    dataset: Dataset,
    *,
    task: Task,
    test_size: float,
    cv: int | None = None,
) -> list[str]:
    """Every problem of data merged from several sources, each said of the source it comes from.

    Per source (its rows, in ``sources`` order): the declared schema, nulls and numeric-looking
    text. Then the merged data as a whole (row count, targets, classes, the split), as
    :func:`validate` checks one dataset.
    """
    problems: list[str] = []
    rules = dataset.validation
    features = [f for f in feature_names(frame, dataset) if f in frame.columns]
    declared = {c.name for c in rules.schema_ or []}
    offset = 0
    for source in sources:
        rows = int(source["rows"])
        part = frame.iloc[offset : offset + rows]
        offset += rows
        label = f"{source['name']} source {source['uri']}"
        found: list[str] = []
        for column in rules.schema_ or []:
            found.extend(_check_declared(part, column))
        found.extend(_check_nulls(part, [*features, dataset.target], rules))
        for name in features:
            if name not in declared:
                problem = _numeric_looking_text(part[name], name)
                if problem:
                    found.append(problem)
        problems.extend(f"{label}: {p}" for p in found)
    counts = " + ".join(f"{s['rows']} {s['name']}" for s in sources)
    merged = validate(frame, dataset, task=task, test_size=test_size, cv=cv)
    problems.extend(f"merged data ({counts} rows): {p}" for p in merged if p not in problems)
    return problems


def _check_declared(frame: pd.DataFrame, column: ColumnSchema) -> list[str]:
    name = column.name
    if name not in frame.columns:
        return [f"declared column {name!r} not found"]
    series = frame[name]
    values = series.dropna()
    problems: list[str] = []
    if not _dtype_matches(series, column.dtype):
        problems.append(
            f"column {name!r} should be {column.dtype} but is {series.dtype}{_bad_numbers(series)}"
            if column.dtype in ("int", "float")
            else f"column {name!r} should be {column.dtype} but is {series.dtype}"
        )
    nulls = int(series.isna().sum())
    if nulls and not column.nullable:
        problems.append(f"column {name!r} has {nulls} null values but is declared nullable: false")
    if column.min is not None or column.max is not None:
        numbers = pd.to_numeric(values, errors="coerce").dropna()
        if column.min is not None:
            below = numbers[numbers < float(Decimal(column.min))]
            if len(below):
                problems.append(
                    f"column {name!r} has {len(below)} values below min {column.min} (lowest {below.min():g})"
                )
        if column.max is not None:
            above = numbers[numbers > float(Decimal(column.max))]
            if len(above):
                problems.append(
                    f"column {name!r} has {len(above)} values above max {column.max} (highest {above.max():g})"
                )
    if column.allowed is not None:
        allowed = set(column.allowed)
        unexpected = sorted({str(v) for v in values if str(v) not in allowed})
        if unexpected:
            problems.append(
                f"column {name!r} has values outside allowed {_some(sorted(allowed), 8)}: {_some(unexpected, 5)}"
            )
    return problems


def _dtype_matches(series: pd.Series, dtype: str) -> bool:
    values = series.dropna()
    if dtype == "float":
        return is_numeric(series)
    if dtype == "int":
        if ptypes.is_integer_dtype(series) and not ptypes.is_bool_dtype(series):
            return True
        # A null turns an integer column into float64 when pandas reads it: accept whole numbers.
        return is_numeric(series) and bool((values == values.round()).all())
    if dtype == "bool":
        return bool(
            ptypes.is_bool_dtype(series)
            or all(isinstance(v, bool) or str(v).lower() in _TRUE_FALSE for v in values)
        )
    if dtype == "string":
        return bool(ptypes.is_string_dtype(series) or ptypes.is_object_dtype(series))
    return True  # category: any dtype can be treated as categories


def _check_nulls(frame: pd.DataFrame, columns: list[str], rules: DataValidation) -> list[str]:
    present = [c for c in dict.fromkeys(columns) if c in frame.columns]
    if not present or len(frame) == 0:
        return []
    limit = Decimal(rules.max_null_fraction)
    fractions = {c: float(frame[c].isna().mean()) for c in present}
    over = sorted(
        ((f, c) for c, f in fractions.items() if Decimal(repr(f)) > limit),
        key=lambda item: (-item[0], item[1]),
    )
    if not over:
        return []
    worst_fraction, worst = over[0]
    message = f"column {worst!r} is {worst_fraction:.1%} null, over validation.maxNullFraction={rules.max_null_fraction}"
    if len(over) > 1:
        message += f" ({len(over) - 1} more columns over the limit: {_some([c for _, c in over[1:]], 5)})"
    return [message]


def _numeric_looking_text(series: pd.Series, name: str) -> str | None:
    """A text column whose values are mostly numbers: the rest are typos ("n/a", "1,5", "abc")."""
    if is_numeric(series) or ptypes.is_bool_dtype(series):
        return None
    values = series.dropna()
    if values.empty:
        return None
    parsed = pd.to_numeric(values.astype(str), errors="coerce")
    share = float(parsed.notna().mean())
    if share < _NUMERIC_LOOKING or share == 1.0:
        return None
    bad = sorted({str(v) for v in values[parsed.isna()]})
    return f"numeric column {name!r} has {int(parsed.isna().sum())} non-numeric values: {_some(bad, 5)}"


def _bad_numbers(series: pd.Series) -> str:
    if is_numeric(series):
        return ""
    values = series.dropna()
    parsed = pd.to_numeric(values.astype(str), errors="coerce")
    bad = sorted({str(v) for v in values[parsed.isna()]})
    return f" (non-numeric values: {_some(bad, 5)})" if bad else ""


def _check_classes(
    labels: pd.Series, target: str, min_class_fraction: str | None, test_size: float, cv: int | None
) -> list[str]:
    problems: list[str] = []
    counts = labels.astype(str).value_counts()
    total = int(counts.sum())
    if len(counts) < 2:
        problems.append(
            f"target column {target!r} has {len(counts)} class{'es' if len(counts) != 1 else ''}"
            f"{' ' + _some(list(counts.index)) if len(counts) else ''}; a classifier needs at least 2"
        )
        return problems
    tiny = {str(k): int(v) for k, v in counts.items() if v < 2}
    if tiny:
        problems.append(
            f"classes of {target!r} with fewer than 2 rows cannot be split for evaluation: {_some_counts(tiny)}"
        )
    if min_class_fraction is not None:
        limit = Decimal(min_class_fraction)
        rare = {str(k): int(v) for k, v in counts.items() if Decimal(int(v)) / Decimal(total) < limit}
        if rare:
            shares = ", ".join(f"{k!r} {v / total:.1%}" for k, v in list(rare.items())[:5])
            problems.append(
                f"class imbalance in {target!r}: {shares} of rows, under validation.minClassFraction="
                f"{min_class_fraction}"
            )
    test_rows = math.ceil(test_size * total)
    train_rows = total - test_rows
    if test_rows < len(counts) or train_rows < len(counts):
        problems.append(
            f"a stratified split with evaluation.testSize={test_size:g} of {total} rows gives {test_rows} test and "
            f"{train_rows} training rows, fewer than the {len(counts)} classes"
        )
    if cv is not None:
        smallest_label = str(counts.index[-1])
        in_train = int(int(counts.iloc[-1]) * (1 - test_size))
        if in_train < cv:
            problems.append(
                f"class {smallest_label!r} has about {in_train} training rows, fewer than search.cv={cv} folds"
            )
    return problems


def _some(items: Sequence[object], limit: int = 10) -> str:
    shown = [str(i) for i in items[:limit]]
    suffix = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(repr(s) for s in shown) + suffix + "]"


def _some_counts(counts: dict[str, int], limit: int = 5) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k!r} ({v} row{'s' if v != 1 else ''})" for k, v in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
