"""Fair queuing of an upstream's connection slots among tenants (D1
availability), pure: no I/O, no asyncio; the waiters are opaque tokens.

An upstream has ``capacity`` slots (its keep-alive pool). While one is free
and nobody waits, a request takes it at once. When all are busy, requests
wait in one queue per tenant, and each freed slot goes to the waiting
tenant that holds the **fewest** slots, ties to the tenant whose oldest
waiter came first (max-min fairness). So a tenant with a backlog of 60 and
a tenant with one request alternate instead of the backlog going first, as
it would in one FIFO queue; and a flooding tenant can never hold more than
its fair part of a contended pool for longer than its requests last.

``Quotas.upstream_share`` still caps each tenant's slots on top of this.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["FairSlots"]

T = TypeVar("T", bound=Hashable)


class FairSlots(Generic[T]):
    """``acquire`` now or queue; ``release`` hands the slot to the next waiter."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.busy: dict[str, int] = {}
        self.total = 0
        self._queues: dict[str, deque[tuple[int, T]]] = {}
        self._arrival = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def acquire(self, tenant: str, token: T) -> bool:
        """True: the slot is the caller's. False: ``token`` is queued and will
        be returned by a later ``release`` (or removed by ``cancel``)."""
        if self.try_acquire(tenant):
            return True
        self.enqueue(tenant, token)
        return False

    def try_acquire(self, tenant: str) -> bool:
        """Take a free slot if nobody waits; else take nothing (the caller
        then makes its token and ``enqueue``s it: the common case, a free
        slot, costs no token)."""
        if self.total < self.capacity and not self._queues:
            self._grant(tenant)
            return True
        return False

    def enqueue(self, tenant: str, token: T) -> None:
        self._queues.setdefault(tenant, deque()).append((next(self._arrival), token))

    def release(self, tenant: str) -> tuple[str, T] | None:
        """Give ``tenant``'s slot back; returns the (tenant, token) it now
        belongs to, or None when nobody waits."""
        left = self.busy[tenant] - 1
        if left:
            self.busy[tenant] = left
        else:
            del self.busy[tenant]
        self.total -= 1
        if not self._queues:
            return None
        # Max-min: the fewest slots held, then the oldest waiter.
        chosen = min(self._queues,
                     key=lambda t: (self.busy.get(t, 0), self._queues[t][0][0]))
        queue = self._queues[chosen]
        _, token = queue.popleft()
        if not queue:
            del self._queues[chosen]
        self._grant(chosen)
        return chosen, token

    def cancel(self, tenant: str, token: T) -> bool:
        """Remove a waiter that gave up; False if it was not waiting (the slot
        was already handed to it: the caller must then ``release`` it)."""
        queue = self._queues.get(tenant)
        if queue is None:
            return False
        for i, (_, waiting) in enumerate(queue):
            if waiting == token:
                del queue[i]
                if not queue:
                    del self._queues[tenant]
                return True
        return False

    def _grant(self, tenant: str) -> None:
        self.busy[tenant] = self.busy.get(tenant, 0) + 1
        self.total += 1
