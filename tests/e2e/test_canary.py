"""Isolation canaries over real sockets (D1, D12): the gateway's own prober
asks, as every tenant's canary principal (a short-lived certificate its CA
made), for every canary the feed marks, through the data listener: mTLS
identity, decide, the simulators, the response check. A clean round passes;
the misroute fault is caught by the routing check (withheld, the owner of
the foreign record notified); with the relation check and the routing check
removed in a test double, a foreign canary is served and that is a breach:
a critical SOC event, gateway_canary_breaches_total and a notification to
the canary's owner."""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.canary import CanaryProber, Probe
from gateway.core.breach import OWNER_RELATIONS
from gateway.core.canary import PROBE_ROUTES, Canary
from gateway.core.relations.index import RelationIndex
from gateway.edge import Answer
from gateway.pki._authority import spiffe_uri
from gateway.pki._issuance import make_key_and_csr
from gateway.tls import client_context, load_chain_from_pem

from .conftest import Client, RunningStack, start_stack
from .test_credentials import admin


@pytest.fixture(scope="module")
def cgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack whose gateway runs the prober; its interval is long, so the
    tests run the rounds themselves (after the first, at start)."""
    running = start_stack(tmp_path_factory.mktemp("canary"), upstream_timeout_s=2.0,
                          canary_interval_s=3600.0)
    deadline = time.monotonic() + 60
    while prober(running).rounds < 1:
        assert time.monotonic() < deadline, "the prober's first round did not end"
        time.sleep(0.1)
    yield running
    running.stop()


def prober(gw: RunningStack) -> CanaryProber:
    found = gw.stack.gateway.canary
    assert found is not None
    return found


def run_round(gw: RunningStack) -> list[Probe]:
    probes: list[Probe] = gw.run(prober(gw).run_round(), timeout=120)
    return probes


def soc_events(gw: RunningStack) -> list[dict[str, Any]]:
    path = gw.stack.work_dir / "soc.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def total(gw: RunningStack, name: str) -> float:
    """The sum of every sample of one metric."""
    text = gw.ops("/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))


def canary_client(gw: RunningStack, tenant: str) -> Client:
    """A partner holding ``tenant``'s canary certificate (as the prober does)."""
    cert, key = gw.stack.gateway.credentials.issue_canary_identity(tenant, timedelta(minutes=5))
    ctx: ssl.SSLContext = client_context(gw.stack.pki.ca_cert)
    load_chain_from_pem(ctx, cert, key)
    return Client(gw.port, ctx)


def notifications(gw: RunningStack, tenant: str) -> list[dict[str, Any]]:
    resp = gw.client(tenant).get("/notifications")
    assert resp.status == 200, resp.body
    found: list[dict[str, Any]] = resp.json["notifications"]
    return found


def test_the_demo_feed_marks_one_canary_per_tenant_and_system(cgw: RunningStack) -> None:
    found = prober(cgw).canaries()
    kinds = Counter(c.kind for c in found)
    registry = cgw.stack.registry
    assert kinds["meter"] == sum("hes_consortium" in t.memberships for t in registry)
    assert kinds["ean"] == sum(t.kind == "dso" for t in registry)
    assert kinds["cmh-request"] == sum(t.cmh_coordinator for t in registry)
    assert kinds["ticket"] >= 10
    assert set(kinds) == set(PROBE_ROUTES)


def test_a_clean_round_passes_and_is_marked_as_canary_traffic(cgw: RunningStack) -> None:
    before = cgw.metric("gateway_canary_last_success_timestamp_seconds")
    passed = cgw.metric("gateway_canary_probes_total", result="pass")
    probes = run_round(cgw)
    found = prober(cgw).canaries()
    tenants = len(cgw.stack.registry)
    assert len(probes) == len(found) * tenants
    assert Counter(p.result for p in probes) == {"pass": len(probes)}
    # The owner reached each of its canaries (200), every other tenant was refused.
    for p in probes:
        assert (p.status == 200) == (p.prober == p.canary.owner), p
    assert cgw.metric("gateway_canary_probes_total", result="pass") == passed + len(probes)
    assert cgw.metric("gateway_canary_last_success_timestamp_seconds") > max(before, 0)

    # D10: every probe is in the audit log, marked; none is in usage nor in
    # the tenants' request series.
    incidents = {p.incident for p in probes}
    events = [e for e in cgw.audit_events() if e.get("incident") in incidents]
    assert len(events) == len(probes)
    assert all(e["canary"] is True and e["principal"] == "canary" for e in events)
    assert not [e for e in cgw.audit_events()
                if e.get("event") == "request" and e.get("principal") != "canary"
                and e.get("canary")]
    routes = {template for template, _ in PROBE_ROUTES.values()}
    rows = cgw.stack.gateway.usage.query(period="day")
    assert not [r for r in rows if r.route in routes]
    for template in routes:
        assert cgw.metric("gateway_requests_total", route=template) == 0
    assert total(cgw, "gateway_denied_total") == 0  # no alert on the prober's refusals
    assert not [e for e in soc_events(cgw) if e["kind"] == "repeated-denials"]


