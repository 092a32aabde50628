"""Upstream faults through a fault proxy: refused, blackhole,
latency, slow drip, reset and close mid-body; the circuit breaker opens and
recovers; no error body carries a stack trace or an internal address."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RunningStack, start_stack
from .faultproxy import FaultProxy


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, FaultProxy]]:
    proxy = FaultProxy()
    gw = start_stack(tmp_path_factory.mktemp("faults"), upstream_timeout_s=1.0,
                     upstream_ports={"itsm": proxy.port})
    proxy.target_port = gw.stack.sim_ports["itsm"]
    gw.run(proxy.start())
    yield gw, proxy
    gw.run(proxy.stop())
    gw.stop()


def _mode(gw: RunningStack, proxy: FaultProxy, mode: str) -> None:
    gw.run(proxy.set_mode(mode))


def _clean(body: bytes) -> None:
    text = body.decode(errors="replace")
    assert "Traceback" not in text and "File \"" not in text
    assert not re.search(r"127\.0\.0\.1|localhost:\d+|:\d{4,5}\b", text), text


@pytest.fixture(autouse=True)
def healthy(faulty: tuple[RunningStack, FaultProxy]) -> Iterator[None]:
    gw, proxy = faulty
    _mode(gw, proxy, "pass")
    gw.stack.gateway.upstreams.breakers["itsm"].success()
    assert gw.client("ores").get("/itsm/tickets").status == 200  # learn the answer size
    yield
    _mode(gw, proxy, "pass")
    gw.stack.gateway.upstreams.breakers["itsm"].success()


def test_refused_is_502_within_a_second(faulty: tuple[RunningStack, FaultProxy]) -> None:
    gw, proxy = faulty
    _mode(gw, proxy, "refuse")
    gw.client("ores").close()
    started = time.monotonic()
    resp = gw.client("ores").get("/itsm/assets")
    assert resp.status == 502 and time.monotonic() - started < 1.0
    _clean(resp.body)


def test_blackhole_is_504_and_the_breaker_opens_then_recovers(
        faulty: tuple[RunningStack, FaultProxy]) -> None:
    gw, proxy = faulty
    breaker = gw.stack.gateway.upstreams.breakers["itsm"]
    breaker.open_s = 1.0
    _mode(gw, proxy, "blackhole")
    statuses = []
    for _ in range(breaker.threshold):
        started = time.monotonic()
        resp = gw.client("ores").get("/itsm/tickets")
        statuses.append(resp.status)
        assert time.monotonic() - started < 2.5  # the route timeout (1 s), not forever
        _clean(resp.body)
    assert set(statuses) == {504}
    assert gw.metric("gateway_upstream_circuit_open", upstream="itsm") == 1
    started = time.monotonic()
    fast = gw.client("ores").get("/itsm/tickets")
    assert fast.status == 503 and time.monotonic() - started < 0.5  # failing fast
    _mode(gw, proxy, "pass")
    time.sleep(1.1)  # half-open: one probe goes through and closes the circuit
    assert gw.client("ores").get("/itsm/tickets").status == 200
    assert gw.metric("gateway_upstream_circuit_open", upstream="itsm") == 0


@pytest.mark.parametrize("mode", ["reset", "close"])
def test_cut_answer_is_never_a_clean_200(faulty: tuple[RunningStack, FaultProxy],
                                         mode: str) -> None:
    gw, proxy = faulty
    _mode(gw, proxy, mode)
    resp = gw.client("ores").get("/itsm/tickets")
    assert resp.status == 502
    _clean(resp.body)


@pytest.mark.parametrize("mode", ["latency", "drip"])
def test_slow_but_complete_answers_pass(faulty: tuple[RunningStack, FaultProxy],
                                        mode: str) -> None:
    gw, proxy = faulty
    proxy.latency_s = 0.1
    _mode(gw, proxy, mode)
    resp = gw.client("ores").get("/itsm/tickets")
    assert resp.status in (200, 504)  # complete within the route timeout, or refused
    if resp.status == 200:
        assert resp.json["tickets"]


def test_post_is_not_retried(tmp_path: Path) -> None:
    from gateway.upstream._pool import IDEMPOTENT

    assert "POST" not in IDEMPOTENT and "GET" in IDEMPOTENT
