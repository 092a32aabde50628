"""The asyncio side of per-upstream fair queuing (gateway.core.fairqueue):
a request holds one of its upstream's slots while it is forwarded; when the
pool is busy it waits, fairly among tenants, at most ``queue_timeout_s``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from gateway.core.fairqueue import FairSlots
from gateway.errors import RequestRefused

__all__ = ["UpstreamSlots"]


class UpstreamSlots:
    def __init__(self, capacities: Mapping[str, int], *,
                 on_depth: Callable[[str, int], None] = lambda upstream, depth: None) -> None:
        self._slots: dict[str, FairSlots[asyncio.Future[None]]] = {
            name: FairSlots(capacity) for name, capacity in capacities.items()}
        self._on_depth = on_depth

    def in_use(self, upstream: str) -> int:
        return self._slots[upstream].total

    def waiting(self, upstream: str) -> int:
        return self._slots[upstream].waiting

    def try_acquire(self, upstream: str, tenant: str) -> bool:
        """Take a free slot now, if nobody waits (the common case: no future,
        no coroutine). False: the caller ``await``s :meth:`acquire`."""
        return self._slots[upstream].try_acquire(tenant)

    async def acquire(self, upstream: str, tenant: str, queue_timeout_s: float) -> None:
        """Wait for a slot, fairly among tenants. Waiting longer than
        ``queue_timeout_s`` is refused with 503 ``upstream-busy``. The slot
        is the caller's until it calls :meth:`release`."""
        await self._acquire(upstream, tenant, queue_timeout_s)

    async def _acquire(self, upstream: str, tenant: str, timeout_s: float) -> None:
        fair = self._slots[upstream]
        if fair.try_acquire(tenant):
            return  # the common case: no future, no loop look-up
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fair.enqueue(tenant, waiter)
        self._on_depth(upstream, fair.waiting)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if not fair.cancel(tenant, waiter):
                # Handed the slot in the same instant: give it on.
                self.release(upstream, tenant)
            self._on_depth(upstream, fair.waiting)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RequestRefused(503, "upstream-busy", headers={"Retry-After": "1"}) from None
        self._on_depth(upstream, fair.waiting)

    def release(self, upstream: str, tenant: str) -> None:
        fair = self._slots[upstream]
        handed = fair.release(tenant)
        while handed is not None:
            next_tenant, waiter = handed
            if not waiter.done():
                waiter.set_result(None)
                return
            handed = fair.release(next_tenant)  # a waiter that is gone: next one
