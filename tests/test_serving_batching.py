"""The adaptive batcher's rule (pure, fake clock) and that batching never changes an answer."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from mlops_operator.serving.batching import (
    MARGIN,
    ArrivalCurve,
    Batcher,
    CostModel,
    Runner,
    choose_window,
)
from mlops_operator.serving.served_model import Prediction, forest_predict_proba, sklearn_predict_fn

MS = 1e-3
#: A forest through scikit-learn's own predict_proba: about 5.5 ms a call, nearly all fixed.
FOREST = {"one_row_s": 5.5 * MS, "batch_rows": 64, "batch_s": 7.0 * MS}


def forest_cost() -> CostModel:
    return CostModel(**FOREST)


def closed_loop_curve(
    rows_back: int,
    after_s: float,
    epochs: int = 200,
    horizon: float = 5.5 * MS,
    last_answered: int | None = None,
) -> ArrivalCurve:
    """The curve a server sees when ``rows_back`` clients send again ``after_s`` after each answer."""
    curve = ArrivalCurve(horizon)
    now = 0.0
    for _ in range(epochs):
        curve.completed(now, answered=rows_back)
        curve.arrived(now + after_s, rows_back)
        now += 6 * MS  # the next call completes 6 ms later
    curve.completed(now, answered=rows_back if last_answered is None else last_answered)
    return curve


def decide(curve: ArrivalCurve, queued: int, since: float, oldest: float = 0.0, **kw: Any) -> float:
    args: dict[str, Any] = {
        "queued": queued,
        "since_completion": since,
        "oldest_wait": oldest,
        "bound": 5.5 * MS,
        "max_batch": 64,
        "cost": forest_cost(),
        "curve": curve,
        "now": 1000.0,
    }
    args.update(kw)
    return choose_window(**args)


# --- the cost of a call by batch size -----------------------------------------------------------


def test_cost_model_starts_from_the_calibration_and_learns_the_calls() -> None:
    cost = forest_cost()
    assert cost.cost(1) == pytest.approx(5.5 * MS, rel=0.01)
    assert cost.cost(64) == pytest.approx(7.0 * MS, rel=0.01)
    # The machine got slower: 8 ms fixed, 0.1 ms a row. The fit follows within ~100 calls.
    for i in range(200):
        rows = 1 + (i * 7) % 64
        cost.observe(rows, 8 * MS + 0.1 * MS * rows)
    assert cost.fixed == pytest.approx(8 * MS, rel=0.05)
    assert cost.per_row == pytest.approx(0.1 * MS, rel=0.05)


def test_cost_model_with_one_batch_size_keeps_a_non_negative_line() -> None:
    cost = CostModel(one_row_s=1 * MS, batch_rows=64, batch_s=1 * MS)
    for _ in range(100):
        cost.observe(16, 2 * MS)
    assert cost.fixed >= 0 and cost.per_row >= 0
    assert cost.cost(16) == pytest.approx(2 * MS, rel=0.05)


# --- the arrival curve --------------------------------------------------------------------------


def test_arrival_curve_learns_when_answered_clients_come_back() -> None:
    # Bins of 5.5 ms / 16 = 0.34 ms: the clients come back in the third one.
    curve = closed_loop_curve(rows_back=8, after_s=0.8 * MS)
    assert curve.expected(0.0, 0.6 * MS, now=1.2) == pytest.approx(0.0, abs=0.01)
    assert curve.expected(0.0, 1.1 * MS, now=1.2) == pytest.approx(8.0, rel=0.01)
    assert curve.expected(1.1 * MS, 5.0 * MS, now=1.2) == pytest.approx(0.0, abs=0.01)


def test_arrival_curve_scales_with_the_rows_just_answered() -> None:
    # Learned with batches of 8; a batch of 13 brings back 13, and those already back count.
    curve = closed_loop_curve(rows_back=8, after_s=0.8 * MS, last_answered=13)
    assert curve.expected(0.0, 1.1 * MS, now=1.2) == pytest.approx(13.0, rel=0.01)
    curve.arrived(1.2 + 0.8 * MS, 5)
    assert curve.expected(0.7 * MS, 1.1 * MS, now=1.2) == pytest.approx(8.0, rel=0.01)


def test_arrival_curve_forgets_an_idle_past() -> None:
    curve = closed_loop_curve(rows_back=8, after_s=0.3 * MS)
    busy = curve.rate(1.2)
    assert busy > 0
    # Past the horizon the curve goes on at the recent rate, which decays with idleness.
    assert curve.expected(10 * MS, 20 * MS, now=60.0) == pytest.approx(0.0, abs=1e-6)


# --- the rule -------------------------------------------------------------------------------------


def test_an_idle_server_answers_at_once() -> None:
    assert decide(ArrivalCurve(5.5 * MS), queued=1, since=30.0) == 0.0


def test_a_lone_client_is_never_made_to_wait() -> None:
    # One connection: its next request comes 0.3 ms after its answer, and nobody else's.
    curve = closed_loop_curve(rows_back=1, after_s=0.3 * MS)
    assert decide(curve, queued=1, since=0.3 * MS) == 0.0


def test_phase_locked_groups_are_merged_then_called_at_once() -> None:
    # 16 clients in two groups of 8: when a call returns, 8 rows wait and 8 answered clients
    # come back 0.3 ms later. Waiting for them doubles the rows of a ~6 ms call.
    curve = closed_loop_curve(rows_back=8, after_s=0.3 * MS)
    wait = decide(curve, queued=8, since=0.0)
    assert 0.3 * MS <= wait <= 5.5 * MS
    # Once they are in, nothing more is expected: call now.
    assert decide(curve, queued=16, since=0.4 * MS, oldest=0.4 * MS) == 0.0


def test_the_window_never_exceeds_the_latency_bound() -> None:
    curve = closed_loop_curve(rows_back=8, after_s=0.3 * MS)
    assert decide(curve, queued=8, since=0.0, oldest=5.5 * MS) == 0.0
    assert decide(curve, queued=8, since=0.0, oldest=5.4 * MS) <= 0.1 * MS + 1e-12
    assert decide(curve, queued=8, since=0.0, bound=1 * MS) <= 1 * MS


def test_a_full_batch_goes_at_once() -> None:
    curve = closed_loop_curve(rows_back=64, after_s=0.3 * MS)
    assert decide(curve, queued=64, since=0.0) == 0.0


def test_no_wait_when_a_call_costs_per_row_only() -> None:
    # Nothing to amortise: waiting only adds latency.
    cost = CostModel(one_row_s=0.1 * MS, batch_rows=64, batch_s=6.4 * MS)
    curve = closed_loop_curve(rows_back=8, after_s=0.3 * MS)
    assert decide(curve, queued=8, since=0.0, cost=cost) == 0.0


@pytest.mark.parametrize(
    ("rate_per_s", "waits"),
    [
        pytest.param(100.0, False, id="0.5-rows-per-fixed-cost-no-wait"),
        pytest.param(2000.0, True, id="11-rows-per-fixed-cost-wait"),
    ],
)
def test_open_traffic_waits_only_when_enough_rows_are_expected(rate_per_s: float, waits: bool) -> None:
    """Poisson-like arrivals at a steady rate: throughput rises by waiting iff q < rate * fixed cost."""
    horizon = 5.5 * MS
    curve = ArrivalCurve(horizon)
    now, gap, t, answered = 0.0, 1 / rate_per_s, 0.0, 0
    for _ in range(400):
        curve.completed(now, answered)
        answered = 0
        while t < now + 8 * MS:  # a steady stream, unrelated to the calls
            curve.arrived(t, 1)
            answered += 1
            t += gap
        now += 8 * MS
    curve.completed(now, answered)
    wait = decide(curve, queued=1, since=0.0, now=now)
    assert (wait > 0) is waits


def test_the_margin_keeps_a_tiny_gain_from_buying_latency() -> None:
    # 1 row queued, 0.1 rows expected within the bound: a gain far under the margin.
    curve = ArrivalCurve(5.5 * MS)
    curve.completed(0.0, answered=1)
    curve.per_bin = [0.1 / 16] * 16
    curve._cum = [0.1 / 16 * i for i in range(17)]
    assert MARGIN > 0
    assert decide(curve, queued=1, since=0.0) == 0.0


# --- batching never changes an answer -----------------------------------------------------------


@pytest.fixture(scope="module")
def forest() -> tuple[Any, np.ndarray]:
    x, y = make_classification(n_samples=600, n_features=8, n_informative=5, n_classes=3, random_state=2)
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y), x


def test_batched_answers_equal_unbatched_ones(forest: tuple[Any, np.ndarray]) -> None:
    model, x = forest
    predict, _ = sklearn_predict_fn(model)
    sizes = [1, 3, 1, 1, 7, 2, 1, 1, 5, 1] * 4
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [x[s : s + n] for s, n in zip(starts, sizes, strict=True)]

    async def main() -> tuple[list[Prediction], Batcher]:
        batcher = Batcher(predict, max_batch_size=16, **FOREST)
        try:
            answers = await asyncio.gather(*(batcher.run(m) for m in requests))
        finally:
            await batcher.close()
        return list(answers), batcher

    answers, batcher = asyncio.run(main())
    assert batcher.rows == sum(sizes) and batcher.batches < len(requests)
    for matrix, answer in zip(requests, answers, strict=True):
        alone = predict(matrix)
        assert answer.labels == alone.labels
        assert answer.probabilities == alone.probabilities


def test_an_idle_batcher_calls_at_once_without_a_window(forest: tuple[Any, np.ndarray]) -> None:
    model, x = forest
    predict, _ = sklearn_predict_fn(model)
    clock = [100.0]  # a fake clock that stands still: no window can have expired by itself

    async def main() -> Batcher:
        batcher = Batcher(predict, max_batch_size=16, clock=lambda: clock[0], **FOREST)
        try:
            for i in range(3):
                answer = await batcher.run(x[i : i + 1])
                assert answer.labels == predict(x[i : i + 1]).labels
                clock[0] += 1.0  # idle a second between requests
        finally:
            await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert batcher.windows == 0 and batcher.batches == 3


def test_a_failing_model_fails_every_request_of_the_batch() -> None:
    def broken(x: Any) -> Prediction:
        raise ValueError("boom")

    async def main() -> list[Any]:
        batcher = Batcher(broken, max_batch_size=8, **FOREST)
        try:
            return await asyncio.gather(
                *(batcher.run(np.zeros((1, 3))) for _ in range(5)), return_exceptions=True
            )
        finally:
            await batcher.close()

    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))


def test_runner_inline_and_threaded_agree(forest: tuple[Any, np.ndarray]) -> None:
    model, x = forest
    predict, _ = sklearn_predict_fn(model)

    async def main() -> tuple[Prediction, Prediction]:
        inline, threaded = Runner(predict, inline=True), Runner(predict, inline=False)
        try:
            return await inline.run(x[:4]), await threaded.run(x[:4])
        finally:
            await threaded.close()

    a, b = asyncio.run(main())
    assert a == b


# --- the forest's fast path ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RandomForestClassifier, ExtraTreesClassifier], ids=lambda c: c.__name__)
def test_forest_fast_path_equals_scikit_learn_bit_for_bit(cls: Any) -> None:
    x, y = make_classification(n_samples=500, n_features=6, n_informative=4, n_classes=3, random_state=1)
    model = cls(n_estimators=15, random_state=0).fit(x, y)
    fast = forest_predict_proba(model)
    assert fast is not None
    probe = np.random.default_rng(3).normal(size=(50, 6)) * 2
    assert np.array_equal(fast(probe), model.predict_proba(probe))
    predict, _ = sklearn_predict_fn(model)
    assert predict(probe).labels == model.predict(probe).tolist()


def test_forest_fast_path_can_be_turned_off_and_skips_other_models(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = make_classification(n_samples=200, n_features=4, random_state=0)
    forest_model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    assert forest_predict_proba(LogisticRegression().fit(x, y)) is None
    monkeypatch.setenv("MLOPS_SERVE_FOREST_FAST_PATH", "0")
    assert forest_predict_proba(forest_model) is None
