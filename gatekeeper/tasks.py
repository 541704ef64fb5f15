"""Long-lived background tasks with one owner: started by ``spawn``, ended by ``aclose``.

The owner (a node, a component) holds its ``TaskSet`` and closes it when it stops, so
no task is fire-and-forget and no stop hand-writes its own cancel-then-await loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["TaskSet"]

log = structlog.get_logger("gatekeeper.tasks")


class TaskSet:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task and wait for each to end; one that had failed is logged."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task, result in zip(
            tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
        ):
            if isinstance(result, Exception):
                log.error("tasks.failed", task=task.get_name(), error=repr(result))
