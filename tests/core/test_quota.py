"""Per-tenant token buckets and concurrency caps (issue 8 item 3), frozen clock."""

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
