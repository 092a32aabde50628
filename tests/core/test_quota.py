"""Per-tenant token buckets and concurrency caps, frozen clock."""

from __future__ import annotations

from gateway.core.quota import Quota, Quotas


def test_bucket_allows_burst_then_paces() -> None:
    q = Quotas(default=Quota(rate_per_s=10, burst=5, concurrency=100))
    assert [q.admit("a", "hes", 64, 0.0) for _ in range(5)] == [None] * 5
    for _ in range(5):
        q.release("a", "hes")
    wait = q.admit("a", "hes", 64, 0.0)
    assert wait is not None and 0 < wait <= 0.1
    assert q.admit("a", "hes", 64, 0.1) is None  # one token back after 100 ms
    assert q.admit("b", "hes", 64, 0.1) is None  # another tenant has its own bucket


def test_concurrency_cap_and_upstream_share() -> None:
    q = Quotas(default=Quota(rate_per_s=1000, burst=1000, concurrency=3, upstream_share=0.5))
    assert q.admit("a", "hes", 4, 0.0) is None
    assert q.admit("a", "hes", 4, 0.0) is None
    assert q.admit("a", "hes", 4, 0.0) == 1.0  # half of a 4-connection pool
    assert q.admit("a", "itsm", 4, 0.0) is None
    assert q.admit("a", "cmh", 4, 0.0) == 1.0  # three in flight: the cap
    q.release("a", "hes")
    assert q.admit("a", "cmh", 4, 0.0) is None
    assert q.admit("b", "hes", 4, 0.0) is None  # a flood of a does not block b


def test_per_tenant_override() -> None:
    q = Quotas()
    q.set("noisy", Quota(rate_per_s=1, burst=1))
    assert q.admit("noisy", "hes", 64, 0.0) is None
    assert q.admit("noisy", "hes", 64, 0.0) is not None
    assert q.admit("quiet", "hes", 64, 0.0) is None


def test_the_wait_is_the_time_to_the_next_token() -> None:
    """429's Retry-After: exactly until the bucket holds one token again."""
    q = Quotas(default=Quota(rate_per_s=4, burst=1, concurrency=100))
    assert q.admit("a", "hes", 64, 100.0) is None
    q.release("a", "hes")
    assert q.admit("a", "hes", 64, 100.0) == 0.25
    assert q.admit("a", "hes", 64, 100.125) == 0.125  # half a token refilled
    assert q.admit("a", "hes", 64, 100.25) is None
    q.release("a", "hes")
    # Refill is by elapsed time, never past the burst: a long pause gives one.
    assert q.admit("a", "hes", 64, 1000.0) is None
    q.release("a", "hes")
    assert q.admit("a", "hes", 64, 1000.0) == 0.25


def test_a_release_frees_exactly_one_place_of_each_cap() -> None:
    q = Quotas(default=Quota(rate_per_s=1000, burst=1000, concurrency=2, upstream_share=0.5))
    assert q.admit("a", "hes", 2, 0.0) is None  # a 2-connection pool: a share of 1
    assert q.admit("a", "hes", 2, 0.0) == 1.0
    q.release("a", "hes")
    assert q.admit("a", "hes", 2, 0.0) is None  # the share is free again
    assert q.admit("a", "hes", 2, 0.0) == 1.0  # ... once
    assert q.admit("a", "itsm", 2, 0.0) is None
    assert q.admit("a", "cmh", 2, 0.0) == 1.0  # two in flight: the cap
    q.release("a", "itsm")
    assert q.admit("a", "cmh", 2, 0.0) is None  # one place back, not two
    assert q.admit("a", "clearing", 2, 0.0) == 1.0
    q.release("a", "hes")
    q.release("a", "cmh")
    assert q.admit("a", "hes", 2, 0.0) is None and q.admit("a", "cmh", 2, 0.0) is None


def test_a_first_request_and_a_tiny_pool_are_admitted() -> None:
    """Nothing in flight yet is zero, not one; a pool smaller than the share
    still gives every tenant one connection."""
    q = Quotas(default=Quota(rate_per_s=1000, burst=1000, concurrency=1, upstream_share=0.5))
    assert q.admit("a", "hes", 1, 0.0) is None  # nothing in flight: the cap of 1 admits
    wide = Quotas(default=Quota(rate_per_s=1000, burst=1000, concurrency=100,
                                upstream_share=0.5))
    assert wide.admit("b", "hes", 1, 0.0) is None  # floor(0.5) of one: still one
    assert wide.admit("b", "hes", 1, 0.0) == 1.0  # ... and only one


def test_setting_a_quota_starts_a_fresh_bucket() -> None:
    q = Quotas(default=Quota(rate_per_s=1, burst=1))
    assert q.admit("t", "hes", 64, 0.0) is None
    q.release("t", "hes")
    assert q.admit("t", "hes", 64, 0.0) is not None  # its bucket is empty
    q.set("t", Quota(rate_per_s=1, burst=3))
    assert q.admit("t", "hes", 64, 0.0) is None  # the new burst, at once


def admitted(q: Quotas, tenant: str, start: float, seconds: float, step: float) -> int:
    count, now = 0, start
    while now < start + seconds:
        if q.admit(tenant, "hes", 10_000, now) is None:
            q.release(tenant, "hes")
            count += 1
        now += step
    return count


def test_live_replicas_share_a_tenant_s_rate_and_burst() -> None:
    # Three replicas, each admitting its share: together at most the quota.
    quota = Quota(rate_per_s=90.0, burst=30, concurrency=10_000, upstream_share=1.0)
    fleet = [Quotas(per_tenant={"ores": quota}) for _ in range(3)]
    for q in fleet:
        q.share(3)
    total = sum(admitted(q, "ores", 0.0, 10.0, 0.001) for q in fleet)
    assert total <= 90 * 10 + 30  # the fleet's rate over 10 s, plus one burst
    assert total >= 90 * 10 * 0.99  # and not starved either
    alone = Quotas(per_tenant={"ores": quota})
    assert admitted(alone, "ores", 0.0, 10.0, 0.001) > 90 * 10  # one replica: the whole


def test_a_share_of_a_small_burst_still_admits_one_and_never_less_than_one_replica() -> None:
    q = Quotas(per_tenant={"ores": Quota(rate_per_s=1.0, burst=2)})
    q.share(5)  # burst 2 / 5 replicas: still one request at a time
    assert q.admit("ores", "hes", 8, 0.0) is None
    wait = q.admit("ores", "hes", 8, 0.0)
    assert wait is not None and 4.9 <= wait <= 5.0  # the rate is 1/5 per second here
    q.share(0)  # no heartbeat seen (the table unreadable): alone, not divided by zero
    assert q.replicas == 1
