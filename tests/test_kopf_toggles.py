"""kopf's ToggleSet after :mod:`mlops_operator.controllers.kopf_toggles`: same answers, fewer wake-ups."""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotoggles

from mlops_operator.controllers import kopf_toggles


@pytest.fixture(autouse=True)
def installed() -> None:
    kopf_toggles.install()


async def test_waiters_see_every_change_of_the_aggregate_state() -> None:
    toggles = aiotoggles.ToggleSet(all)  # kopf's "every object indexed" gate: on when all are on
    objects = [await toggles.make_toggle(False, name=f"o{i}") for i in range(50)]
    waiter = asyncio.create_task(toggles.wait_for(True))
    for toggle in objects[:-1]:
        await toggle.turn_to(True)
    await asyncio.sleep(0)  # let the waiter run: it must still wait
    assert not waiter.done()
    await objects[-1].turn_to(True)  # a toggle turned on still notifies
    await asyncio.wait_for(waiter, timeout=5)

    off = asyncio.create_task(toggles.wait_for(False))
    await asyncio.sleep(0)
    await toggles.make_toggle(False)  # adding an off toggle turns an all() set off
    await asyncio.wait_for(off, timeout=5)

    on_again = asyncio.create_task(toggles.wait_for(True))
    await asyncio.sleep(0)
    await toggles.drop_toggles([t for t in toggles if t.is_off()])  # dropping it turns it on again
    await asyncio.wait_for(on_again, timeout=5)


async def test_adding_and_dropping_toggles_wakes_waiters_only_when_the_state_changes() -> None:
    toggles = aiotoggles.ToggleSet(any)
    wakeups = 0

    def predicate() -> bool:
        nonlocal wakeups
        wakeups += 1
        return toggles.is_on()

    async def waiter() -> None:
        async with toggles._condition:
            await toggles._condition.wait_for(predicate)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    made = []
    for _ in range(1000):  # as kopf's index loading does, with other tasks running in between
        made.append(await toggles.make_toggle(False))
        await asyncio.sleep(0)
    for toggle in made[:500]:
        await toggles.drop_toggle(toggle)
        await asyncio.sleep(0)
    assert wakeups == 1  # the first check only: 1,500 changes, none of the aggregate state
    await made[600].turn_to(True)
    await asyncio.wait_for(task, timeout=5)


def test_another_kopf_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    monkeypatch.setattr(kopf, "__version__", "1.46.0")
    with pytest.raises(RuntimeError, match=r"kopf 1\.46\.0 is not 1\.45\.2"):
        kopf_toggles.install()
