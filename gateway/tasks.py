"""Background tasks stopped at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel each task and wait until it has ended, one after the other; a
    task that ended by cancellation is no error (any other exception of it
    is raised)."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
