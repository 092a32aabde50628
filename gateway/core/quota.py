"""Noisy-neighbour isolation, pure: per-tenant token
buckets and concurrency caps, per (tenant, upstream) shares of an upstream's
connection pool. Clock injected; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Quota:
    # Defaults are generous: a tenant file sets its own (``[quota]``).
    rate_per_s: float = 2000.0  # sustained requests per second
    burst: int = 4000  # bucket size
    concurrency: int = 128  # requests in flight at once
    upstream_share: float = 0.5  # at most this part of one upstream's pool


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Quotas:
    """The live state. ``admit`` returns None, or the seconds to wait (429)."""

    default: Quota = field(default_factory=Quota)
    per_tenant: dict[str, Quota] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    _upstream: dict[tuple[str, str], int] = field(default_factory=dict)
    # Live replicas of the fleet sharing each tenant's rate: like Kong's
    # "local" policy, each admits rate/N with a bucket of burst/N, so the
    # fleet admits at most the rate, plus the buckets' slack while N moves.
    replicas: int = 1

    def quota(self, tenant: str) -> Quota:
        return self.per_tenant.get(tenant, self.default)

    def share(self, replicas: int) -> None:
        """Divide each tenant's rate and burst among ``replicas`` live
        replicas (at least 1: a replica alone takes the whole)."""
        self.replicas = max(1, replicas)

    def set(self, tenant: str, quota: Quota) -> None:
        self.per_tenant[tenant] = quota
        self._buckets.pop(tenant, None)

    def replace(self, quotas: Mapping[str, Quota]) -> None:
        self.per_tenant = dict(quotas)
        self._buckets.clear()

    def admit(self, tenant: str, upstream: str, pool_size: int, now: float) -> float | None:
        q = self.quota(tenant)
        rate = q.rate_per_s / self.replicas
        burst = max(1.0, q.burst / self.replicas)
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return max((1.0 - bucket.tokens) / rate, 0.001)
        if self._in_flight.get(tenant, 0) >= q.concurrency:
            return 1.0
        share = max(1, math.floor(pool_size * q.upstream_share))
        if self._upstream.get((tenant, upstream), 0) >= share:
            return 1.0
        bucket.tokens -= 1.0
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
        self._upstream[(tenant, upstream)] = self._upstream.get((tenant, upstream), 0) + 1
        return None

    def release(self, tenant: str, upstream: str) -> None:
        self._in_flight[tenant] -= 1
        self._upstream[(tenant, upstream)] -= 1
