"""The data-plane pipeline's fast tests: a real DataPlane behind a real mTLS
DataServer on 127.0.0.1 (certificates from the project's own PKI), real
tenants, a real hash-chained audit log, and a fake upstream transport in place
of the shared systems (tests/dataplane/fakes.py). The end-to-end tests with
the simulators are in tests/e2e."""

from __future__ import annotations

import json

import pytest

from gateway.errors import UpstreamFailed
from gateway.upstream import UpstreamResponse
from tests.audit.faults import writes_refused
from tests.dataplane.fakes import Sent, json_answer
from tests.dataplane.harness import FLUVIUS_METER, ORES_METER, Start


async def test_an_allowed_request_reaches_the_upstream_with_the_gateways_identity_only(
        plane: Start) -> None:
    p = await plane()
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}", headers={
            "X-Gateway-Assertion": "forged", "X-Tenant": "fluvius",
            "Authorization": "Bearer the-callers-own"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["serial"] == ORES_METER
    [sent] = p.upstream.sent
    assert (sent.upstream, sent.method, sent.target) == ("hes", "GET", f"/meters/{ORES_METER}")
    # SECURITY (D1, D6): the upstream sees the gateway's signed assertion, not
    # what the caller claimed about itself, nor the caller's own credentials.
    assertion = sent.headers["X-Gateway-Assertion"]
    assert assertion != "forged" and assertion.count(".") == 2
    assert "X-Tenant" not in sent.headers
    assert sent.headers.get("Authorization") != "Bearer the-callers-own"


async def test_another_tenants_resource_never_reaches_the_upstream(
        plane: Start) -> None:
    p = await plane()
    async with p.session.get(f"{p.url}/hes/meters/{FLUVIUS_METER}") as resp:
        assert resp.status == 403
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert p.upstream.sent == []  # D1: decided before anything is forwarded
    [event] = [e for e in p.audit_events() if e.get("incident") == problem["incident"]]
    assert event["tenant"] == "ores" and event["decision"] == "deny"


async def test_an_answer_holding_another_tenants_record_is_withheld(
        plane: Start) -> None:
    def misroute(sent: Sent) -> UpstreamResponse:
        return json_answer({"serial": FLUVIUS_METER, "utility": "electricity"})

    p = await plane(misroute)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 502  # D1, D3: the routing check, failing closed
        body = await resp.text()
    assert FLUVIUS_METER not in body
    assert len(p.upstream.sent) == 1


@pytest.mark.parametrize(("failure", "status"), [
    (UpstreamFailed(504, "upstream-timeout"), 504),
    (UpstreamFailed(502, "upstream-reset"), 502),
    (UpstreamFailed(503, "upstream-circuit-open"), 503),
])
async def test_an_upstream_failure_is_a_problem_with_its_status(
        plane: Start, failure: UpstreamFailed, status: int) -> None:
    def fail(sent: Sent) -> UpstreamResponse:
        raise failure

    p = await plane(fail)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == status
        problem = await resp.json()
    [event] = [e for e in p.audit_events() if e.get("incident") == problem["incident"]]
    assert event["reason"] == failure.reason


async def test_the_certificate_is_read_once_per_connection_and_checked_per_request(
        plane: Start) -> None:
    p = await plane()
    for _ in range(3):  # one keep-alive connection
        async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            assert resp.status == 200
    # The connection book (at connect) and the resolver share one reading.
    assert p.peers.reads == 1
    # SECURITY (D8): revoked after connect, refused on the connection already open.
    p.revoked.add(p.client_serial)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 403
    assert len(p.upstream.sent) == 3
    assert p.peers.reads == 1
    last = [e for e in p.audit_events() if "reason" in e][-1]  # not the closing checkpoint
    assert (last["reason"], last["cert_serial"]) == ("certificate-revoked", p.client_serial)


async def test_an_answer_waits_for_its_audit_line_and_without_it_is_a_503(
        plane: Start) -> None:
    # D10, "no trace, no answer": the audit line of a request is written with
    # the others of its loop iteration, and the answer waits for that write.
    # Here the write itself fails (the audit file's descriptor refuses it),
    # after the request was checked and served by the upstream.
    p = await plane()
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
    with writes_refused(p.audit):
        async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            assert resp.status == 503
            problem = await resp.json()
            assert ORES_METER not in json.dumps(problem)  # the served body is withheld
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200  # the store is back: so is the service
    incidents = [e["incident"] for e in p.audit_events() if e.get("event") == "request"]
    assert len(incidents) == 2 and problem["incident"] not in incidents
