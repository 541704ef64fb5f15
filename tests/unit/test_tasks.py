"""``TaskSet``: the one owner of a node's long-lived loops."""

from __future__ import annotations

import asyncio

from gatekeeper.tasks import TaskSet


async def forever() -> None:
    await asyncio.Event().wait()


async def broken() -> None:
    raise ZeroDivisionError("a bug in a loop")


class TestTaskSet:
    async def test_close_cancels_every_task_and_waits_for_it(self) -> None:
        tasks = TaskSet()
        started = [tasks.spawn(forever(), "a"), tasks.spawn(forever(), "b")]
        await asyncio.sleep(0)
        await tasks.aclose()
        assert all(t.done() and t.cancelled() for t in started)
        assert len(tasks) == 0

    async def test_a_task_that_failed_does_not_fail_the_close(self) -> None:
        """A loop that died is logged when its owner stops; the other loops still end."""
        tasks = TaskSet()
        dead, alive = tasks.spawn(broken(), "dead"), tasks.spawn(forever(), "alive")
        await asyncio.sleep(0)
        await tasks.aclose()
        assert isinstance(dead.exception(), ZeroDivisionError)
        assert alive.cancelled()
