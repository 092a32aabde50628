"""What the outbox holds and hands out: a tenant's part of a batch (its id
is the receiver's idempotency key), a dead letter, a part to store, and the
retry policy of a delivery."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


def part_key(source: str, batch_id: str, tenant: str) -> str:
    """A part's id and idempotency key: unique across source systems (D1)."""
    return f"{source}/{batch_id}/{tenant}"


@dataclass(frozen=True, slots=True)
class Part:
    id: str  # also the idempotency key the receiver sees
    batch_id: str
    tenant: str
    # "hes-readings", "meter-days", "cmh-request", "cmh-status", "breach-notification"
    kind: str
    records: int
    created: datetime
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    source: str = ""  # the pushing system (tenant id)
    lease: str | None = None  # the token of the claim this replica holds on it
    reclaimed: bool = False  # claimed after another owner's lease ran out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A part given up on, as retention sees it: when it died, and whether
    its (encrypted) payload is still kept or only the tombstone is left."""

    part: Part
    died_at: datetime
    payload_kept: bool


@dataclass(frozen=True, slots=True)
class EncodedPart:
    id: str
    tenant: str
    kind: str
    records: int  # what the queue bound and the metrics count (readings)
    body: bytes  # the records as one JSON array


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=10)
    max_attempts: int = 12  # then: dead letter

    def delay(self, attempts: int, rnd: Callable[[], float] = random.random) -> timedelta:
        """Exponential backoff with jitter in [0.5, 1.5) of the step."""
        step: timedelta = min(self.base * (2 ** max(attempts - 1, 0)), self.cap)
        return step * (0.5 + rnd())