def test_a_canary_principal_reads_canaries_only(cgw: RunningStack) -> None:
    """D1: a canary certificate opens no real record, not even its own tenant's."""
    ds = cgw.stack.dataset
    own_meter = next(m["serial"] for m in ds.meters if m["owners"][-1]["tenant"] == "ores"
                     and not m["airplane_mode"])
    mine = next(c for c in prober(cgw).canaries() if c.owner == "ores" and c.kind == "meter")
    theirs = next(c for c in prober(cgw).canaries()
                  if c.owner == "fluvius" and c.kind == "meter")
    client = canary_client(cgw, "ores")
    try:
        assert client.get(mine.path).status == 200
        assert client.get(mine.path).json["serial"] == mine.resource_id
        assert client.get(f"/hes/meters/{own_meter}").status == 403  # a real record
        assert client.get(theirs.path).status == 403  # another tenant's canary
        assert client.get("/hes/meters").status == 403  # no lists
        assert client.get("/notifications").status == 403
    finally:
        client.close()
    # The same real meter is ORES's to read with its ordinary principal.
    assert cgw.client("ores").get(f"/hes/meters/{own_meter}").status == 200
    reasons = {e["reason"] for e in cgw.audit_events()
               if e.get("event") == "request" and e.get("canary") and e["status"] == 403}
    assert "canary-principal-not-a-canary" in reasons


def test_nobody_issues_a_canary_certificate(cgw: RunningStack) -> None:
    """The canary principal's certificates are the gateway's own (in-process)."""
    _, csr = make_key_and_csr(spiffe_uri(cgw.stack.trust_domain, "ores", "service", "canary"))
    resp = admin(cgw, "POST", "/admin/certs", {"tenant": "ores", "kind": "service",
                                               "name": "canary", "csr": csr.decode(),
                                               "reason": "test"})
    assert resp.status == 422, resp.body
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json["incident"]


def test_the_misroute_fault_is_caught_and_the_owner_notified(cgw: RunningStack) -> None:
    """The HES hands out another tenant's meter: each canary owner's own probe
    is withheld by the routing check (not a breach), the owner of the
    misrouted meter is told, and the round is no success."""
    last = cgw.metric("gateway_canary_last_success_timestamp_seconds")
    cgw.fault("hes", "misroute")
    try:
        probes = run_round(cgw)
    finally:
        cgw.fault("hes", "none")
    results = Counter(p.result for p in probes)
    meters = [c for c in prober(cgw).canaries() if c.kind == "meter"]
    assert results == {"withheld": len(meters), "pass": len(probes) - len(meters)}
    assert cgw.metric("gateway_canary_probes_total", result="withheld") == len(meters)
    assert cgw.metric("gateway_canary_probes_total", result="breach") == 0
    assert cgw.metric("gateway_canary_last_success_timestamp_seconds") == last
    probe = next(p for p in probes if p.result == "withheld" and p.prober == "ores")
    (event,) = [e for e in cgw.audit_events()
                if e.get("incident") == probe.incident and e.get("event") == "request"]
    assert event["canary"] is True and event["status"] == 502
    (rid,) = event["resources"]  # the foreign meter the check caught
    owners = cgw.relations.holders("meter", rid, OWNER_RELATIONS["meter"], datetime.now(UTC))
    (owner,) = owners - {"ores"}
    listed = [n for n in notifications(cgw, owner) if n["incident"] == probe.incident]
    assert [(n["requested_by"], n["outcome"]) for n in listed] == [("ores", "withheld")]
    assert [e["severity"] for e in soc_events(cgw)
            if e["incident"] == probe.incident] == ["critical"]


def _no_relation_check(ex: Any, caller: Any, facts: Any, relations: Any, now: Any,
                       request: Any) -> None:
    """A decide stage with the relation check removed: everything is allowed."""
    ex.resources = tuple(ex.match.params.values())


