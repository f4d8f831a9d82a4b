"""A fix for kopf 1.45.2's start-up cost with many objects (quadratic wake-ups in ``ToggleSet``).

While kopf loads its indexes, it makes one toggle per object in a ``ToggleSet`` and drops it when
the object is indexed, and every per-object worker waits on that set for "all indexed". kopf
wakes every waiter on every toggle added or dropped, and each waiter re-evaluates the whole
set: with thousands of objects a cold start spent most of its time there (py-spy: about 60%
of the operator's time in ``make_toggle``/``drop_toggle`` -> ``Condition.notify_all``; 1,000
InferenceServices plus 1,000 TrainingJobs took 384 s to become idle, against 41 s with this).

The waiters' predicate is the set's aggregate state, so waking them only when adding or
dropping a toggle changes that state is equivalent for them; a toggle turned on or off still
notifies through the shared condition, as before. kopf is pinned to 1.45.2 in pyproject.toml
because this replaces methods of one of its private classes: :func:`install` refuses any other
version rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable

import kopf
from kopf._cogs.aiokits import aiotoggles

PATCHED_KOPF_VERSION = "1.45.2"


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, [toggle])


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def install() -> None:
    """Replace ``ToggleSet``'s three methods (idempotent); only on the kopf version it was made for."""
    version = getattr(kopf, "__version__", None)
    if version != PATCHED_KOPF_VERSION:
        raise RuntimeError(
            f"kopf {version} is not {PATCHED_KOPF_VERSION}: check whether its ToggleSet still wakes every "
            "waiter on every toggle, then update or drop mlops_operator.controllers.kopf_toggles"
        )
    aiotoggles.ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
