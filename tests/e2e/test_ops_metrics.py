"""The metrics an operator expects besides the gateway's own: the process's
RSS against the memory budget, the upstream latency histogram and the open
connections per listener, each seen to move over real sockets."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import HOST, RunningStack, start_stack


def _until(read: Callable[[], float], want: float, within_s: float = 10) -> float:
    """``read()`` once it equals ``want`` (or the last value after ``within_s``)."""
    deadline = time.monotonic() + within_s
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_process_metrics_and_the_memory_budget(gw: RunningStack) -> None:
    rss = gw.metric("process_resident_memory_bytes")
    assert rss > 1024 * 1024  # this process, read at scrape time
    assert gw.metric("process_open_fds") > 0
    assert gw.metric("python_info") == 1
    assert 'python_gc_collections_total{generation="0"}' in gw.ops("/metrics").body.decode()
    # The budget the RSS alert compares with: [limits] memory_budget_mb in bytes.
    budget_mb = gw.stack.gateway.config.limits.memory_budget_mb
    assert gw.metric("gateway_memory_budget_bytes") == budget_mb * 1024 * 1024


def test_upstream_latency_is_measured_per_upstream(faults: RunningStack) -> None:
    gw = faults
    count = ("gateway_upstream_duration_seconds_count", {"upstream": "itsm"})
    hes_before = gw.metric("gateway_upstream_duration_seconds_count", upstream="hes")
    before = gw.metric(count[0], **count[1])
    total_before = gw.metric("gateway_upstream_duration_seconds_sum", upstream="itsm")
    gw.fault("itsm", "slow", delay_s=0.3)
    client = gw.client("ores")
    assert client.get("/itsm/tickets").status == 200
    assert gw.metric(count[0], **count[1]) == before + 1
    # The call took at least the upstream's delay, and it is in itsm's series
    # (the HES's moves only with its own calls or probes, never by this one).
    assert gw.metric("gateway_upstream_duration_seconds_sum", upstream="itsm") \
        >= total_before + 0.3
    assert gw.metric("gateway_upstream_duration_seconds_bucket", upstream="itsm",
                     le="0.25") == before
    assert gw.metric("gateway_upstream_duration_seconds_count", upstream="hes") == hes_before


def test_an_upstream_failure_is_no_latency_sample(faults: RunningStack) -> None:
    gw = faults
    before = gw.metric("gateway_upstream_duration_seconds_count", upstream="itsm")
    gw.fault("itsm", "reset")
    assert gw.client("ores").get("/itsm/tickets").status >= 500
    assert gw.metric("gateway_upstream_duration_seconds_count", upstream="itsm") == before


def _open(gw: RunningStack, listener: str) -> float:
    return gw.metric("gateway_connections_open", listener=listener)


def _count_connections(gw: RunningStack, listener: str, port: int,
                       tls: ssl.SSLContext | None) -> None:
    """A connection counts from accept (before or without a TLS handshake)
    to close."""
    base = _open(gw, listener)
    with socket.create_connection((HOST, port), timeout=10):
        # Nothing sent yet: a TLS listener has not even seen a ClientHello.
        assert _until(lambda: _open(gw, listener), base + 1) == base + 1
    assert _until(lambda: _open(gw, listener), base) == base
    if tls is None:
        return
    with socket.create_connection((HOST, port), timeout=10) as sock, \
            tls.wrap_socket(sock, server_hostname="localhost") as conn:
        conn.sendall(b"GET /hes/meters HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert conn.recv(1)  # handshake done, a request answered, connection kept open
        assert _until(lambda: _open(gw, listener), base + 1) == base + 1
    assert _until(lambda: _open(gw, listener), base) == base


@pytest.fixture(scope="module")
def aiohttp_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("aiohttp-stack"),
                          gateway_settings='http_server = "aiohttp"\n')
    yield running
    running.stop()


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
def test_open_connections_on_the_data_listener(server: str, gw: RunningStack,
                                               request: pytest.FixtureRequest) -> None:
    stack = gw if server == "lean" else request.getfixturevalue("aiohttp_gw")
    assert stack.stack.gateway.config.http_server == server
    _count_connections(stack, "data", stack.port, stack.context("ores"))


def test_open_connections_on_the_admin_and_ops_listeners(gw: RunningStack) -> None:
    _count_connections(gw, "admin", gw.stack.gateway.admin_port, gw.context("ores"))
    # The ops plane is plain HTTP; the scrape reading the gauge is one of them.
    assert _open(gw, "ops") >= 1
    _count_connections(gw, "ops", gw.stack.gateway.ops_port, None)


def test_the_gauges_of_two_gateways_are_their_own(gw: RunningStack, tmp_path: Path) -> None:
    """One registry per gateway: another gateway's connections are not counted."""
    other = start_stack(tmp_path)
    try:
        base = _open(gw, "data")
        with socket.create_connection((HOST, other.port), timeout=10):
            assert _until(lambda: _open(other, "data"), 1) == 1
            assert _open(gw, "data") == base
    finally:
        other.stop()
