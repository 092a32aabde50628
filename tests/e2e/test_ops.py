"""The ops plane: metrics with bounded labels, health,
readiness that follows the upstreams, JWKS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.dataplane._exchange import PUSH_ROUTES

from .conftest import RunningStack, start_stack

REQUIRED = {
    "gateway_requests": {"tenant", "upstream", "route", "status"},
    "gateway_request_duration_seconds": {"tenant", "upstream"},
    "gateway_denied": {"tenant", "upstream", "reason"},
    "gateway_isolation_violations": {"tenant", "upstream", "direction"},
    "gateway_upstream_up": {"upstream"},
}


def test_metrics_names_and_labels(gw: RunningStack) -> None:
    meter = next(m["serial"] for m in gw.stack.dataset.meters
                 if m["owners"][-1]["tenant"] == "fluvius")
    assert gw.client("ores").get(f"/hes/meters/{meter}").status == 403
    assert gw.client("ores").get("/hes/meters").status == 200
    resp = gw.ops("/metrics")
    assert resp.status == 200
    families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
    for name, labels in REQUIRED.items():
        assert name in families, name
        samples = families[name].samples
        assert samples, name
        for s in samples:
            assert labels <= set(s.labels) | {"le"}, (name, s.labels)
    # "gateway" labels the gateway's own server certificate's expiry; "none"
    # the pushed records that went to no tenant (quarantine).
    tenants = set(gw.stack.registry.tenants) | {"unknown", "gateway", "none"}
    routes = ({r.template for r in gw.stack.gateway.data_plane.routes.routes}
              | set(PUSH_ROUTES) | {"/notifications", "none"})
    for family in families.values():
        for s in family.samples:
            if "tenant" in s.labels:
                assert s.labels["tenant"] in tenants
            if "route" in s.labels:
                # Route templates only: never a raw path or a resource id.
                assert s.labels["route"] in routes, s.labels
                assert meter not in s.labels["route"]
    assert gw.metric("gateway_denied_total", tenant="ores", upstream="hes",
                     reason="no-relation") >= 1
    assert gw.metric("gateway_requests_total", tenant="ores", upstream="hes",
                     route="/hes/meters", status="200") >= 1
    for name in gw.stack.sim_ports:
        assert gw.metric("gateway_upstream_up", upstream=name) == 1


def test_health_and_jwks(gw: RunningStack) -> None:
    assert gw.ops("/healthz").status == 200
    ready = gw.ops("/readyz")
    assert ready.status == 200 and ready.json["status"] == "ready"
    keys = gw.ops("/.well-known/jwks.json").json["keys"]
    assert keys and all(k["kty"] == "OKP" and k["kid"] and "d" not in k for k in keys)


def test_readyz_reports_an_upstream_down_without_leaving_the_balancer(tmp_path: Path) -> None:
    gw = start_stack(tmp_path, health_interval_s=0.1)
    try:
        assert gw.ops("/readyz").status == 200
        # Take the HES simulator down: it is down for every replica alike, so
        # this one stays ready (the clearing and the portal still work
        # through it); the body and the gauge say which upstream is down.
        hes_runner = gw.stack._runners[0]
        gw.run(hes_runner.cleanup())
        deadline = time.monotonic() + 10
        while gw.ops("/readyz").json["upstreams"]["hes"] == "up" and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        ready = gw.ops("/readyz")
        assert ready.status == 200 and ready.json["status"] == "ready"
        assert ready.json["upstreams"]["hes"] == "down"
        assert gw.metric("gateway_upstream_up", upstream="hes") == 0
        assert gw.metric("gateway_upstream_up", upstream="itsm") == 1
        resp = gw.client("ores").get("/hes/meters")
        assert resp.status == 502 and resp.json["incident"]
    finally:
        gw.stop()


def test_a_stop_drains_requests_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    """SIGTERM (Gateway.stop): the replica turns not-ready ("draining"), stops
    accepting connections, and a request already in flight still gets its
    answer within the drain timeout; the ops plane answers to the end."""
    import asyncio
    import socket
    import threading

    gw = start_stack(tmp_path, health_interval_s=60)
    try:
        gw.fault("hes", "slow", delay_s=1.5)
        client = gw.client("ores")
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(client.get("/hes/meters").status))
        slow.start()
        time.sleep(0.4)  # the request is with the upstream now
        stopping = asyncio.run_coroutine_threadsafe(gw.stack.gateway.stop(), gw.loop)
        deadline = time.monotonic() + 5
        while gw.ops("/readyz").status == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = gw.ops("/readyz")
        assert ready.status == 503 and ready.json["shedding"] == "draining"
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
        slow.join(10)
        assert answers == [200]  # the request in flight was finished, not cut
        stopping.result(30)
    finally:
        gw.stop()


def test_build_info_names_the_version_python_and_openssl(gw: RunningStack) -> None:
    import importlib.metadata
    import platform
    import ssl

    text = gw.ops("/metrics").body.decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "gateway_build_info"]
    assert [(s.labels, s.value) for s in samples] == [(
        {"version": importlib.metadata.version("shared-grid-gateway"),
         "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION}, 1.0)]
