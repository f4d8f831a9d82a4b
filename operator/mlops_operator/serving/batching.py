"""Run the model: inline, in a worker thread, or coalesced into batches.

A 100-tree forest costs about the same per ``predict`` call for 1 row as for 100, so under
concurrency many single-row requests share one call. While one batch computes in the worker
thread the next one fills, and goes as soon as the call returns (or as soon as it holds
``max_batch_size`` rows). With ``max_wait_s`` > 0 an idle model also waits up to that long
for company before it starts; with 0 (the default: measured, the window only added latency
at low load and no throughput at high load) it starts at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np

from mlops_operator.serving.served_model import FloatArray, Prediction


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
    """Coalesces concurrent requests into one ``predict`` call per batch."""

    def __init__(
        self,
        predict: Callable[[FloatArray], Prediction],
        *,
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        super().__init__(predict, inline=False)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._pending: list[tuple[FloatArray, asyncio.Future[Prediction]]] = []
        self._pending_rows = 0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.rows = 0

    async def run(self, matrix: FloatArray) -> Prediction:
        """Queue ``matrix`` for the next batch and wait for its rows' outputs."""
        if matrix.shape[0] >= self.max_batch_size:
            # Already a batch: coalescing would only delay it.
            return await super().run(matrix)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        self._pending.append((matrix, future))
        self._pending_rows += matrix.shape[0]
        if self._pending_rows >= self.max_batch_size or (not self._busy and self.max_wait_s <= 0):
            # Greedy mode (no window): an idle model starts at once; requests that arrive
            # during the call form the next batch.
            self._dispatch(loop)
        elif self._timer is None and not self._busy:
            self._timer = loop.call_later(self.max_wait_s, self._dispatch, loop)
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
                result = await loop.run_in_executor(self._executor, self._predict, stacked)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
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
            if self._pending:
                # Requests that arrived during the call have waited long enough: they form
                # the next batch right away, with no second window.
                self._dispatch(loop)


def _slice(result: Prediction, start: int, stop: int) -> Prediction:
    probabilities: Any = result.probabilities[start:stop] if result.probabilities is not None else None
    return Prediction(labels=result.labels[start:stop], probabilities=probabilities)
