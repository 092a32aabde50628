"""Stopping background tasks (gateway.tasks)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tasks import cancel_and_wait


async def test_each_task_is_cancelled_and_awaited() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            ended.append(name)

    tasks = [asyncio.create_task(forever(n)) for n in ("a", "b")]
    await started.wait()
    await cancel_and_wait(tasks)
    assert ended == ["a", "b"]
    assert all(t.cancelled() for t in tasks)


async def test_a_task_that_failed_is_not_hidden() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait([task])
