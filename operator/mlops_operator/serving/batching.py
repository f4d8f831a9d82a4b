"""Run the model: inline, in a worker thread, or coalesced into batches by an adaptive window.

A 100-tree forest costs nearly the same per ``predict`` call for 1 row as for 64, so under
concurrency many single-row requests share one call. The :class:`Batcher` decides, whenever the
model is free and rows are queued, whether to call now or to wait a little for more rows, from
what it measures as it serves:

- the cost of a call by batch size, ``c(b) = fixed + per_row * b``, fitted to the CPU time
  of the calls it makes (:class:`CostModel`, seeded by the load-time calibration);
- the arrival curve: how many rows arrive within ``t`` of a call completing, per row that call
  answered (:class:`ArrivalCurve`: closed-loop clients come back a round trip after their
  answer; past its horizon the curve goes on at the recent arrival rate);
- the queue: how many rows wait now, since when, and how many of the expected ones came.

**The rule** (:func:`choose_window`). With ``q`` rows queued, waiting ``w`` more is expected
to bring ``n(w)`` more rows (the curve's rows still to come by then), and the model's
throughput over the wait plus the call is ``T(w) = (q + n(w)) / (w + c(q + n(w)))``. The
batcher waits for the ``w`` that maximises ``T`` when that beats calling now by at least
``MARGIN`` (10%), and calls at once otherwise; it decides again at every arrival. Hence an
idle server (nobody expected) answers at once, a lone client (nobody else comes back) is never
made to wait, and groups of clients that would otherwise take turns are merged into one call.
For steady open traffic at ``r`` rows/s and a linear cost this reduces to: wait while
``q < r * fixed``.

**The bound.** The window never holds a row longer than ``max_wait_s`` after the model became
free for it: by default the measured fixed cost of one call (clamped to 0.1-20 ms; waiting
longer than a whole extra call costs cannot pay), or the operator's ``--max-batch-wait-ms``.
A request's latency is therefore at most the rest of the call in flight when it arrived, plus
that bound, plus its own call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mlops_operator.serving.served_model import FloatArray, Prediction

logger = logging.getLogger(__name__)

#: Wait only when the expected throughput gain is at least this fraction (noise in the
#: measured curves must not buy latency for nothing).
MARGIN = 0.10
#: Grid of the arrival curve and of the candidate windows.
CURVE_BINS = 16
#: A new decision moves the window's end only by more than this (re-arming a timer costs).
RETIMER_S = 20e-6
#: Limits of the default bound (the measured fixed cost of a call).
MIN_WINDOW_S = 100e-6
MAX_WINDOW_S = 20e-3
#: Weight of the newest observation in the running averages (about the last 20 calls).
SMOOTHING = 0.05


class CostModel:
    """``c(b) = fixed + per_row * b``, least squares over the calls made, older ones fading."""

    def __init__(self, one_row_s: float, batch_rows: int, batch_s: float, forget: float = SMOOTHING) -> None:
        self.forget = forget
        # Sums of weights, b, b^2, t, b*t: seeded with the calibration's two points at a
        # weight of a few calls, so the first real calls refine rather than replace them.
        self._sums = [0.0] * 5
        for rows, seconds in ((1, one_row_s), (batch_rows, batch_s)):
            self._add(rows, seconds, weight=5.0)
        self._fit()

    def _add(self, rows: int, seconds: float, weight: float) -> None:
        b = float(rows)
        for i, value in enumerate((1.0, b, b * b, seconds, b * seconds)):
            self._sums[i] += weight * value

    def _fit(self) -> None:
        n, sb, sbb, st, sbt = self._sums
        det = n * sbb - sb * sb
        per_row = (n * sbt - sb * st) / det if det > 1e-12 * max(n * sbb, 1.0) else 0.0
        per_row = max(per_row, 0.0)
        self.per_row = per_row
        self.fixed = max((st - per_row * sb) / n, 0.0)

    def observe(self, rows: int, seconds: float) -> None:
        """Account one call of ``rows`` rows that took ``seconds``."""
        self._sums = [v * (1 - self.forget) for v in self._sums]
        self._add(rows, seconds, weight=1.0)
        self._fit()

    def cost(self, rows: float) -> float:
        """Expected seconds for a call on ``rows`` rows."""
        return self.fixed + self.per_row * rows


class ArrivalCurve:
    """Expected rows arriving within ``t`` of a call completing, per row that call answered.

    Counted per answered row because under closed-loop clients (a client sends its next
    request when it has its answer) what comes back is proportional to what was answered: a
    batch of 13 brings back 13, whatever the previous batches were. Arrivals are counted per
    bin of ``horizon / bins`` after the latest completion; when the next completion comes, each
    bin that was watched in full updates its running average. Past the horizon the curve goes
    on at the recent arrival rate, which decays with idleness, so a long-idle server expects
    nobody.
    """

    def __init__(self, horizon: float, bins: int = CURVE_BINS, smoothing: float = SMOOTHING) -> None:
        self.horizon = horizon
        self.bins = bins
        self.step = horizon / bins
        self.smoothing = smoothing
        self.per_bin = [0.0] * bins  # running average of rows per bin, per answered row
        self._cum = [0.0] * (bins + 1)  # its running sums, for O(1) lookups
        self._counts = [0] * bins
        self._seen = 0  # rows arrived in this epoch, within the horizon
        self._answered = 0  # rows the call that opened this epoch answered
        self._epoch: float | None = None
        # Recent arrival rate (rows/s), decaying with time constant `_tau`.
        self._tau = max(10 * horizon, 0.01)
        self._rate = 0.0
        self._rate_at = 0.0

    def arrived(self, now: float, rows: int) -> None:
        """``rows`` rows arrived at ``now``."""
        self._rate = self.rate(now) + rows / self._tau
        self._rate_at = now
        if self._epoch is not None:
            offset = now - self._epoch
            if offset < self.horizon:
                self._counts[int(offset / self.step)] += rows
                self._seen += rows

    def completed(self, now: float, answered: int) -> None:
        """A call that answered ``answered`` rows completed at ``now``: close the epoch, open the next."""
        if self._epoch is not None and self._answered > 0:
            watched = min(int((now - self._epoch) / self.step), self.bins)
            a = self.smoothing
            for i in range(watched):
                self.per_bin[i] += a * (self._counts[i] / self._answered - self.per_bin[i])
            for i in range(self.bins):
                self._cum[i + 1] = self._cum[i] + self.per_bin[i]
        self._counts = [0] * self.bins
        self._seen = 0
        self._answered = answered
        self._epoch = now

    def rate(self, now: float) -> float:
        """The recent arrival rate in rows/s."""
        return self._rate * math.exp(-max(now - self._rate_at, 0.0) / self._tau)

    def expected(self, since: float, until: float, now: float) -> float:
        """Expected rows still to arrive between ``since`` and ``until`` seconds after the completion.

        Rows of this epoch that already arrived count against the curve: when the curve says the
        8 answered rows come back within a millisecond and 8 came, no more are expected
        (closed-loop clients); when fewer came than the curve expected by now, only the curve's
        own increment is (steady open traffic, which has no memory).
        """
        if until <= since:
            return 0.0
        total = 0.0
        if since < self.horizon:
            scale = self._answered
            by_until = scale * self._cumulative(min(until, self.horizon))
            total = max(by_until - max(self._seen, scale * self._cumulative(since)), 0.0)
        if until > self.horizon:
            total += self.rate(now) * (until - max(since, self.horizon))
        return total

    def _cumulative(self, t: float) -> float:
        whole = min(int(t / self.step), self.bins)
        value = self._cum[whole]
        if whole < self.bins:
            value += self.per_bin[whole] * (t - whole * self.step) / self.step
        return value


def choose_window(
    *,
    queued: int,
    since_completion: float,
    oldest_wait: float,
    bound: float,
    max_batch: int,
    cost: CostModel,
    curve: ArrivalCurve,
    now: float,
) -> float:
    """Seconds to keep the ``queued`` rows waiting for company (0: call the model now).

    Pure: everything it uses is passed in (see the module docstring for the rule and its bound).
    """
    room = bound - oldest_wait
    if queued >= max_batch or room <= 0:
        return 0.0
    best_w, best_t = 0.0, queued / max(cost.cost(queued), 1e-9)
    now_t = best_t
    step = bound / CURVE_BINS
    w = step
    while w <= room + 1e-12:
        rows = min(queued + curve.expected(since_completion, since_completion + w, now), max_batch)
        throughput = rows / (w + cost.cost(rows))
        if throughput > best_t:
            best_w, best_t = w, throughput
        w += step
    return best_w if best_t >= now_t * (1 + MARGIN) else 0.0


class Runner:
    """Runs ``predict`` without a batching window: inline or in one worker thread."""

    def __init__(self, predict: Callable[[FloatArray], Prediction], *, inline: bool) -> None:
        self._predict = predict
        self.inline = inline
        # One thread: sklearn predict holds the GIL for much of its work, so more threads add
        # contention, not throughput; it also keeps model calls ordered.
        self._executor = (
            None if inline else concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mlops-predict")
        )

    async def run(self, matrix: FloatArray) -> Prediction:
        """Predict on ``matrix``, returning the outputs for its rows."""
        if self._executor is None:
            return self._predict(matrix)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, matrix)

    async def close(self) -> None:
        """Stop the worker thread (after the calls in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class Batcher(Runner):
    """Coalesces concurrent requests into one ``predict`` call per batch, waiting adaptively.

    ``one_row_s``/``batch_rows``/``batch_s`` seed the cost model (the load-time calibration);
    ``max_wait_s`` bounds the window (None: the measured fixed cost of a call).
    """

    def __init__(
        self,
        predict: Callable[[FloatArray], Prediction],
        *,
        max_batch_size: int,
        max_wait_s: float | None = None,
        one_row_s: float = 1e-3,
        batch_rows: int = 64,
        batch_s: float = 2e-3,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(predict, inline=False)
        self.max_batch_size = max_batch_size
        self.cost = CostModel(one_row_s, batch_rows, batch_s)
        # Waiting longer than a whole extra call costs cannot pay; a floor and a ceiling keep
        # the window sensible when the calibration was disturbed.
        self.max_wait_s = max_wait_s if max_wait_s else min(max(self.cost.fixed, MIN_WINDOW_S), MAX_WINDOW_S)
        self.curve = ArrivalCurve(self.max_wait_s)
        self._clock = clock
        self._pending: list[tuple[FloatArray, asyncio.Future[Prediction]]] = []
        self._pending_rows = 0
        self._oldest = 0.0
        self._completed_at = -math.inf
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.rows = 0
        self.windows = 0  # how many times it chose to wait

    def window(self) -> float:
        """The rule applied to the current queue (see :func:`choose_window`)."""
        now = self._clock()
        return choose_window(
            queued=self._pending_rows,
            since_completion=min(now - self._completed_at, 1e6),  # finite before the first call
            # The window opens when the model is free: time spent behind a busy model is not in it.
            oldest_wait=now - max(self._oldest, self._completed_at),
            bound=self.max_wait_s,
            max_batch=self.max_batch_size,
            cost=self.cost,
            curve=self.curve,
            now=now,
        )

    async def run(self, matrix: FloatArray) -> Prediction:
        """Queue ``matrix`` for the next batch and wait for its rows' outputs."""
        rows = matrix.shape[0]
        self.curve.arrived(self._clock(), rows)
        if rows >= self.max_batch_size:
            # Already a batch: coalescing would only delay it.
            return await super().run(matrix)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        if not self._pending:
            self._oldest = self._clock()
        self._pending.append((matrix, future))
        self._pending_rows += rows
        self._decide(loop)
        return await future

    def _decide(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call now or (re)arm the window; a no-op while a call is in flight."""
        if self._busy or not self._pending:
            return
        wait = self.window()
        if wait <= 0:
            self._dispatch(loop)
            return
        deadline = self._clock() + wait
        if self._timer is None:
            self.windows += 1
        elif abs(deadline - self._deadline) < RETIMER_S:
            return
        else:
            # Sooner (enough came) or later (more are coming, still within the bound).
            self._timer.cancel()
        self._deadline = deadline
        self._timer = loop.call_later(wait, self._dispatch, loop)

    def _timed(self, matrix: FloatArray) -> tuple[Prediction, float]:
        """``predict`` and the CPU time it took in the worker thread.

        CPU time, not wall time: on a busy core the call's wall time also holds the event loop's
        work (which goes on during a window as well) and other processes' slices, and would
        make every call look dearer, hence waiting cheaper, than the model itself is.
        """
        started = time.thread_time()
        result = self._predict(matrix)
        return result, time.thread_time() - started

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = math.inf
        if self._busy or not self._pending:
            # The batch in flight calls back here when it finishes and takes what queued up.
            return
        batch, self._pending, self._pending_rows = self._pending, [], 0
        self._busy = True
        task = loop.create_task(self._execute(batch))
        # The loop keeps only weak references to tasks: hold it until it finishes.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[FloatArray, asyncio.Future[Prediction]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            matrices = [m for m, _ in batch]
            stacked = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
            try:
                assert self._executor is not None
                result, seconds = await loop.run_in_executor(self._executor, self._timed, stacked)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            self.cost.observe(stacked.shape[0], seconds)
            self.batches += 1
            self.rows += stacked.shape[0]
            start = 0
            for matrix, future in batch:
                stop = start + matrix.shape[0]
                if not future.done():  # the client may have gone away
                    future.set_result(_slice(result, start, stop))
                start = stop
        finally:
            self._busy = False
            self._completed_at = self._clock()
            self.curve.completed(self._completed_at, sum(m.shape[0] for m, _ in batch))
            # What queued during the call: call again now, or wait if the rule says it pays.
            self._decide(loop)

    async def close(self) -> None:
        """Stop the worker thread, and log what batching did."""
        logger.info(
            "batcher: %d rows in %d calls (%.1f rows a call), %d windows; cost %.2f ms + %.3f ms a row",
            self.rows,
            self.batches,
            self.rows / max(self.batches, 1),
            self.windows,
            self.cost.fixed * 1e3,
            self.cost.per_row * 1e3,
        )
        await super().close()


def _slice(result: Prediction, start: int, stop: int) -> Prediction:
    probabilities: Any = result.probabilities[start:stop] if result.probabilities is not None else None
    return Prediction(labels=result.labels[start:stop], probabilities=probabilities)
