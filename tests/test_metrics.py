"""The data plane's lock-free series (gateway/metrics.py): LoopCounter and
LoopHistogram expose exactly what the client library's Counter and Histogram
expose for the same observations, so the ops team's names, labels, buckets
and values (DESIGN.md §7) do not change with them. Should an upgrade of
prometheus-client change what they rely on, this fails."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import GatewayMetrics, LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
AMOUNTS = [0.0, 0.001, 0.0010000001, 0.005, 0.01, 0.1, 0.5, 1.0, 9.99, 10.0, 10.5, 1e9,
           math.inf, -1.0, -math.inf, math.nan, 0.25]


def _exposed(counter_type: type[Counter], histogram_type: type[Histogram]) -> bytes:
    registry = CollectorRegistry()
    counter = counter_type("x_requests", "Requests.", ["tenant", "status"], registry=registry)
    histogram = histogram_type("x_duration_seconds", "Time.", ["tenant"], buckets=BUCKETS,
                               registry=registry)
    for n, amount in enumerate(AMOUNTS):
        histogram.labels(f"t{n % 3}").observe(amount)
        counter.labels(f"t{n % 2}", str(200 + n % 4)).inc(n % 5)
        counter.labels("t9", "503").inc()
    counter.labels("t0", "200").inc(0.5)
    return generate_latest(registry)


def test_the_loop_series_expose_what_the_library_exposes() -> None:
    mine = _exposed(LoopCounter, LoopHistogram)
    assert mine == _exposed(Counter, Histogram)
    # Not vacuous: every bucket and the NaN sum are there.
    assert b'x_duration_seconds_bucket{le="+Inf",tenant="t0"}' in mine
    assert b'x_requests_total{status="503",tenant="t9"} 17.0' in mine


def test_a_bound_itself_falls_in_its_bucket() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("y_seconds", "Time.", buckets=BUCKETS, registry=registry)
    for bound in BUCKETS:
        histogram.observe(bound)
    for bound in BUCKETS:
        cumulative = registry.get_sample_value("y_seconds_bucket", {"le": str(bound)})
        assert cumulative == BUCKETS.index(bound) + 1


def test_the_loop_counter_keeps_the_library_refusals() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("z", "Z.", ["a"], registry=registry)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("1").inc(-1)
    with pytest.raises(ValueError, match="exemplar"):
        counter.labels("1").inc(1, exemplar={"trace_id": "1"})
    histogram = LoopHistogram("h", "H.", ["a"], registry=registry)
    with pytest.raises(ValueError, match="exemplar"):
        histogram.labels("1").observe(1, exemplar={"trace_id": "1"})
    assert registry.get_sample_value("z_total", {"a": "1"}) == 0.0
    assert registry.get_sample_value("h_count", {"a": "1"}) == 0.0


def test_the_per_request_series_are_the_lock_free_ones() -> None:
    metrics = GatewayMetrics()
    for family in (metrics.requests, metrics.denied, metrics.classified_responses):
        assert type(family) is LoopCounter
    for family in (metrics.duration, metrics.upstream_duration):
        assert type(family) is LoopHistogram