class _PassEverything:
    """A response check that checks nothing: the upstream's answer as it is."""

    def check(self, ex: Any, facts: Any, relations: Any, upstream: Any,
              now: Any) -> Answer:
        return Answer(upstream.status, upstream.body, {"X-Request-Id": ex.incident},
                      content_type="application/json")


def test_without_the_relation_check_the_routing_check_still_withholds(
        cgw: RunningStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgw.stack.gateway.data_plane, "_decide", _no_relation_check)
    probes = run_round(cgw)
    foreign = Counter(p.result for p in probes if p.prober != p.canary.owner)
    # D1 held by the second guard: foreign canaries withheld (or refused for
    # another reason, e.g. a kind of tenant the route has no grant for), never served.
    assert set(foreign) == {"withheld", "pass"} and foreign["withheld"] > 100
    assert cgw.metric("gateway_canary_probes_total", result="breach") == 0


def test_a_served_foreign_canary_is_a_breach(cgw: RunningStack,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With both guards removed in a test double, the prober is the one that
    finds the leak: breach counted, SOC paged, the canary's owner told."""
    data_plane = cgw.stack.gateway.data_plane
    monkeypatch.setattr(data_plane, "_decide", _no_relation_check)
    monkeypatch.setattr(data_plane, "response_check", _PassEverything())
    last = cgw.metric("gateway_canary_last_success_timestamp_seconds")
    probes = run_round(cgw)
    breaches = [p for p in probes if p.result == "breach"]
    assert breaches and all(p.prober != p.canary.owner for p in breaches)
    assert cgw.metric("gateway_canary_probes_total", result="breach") == len(breaches)
    assert cgw.metric("gateway_canary_last_success_timestamp_seconds") == last
    probe = next(p for p in breaches if p.canary.owner == "ores" and p.canary.kind == "meter")
    assert cgw.metric("gateway_canary_breaches_total", owner="ores", prober=probe.prober) \
        == sum(p.canary.owner == "ores" and p.prober == probe.prober for p in breaches)
    (soc,) = [e for e in soc_events(cgw) if e["incident"] == probe.incident
              and e["kind"] == "canary-breach"]
    assert soc["severity"] == "critical"
    assert (soc["owner"], soc["prober"], soc["route"]) == ("ores", probe.prober,
                                                          "/hes/meters/{serial}")
    monkeypatch.undo()
    listed = [n for n in notifications(cgw, "ores") if n["incident"] == probe.incident]
    assert [(n["owner"], n["requested_by"], n["outcome"], n["reason"]) for n in listed] == [
        ("ores", probe.prober, "served", "canary-breach")]
    # The prober itself never told the tenant that was served the canary.
    assert not [n for n in notifications(cgw, probe.prober) if n["incident"] == probe.incident]


def test_a_round_without_an_answer_is_an_error(tmp_path: Path, cgw: RunningStack) -> None:
    gateway = cgw.stack.gateway
    dead = CanaryProber(
        issue=gateway.credentials.issue_canary_identity, relations=lambda: gateway.relations,
        tenants=lambda: ["ores"], target=lambda: ("127.0.0.1", 1),
        trust_bundle=cgw.stack.pki.ca_cert, server_cert=gateway.config.server_cert,
        metrics=gateway.metrics, soc=gateway.soc, push=None,
        security_contact=lambda tenant: None, interval_s=3600, timeout_s=2)
    before = cgw.metric("gateway_canary_probes_total", result="error")
    probes: list[Probe] = cgw.run(dead.run_round(), timeout=60)
    assert {p.result for p in probes} == {"error"}
    assert cgw.metric("gateway_canary_probes_total", result="error") == before + len(probes)


def test_canary_paths_are_the_routes_templates() -> None:
    canary = Canary("ean", "541448000000000000", "ores")
    assert canary.path == "/clearing/access-points/541448000000000000"
    assert canary.upstream == "clearing"


def test_a_reloaded_feed_is_scanned_again(cgw: RunningStack) -> None:
    """The canaries follow the live snapshot: one without marks has none."""
    gateway = cgw.stack.gateway
    live = gateway.relations
    assert prober(cgw).canaries()
    bare = RelationIndex([r for r in live if r.relation != "canary"])
    gateway.replace_relations(bare, "bare")
    try:
        assert prober(cgw).canaries() == ()
        assert run_round(cgw) == []
    finally:
        gateway.replace_relations(live, "live")
    assert prober(cgw).canaries()
