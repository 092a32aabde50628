"""The last stage of every data-plane request (gateway.dataplane._trace),
seen from outside: the problem document and its headers, the audit event
(D10), the SOC's security events (D12), the metrics, the usage ledger and the
access line, for requests served, refused by the pipeline, refused before the
caller is known, refused by the HTTP layer itself, and asked by the canary
prober. Real mTLS over loopback (tests/dataplane/harness.py); a raw TLS
socket where a request must be malformed or pipelined."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.audit import AuditEvent, SecurityEvents, UsageLedger
from gateway.audit._usage import UsageRow
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex
from gateway.dataplane._responsecheck import CLASSIFICATION_HEADER
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.problem import PROBLEM_TYPE_BASE
from gateway.push import PushService, SqliteOutbox
from gateway.state import SqliteStore
from gateway.upstream import UpstreamResponse
from gateway.vault import Lockbox
from tests.audit.faults import writes_refused
from tests.dataplane.fakes import Answer, Sent, json_answer
from tests.dataplane.harness import FEED, FLUVIUS_METER, ORES_METER, Start

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
METER_ROUTE = "/hes/meters/{serial}"
OPERATION_ROUTE = "/hes/meters/{serial}/operations"
READINGS_ROUTE = "/hes/meters/{serial}/readings"
CANARY_METER = "1SAG0000000009"
AIRPLANE_METER = "1SAG0000000003"
# The fields of an audit record the chain adds (not the trace's).
CHAIN_FIELDS = ("ts", "seq", "prev", "hash", "event")


def frozen() -> datetime:
    return NOW


def answer_meter(serial: str = ORES_METER) -> Answer:
    """The HES's answer: the meter ``serial``, whatever was asked."""
    def answer(sent: Sent) -> UpstreamResponse:
        return json_answer({"serial": serial, "utility": "electricity", "communicating": True})
    return answer


def identity(tmp_path: Path, stem: str) -> tuple[str, str]:
    """The serial (as the audit log writes it) and SHA-256 fingerprint of a
    client certificate the harness wrote."""
    cert = x509.load_pem_x509_certificate((tmp_path / f"{stem}.pem").read_bytes())
    return (format(cert.serial_number, "X"),
            hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest())


def trace_of(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in CHAIN_FIELDS}


def soc_events(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(line).items() if k != "ts"}
            for line in path.read_text().splitlines()]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.access"]


ACCESS_FIELDS = ("incident", "tenant", "method", "route", "upstream", "status", "reason",
                 "duration_ms", "bytes_in", "bytes_out")


def access_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name, "<missing>") for name in ACCESS_FIELDS}


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *extra, "", ""]).encode()


def usage_rows(ledger: UsageLedger) -> list[UsageRow]:
    return ledger.query(period="day")


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_BASE + slug


# -- the audit event (D10) -----------------------------------------------------------

async def test_a_served_request_is_audited_with_every_field(
        plane: Start, tmp_path: Path) -> None:
    """D10: who (tenant, principal, certificate), what (method, route,
    upstream, resources), the outcome and the sizes of a request served."""
    p = await plane(answer_meter(), clock=frozen)
    operator = await p.client("ores", "service", "field-ops")
    body = json.dumps({"operation": "disconnect"}).encode()
    async with operator.post(f"{p.url}/hes/meters/{ORES_METER}/operations", data=body,
                             headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        answered = await resp.read()
        incident = resp.headers["X-Request-Id"]
        label = resp.headers[CLASSIFICATION_HEADER]
    serial, fingerprint = identity(tmp_path, "ores-service-field-ops")
    [event] = p.requests()
    assert trace_of(event) == {
        "incident": incident, "tenant": "ores", "principal": "field-ops",
        "cert_serial": serial, "cert_fingerprint": fingerprint, "method": "POST",
        "route": OPERATION_ROUTE, "upstream": "hes", "decision": "allow", "reason": "owner",
        "status": 200, "resources": [ORES_METER], "bytes_in": len(body),
        "bytes_out": len(answered), "classification": label}
    assert "canary" not in event  # written only for the gateway's own prober


async def test_a_400_is_a_denial_in_the_audit_the_metrics_and_the_usage(
        plane: Start, tmp_path: Path) -> None:
    """The boundary: a 400 is a denial (decision, gateway_denied_total, the
    usage ledger's denied count), and a plain refusal is no SOC event."""
    soc_file = tmp_path / "soc.jsonl"
    ledger = UsageLedger(tmp_path / "usage.db", clock=frozen)
    p = await plane(soc=SecurityEvents(file=soc_file), usage=ledger, clock=frozen)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}", data=b"{}") as resp:
        assert resp.status == 400
        problem = await resp.json()
    assert problem["type"] == problem_type("bad-request")
    [event] = p.requests()
    assert (event["decision"], event["status"], event["reason"], event["route"],
            event["upstream"]) == ("deny", 400, "body-not-allowed", METER_ROUTE, "hes")
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason="body-not-allowed") == 1
    assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                    route=METER_ROUTE, status="400") == 1
    assert usage_rows(ledger) == [UsageRow("day", NOW.date(), "ores", "hes", METER_ROUTE,
                                           1, 1, 0, event["bytes_out"])]
    ledger.close()
    assert soc_events(soc_file) == []  # an ordinary refusal: no security event


async def test_a_request_refused_before_identity_is_traced_as_unknown(
        plane: Start, tmp_path: Path) -> None:
    """Refused before the caller is known (the shared state is stale, D8):
    the audit, the metrics and the usage say "unknown", no route, and the
    SOC's denial counter, which needs a principal, is not fed."""
    soc_file = tmp_path / "soc.jsonl"
    ledger = UsageLedger(tmp_path / "usage.db", clock=frozen)
    p = await plane(soc=SecurityEvents(file=soc_file), usage=ledger, clock=frozen)
    p.data_plane.state_stale = True
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
    [event] = p.requests()
    assert trace_of(event) == {
        "incident": problem["incident"], "tenant": "unknown", "principal": None,
        "cert_serial": None, "cert_fingerprint": None, "method": "GET", "route": None,
        "upstream": "none", "decision": "deny", "reason": "state-stale", "status": 503,
        "resources": [], "bytes_in": 0, "bytes_out": event["bytes_out"],
        "classification": None}
    assert event["bytes_out"] > 0
    assert p.sample("gateway_denied_total", tenant="unknown", upstream="none",
                    reason="state-stale") == 1
    assert p.sample("gateway_requests_total", tenant="unknown", upstream="none",
                    route="none", status="503") == 1
    assert usage_rows(ledger) == [UsageRow("day", NOW.date(), "unknown", "none", "none",
                                           1, 1, 0, event["bytes_out"])]
    ledger.close()
    assert soc_events(soc_file) == []


# -- metrics, usage, the access line -------------------------------------------------

async def test_each_route_and_status_is_a_series_of_its_own(plane: Start) -> None:
    """A tenant's requests to one upstream are counted by route template and
    status apart (the series of one are never the other's), and timed
    together by tenant and upstream."""
    p = await plane(answer_meter(), clock=frozen)
    answered = []
    for url, route, body in ((f"/hes/meters/{ORES_METER}", METER_ROUTE, None),
                             (f"/hes/meters/{ORES_METER}", METER_ROUTE, None),
                             (f"/hes/meters/{FLUVIUS_METER}", METER_ROUTE, None),
                             (f"/hes/meters/{ORES_METER}", METER_ROUTE, b"{}"),
                             (f"/hes/meters/{ORES_METER}/readings", READINGS_ROUTE, None)):
        async with p.session.get(f"{p.url}{url}", data=body) as resp:
            await resp.read()
            answered.append((route, str(resp.status)))
    # A GET with a body, and the readings route without its window: 400s.
    assert answered == [(METER_ROUTE, "200"), (METER_ROUTE, "200"), (METER_ROUTE, "403"),
                        (METER_ROUTE, "400"), (READINGS_ROUTE, "400")]
    counted = {(route, status): p.sample("gateway_requests_total", tenant="ores",
                                         upstream="hes", route=route, status=status)
               for route in (METER_ROUTE, READINGS_ROUTE) for status in ("200", "403", "400")}
    assert counted == {(METER_ROUTE, "200"): 2, (METER_ROUTE, "403"): 1,
                       (METER_ROUTE, "400"): 1, (READINGS_ROUTE, "200"): None,
                       (READINGS_ROUTE, "403"): None, (READINGS_ROUTE, "400"): 1}
    assert p.sample("gateway_request_duration_seconds_count", tenant="ores",
                    upstream="hes") == 5


async def test_a_served_request_is_counted_timed_and_logged_once(
        plane: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """gateway_requests_total and the latency histogram by tenant, upstream,
    route template and status; usage aggregated (D10); one access line of
    bounded fields (the route template, never the path)."""
    ledger = UsageLedger(tmp_path / "usage.db", clock=frozen)
    p = await plane(answer_meter(), usage=ledger, clock=frozen, access_log=True)
    operator = await p.client("ores", "service", "field-ops")
    body = json.dumps({"operation": "disconnect"}).encode()
    caplog.set_level(logging.INFO, logger="gateway.access")
    before = time.perf_counter()
    async with operator.post(f"{p.url}/hes/meters/{ORES_METER}/operations", data=body,
                             headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        answered = await resp.read()
        incident = resp.headers["X-Request-Id"]
    took = time.perf_counter() - before
    assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                    route=OPERATION_ROUTE, status="200") == 1
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason="owner") is None
    assert p.sample("gateway_request_duration_seconds_count", tenant="ores",
                    upstream="hes") == 1
    observed = p.sample("gateway_request_duration_seconds_sum", tenant="ores", upstream="hes")
    assert observed is not None and 0 < observed <= took  # measured from the request's start
    assert usage_rows(ledger) == [UsageRow("day", NOW.date(), "ores", "hes", OPERATION_ROUTE,
                                           1, 0, len(body), len(answered))]
    ledger.close()
    [line] = access_lines(caplog)
    assert access_fields(line) == {
        "incident": incident, "tenant": "ores", "method": "POST", "route": OPERATION_ROUTE,
        "upstream": "hes", "status": 200, "reason": "owner",
        "duration_ms": round(observed * 1000, 3), "bytes_in": len(body),
        "bytes_out": len(answered)}


async def test_the_access_line_of_an_unparsed_request_names_no_method_or_route(
        plane: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A method outside the bounded set is "other", no route is "none": the
    access line holds nothing the caller chose."""
    p = await plane(access_log=True)
    caplog.set_level(logging.INFO, logger="gateway.access")
    expected = []
    for _ in range(3):
        [(status, headers, _)] = await p.raw(b"GARBAGE\r\n\r\n")
        assert status == 501
        expected.append({
            "incident": headers["X-Request-Id"], "tenant": "ores", "method": "other",
            "route": "none", "upstream": "none", "status": 501, "reason": "method-unknown",
            "bytes_in": 0, "bytes_out": int(headers["Content-Length"])})
    lines = [access_fields(line) for line in access_lines(caplog)]
    # Milliseconds to the microsecond: a bounded, comparable number.
    assert all(f["duration_ms"] == round(f["duration_ms"], 3) for f in lines)
    assert [{k: v for k, v in f.items() if k != "duration_ms"} for f in lines] == expected


# -- the HTTP layer's own refusals (account_now) ----------------------------------------

async def test_a_request_the_http_layer_cannot_parse_is_answered_and_traced(
        plane: Start, tmp_path: Path) -> None:
    """D10: even a request that never reached the pipeline has its audit
    event, metrics and usage, with the caller its certificate names."""
    ledger = UsageLedger(tmp_path / "usage.db", clock=frozen)
    p = await plane(usage=ledger, clock=frozen)
    [(status, headers, body)] = await p.raw(
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert status == 400
    assert headers["Server"] == "gateway"
    problem = json.loads(body)
    assert problem["type"] == problem_type("bad-request")
    assert problem["incident"] == headers["X-Request-Id"]
    serial, fingerprint = identity(tmp_path, "client")
    [event] = p.requests()
    assert trace_of(event) == {
        "incident": problem["incident"], "tenant": "ores", "principal": "api",
        "cert_serial": serial, "cert_fingerprint": fingerprint, "method": "UNKNOWN",
        "route": None, "upstream": "none", "decision": "deny", "reason": "http-parse-error",
        "status": 400, "resources": [], "bytes_in": 0, "bytes_out": len(body),
        "classification": None}
    assert p.sample("gateway_denied_total", tenant="ores", upstream="none",
                    reason="http-parse-error") == 1
    assert p.sample("gateway_requests_total", tenant="ores", upstream="none", route="none",
                    status="400") == 1
    assert usage_rows(ledger) == [UsageRow("day", NOW.date(), "ores", "none", "none",
                                           1, 1, 0, len(body))]
    ledger.close()


async def test_an_unparsed_request_whose_audit_line_fails_is_a_503(
        plane: Start, tmp_path: Path) -> None:
    """D10, no trace, no answer: the HTTP layer's own refusals too."""
    p = await plane()
    with writes_refused(p.audit):
        [(status, headers, body)] = await p.raw(b"GARBAGE\r\n\r\n")
    assert status == 503
    problem = json.loads(body)
    assert (problem["type"], problem["status"], problem["incident"]) == (
        problem_type("unavailable"), 503, headers["X-Request-Id"])
    assert p.sample("gateway_audit_write_failures_total") == 1
    assert p.requests() == []


# -- no trace, no answer (D10) ---------------------------------------------------------

async def test_a_served_answer_without_its_audit_line_becomes_a_503_problem(
        plane: Start, caplog: pytest.LogCaptureFixture) -> None:
    """D10: the served body is withheld; the caller gets a 503 problem whose
    incident is the request's, counted under the status actually answered."""
    p = await plane()
    caplog.set_level(logging.ERROR, logger="gateway.dataplane")
    with writes_refused(p.audit):
        async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
            incident = resp.headers["X-Request-Id"]
            problem = await resp.json()
    assert problem == {"type": problem_type("unavailable"), "title": "Service unavailable",
                       "status": 503, "detail": problem["detail"], "incident": incident}
    assert p.sample("gateway_audit_write_failures_total") == 1
    assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                    route=METER_ROUTE, status="503") == 1
    assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                    route=METER_ROUTE, status="200") is None
    # Refused for the failed write, not for the relation that had allowed it.
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason="audit-write-failed") == 1
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason="owner") is None
    # The operator's log line names the incident the caller was given.
    assert [getattr(r, "incident", None) for r in caplog.records
            if r.name == "gateway.dataplane" and r.levelno == logging.ERROR] == [incident]
    assert p.requests() == []


# -- the problem document ----------------------------------------------------------------

async def test_a_withheld_answer_is_an_isolation_violation_for_the_caller_and_the_soc(
        plane: Start, tmp_path: Path) -> None:
    """D1, D12: the misrouted record is withheld (502, type
    isolation-violation) and the SOC gets one critical event naming who."""
    soc_file = tmp_path / "soc.jsonl"
    p = await plane(answer_meter(FLUVIUS_METER), soc=SecurityEvents(file=soc_file),
                    clock=frozen)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 502
        assert resp.headers["Server"] == "gateway"
        incident = resp.headers["X-Request-Id"]
        problem = await resp.json()
    assert (problem["type"], problem["status"], problem["incident"]) == (
        problem_type("isolation-violation"), 502, incident)
    assert FLUVIUS_METER not in json.dumps(problem)
    assert soc_events(soc_file) == [{
        "kind": "isolation-violation", "severity": "critical", "incident": incident,
        "tenant": "ores", "principal": "api", "cert_serial": p.client_serial,
        "route": METER_ROUTE, "upstream": "hes", "reason": "record-not-requested", "status": 502}]
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason="record-not-requested") == 1


async def test_the_gateways_own_409_is_a_conflict_a_relayed_one_is_the_upstreams(
        plane: Start) -> None:
    """D5: a meter in airplane mode is the gateway's own refusal (type
    conflict); the shared system's 409 is relayed as its refusal."""
    def conflict(sent: Sent) -> UpstreamResponse:
        return json_answer({"error": "busy"}, status=409)

    airplane = Relation("meter", AIRPLANE_METER, "*", "airplane-mode")
    p = await plane(conflict, relations=[*FEED, Relation("meter", AIRPLANE_METER, "ores",
                                                         "owner"), airplane])
    operator = await p.client("ores", "service", "field-ops")
    answers = []
    for serial in (AIRPLANE_METER, ORES_METER):
        async with operator.post(f"{p.url}/hes/meters/{serial}/operations",
                                 json={"operation": "disconnect"}) as resp:
            answers.append((resp.status, (await resp.json())["type"]))
    assert answers == [(409, problem_type("conflict")), (409, problem_type("upstream-refused"))]
    assert [s.target for s in p.upstream.sent] == [f"/meters/{ORES_METER}/operations"]


async def test_a_bad_gateway_of_the_gateways_own_making_keeps_the_502_type(
        plane: Start) -> None:
    """A 502 is typed by its status (upstream-error), whatever the reason."""
    def unlabelled(sent: Sent) -> UpstreamResponse:
        answer = json_answer({"serial": ORES_METER})
        return UpstreamResponse(200, answer.content_type,
                                ((CLASSIFICATION_HEADER, "C9"), *answer.headers), answer.body)

    p = await plane(unlabelled)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 502
        assert (await resp.json())["type"] == problem_type("upstream-error")
    [event] = p.requests()
    assert event["reason"] == "classification-invalid"


async def test_a_refusal_that_distrusts_the_framing_closes_the_connection(
        plane: Start, tmp_path: Path) -> None:
    """RFC 9112 §6.1: a smuggling attempt is answered with the connection
    shut (the request pipelined behind it is never read); an ordinary
    refusal keeps the connection for the next request."""
    p = await plane()
    smuggled = (b"GET /hes/meters/" + ORES_METER.encode() + b" HTTP/1.0\r\nHost: x\r\n"
                b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    answers = await p.raw(smuggled + get(f"/hes/meters/{ORES_METER}",
                                                             "Connection: close"))
    assert [status for status, _, _ in answers] == [400]
    answers = await p.raw(get(f"/hes/meters/{FLUVIUS_METER}")
                                 + get(f"/hes/meters/{ORES_METER}", "Connection: close"))
    assert [status for status, _, _ in answers] == [403, 200]
    assert answers[0][1]["Server"] == "gateway"
    assert answers[0][1]["X-Request-Id"] == json.loads(answers[0][2])["incident"]
    assert len(p.upstream.sent) == 1


# -- the SOC (D12) -------------------------------------------------------------------

def lockbox(store: SqliteStore) -> Lockbox:
    """A lockbox without cases (no account reaches any tenant)."""
    return Lockbox(store=store, tenants=lambda: (), reach={}, accounts={},
                   ttl=timedelta(hours=1), audit=_NoAudit(), metrics=GatewayMetrics(),
                   clock=frozen)


class _NoAudit:
    """The lockbox's and the push service's own audit: nothing reaches it here."""

    writable = True

    def record(self, event: AuditEvent) -> None:
        raise AssertionError("not reached: refused before any step or batch")

    def record_soon(self, event: AuditEvent) -> asyncio.Future[None]:
        raise AssertionError("not reached: refused before any step or batch")


def push_service(outbox: SqliteOutbox) -> PushService:
    return PushService(outbox=outbox,
                       relations=lambda: RelationIndex(list(FEED)), endpoints={},
                       client_tls=ssl.create_default_context(), metrics=GatewayMetrics(),
                       audit=_NoAudit(), clock=frozen)


@pytest.mark.parametrize(("case", "kind", "severity", "status", "reason", "route",
                          "upstream"), [
    ("revoked", "certificate-refused", "warning", 403, "certificate-revoked", None, "none"),
    ("push", "push-intake-refused", "error", 403, "not-a-pusher", "/push/hes/batches",
     "push"),
    ("lockbox", "lockbox-refused", "warning", 403, "lockbox-not-your-tenant",
     "/lockbox/{case}/{step}", "lockbox"),
])
async def test_refusals_the_soc_must_hear_of(
        plane: Start, tmp_path: Path, case: str, kind: str, severity: str, status: int,
        reason: str, route: str | None, upstream: str) -> None:
    """D12: a refused certificate (D8), a push into another system's intake
    (D1), an answer for another tenant's lockbox (D1, D7): one event each,
    with the incident the caller was given and who asked."""
    soc_file = tmp_path / "soc.jsonl"
    store = SqliteStore(tmp_path / "state.db")
    outbox = SqliteOutbox(tmp_path / "outbox.db", b"k" * 32)
    p = await plane(soc=SecurityEvents(file=soc_file), clock=frozen,
                    push=push_service(outbox), lockbox=lockbox(store))
    if case == "revoked":
        p.revoked.add(p.client_serial)
        call = p.session.get(f"{p.url}/hes/meters/{ORES_METER}")
    elif case == "push":
        call = p.session.post(f"{p.url}/push/hes/batches", json={"records": []})
    else:
        call = p.session.post(f"{p.url}/lockbox/case-1/approve")
    async with call as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
        problem = await resp.json()
    if case == "lockbox":  # the lockbox's refusal says why, in its detail
        assert problem["detail"] == ("lockbox-not-your-tenant: the case does not reach "
                                     "the caller's tenant")
    assert soc_events(soc_file) == [{
        "kind": kind, "severity": severity, "incident": incident, "tenant": "ores",
        "principal": "api", "cert_serial": p.client_serial, "route": route,
        "upstream": upstream, "reason": reason, "status": status}]
    store.close()
    outbox.close()


async def denials(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    incidents = []
    for _ in range(count):
        async with session.get(f"{url}/hes/meters/{FLUVIUS_METER}") as resp:
            assert resp.status == 403
            incidents.append(resp.headers["X-Request-Id"])
    return incidents


async def test_repeated_denials_of_one_principal_alert_the_soc_once(
        plane: Start, tmp_path: Path) -> None:
    """D12: twenty denials of one principal within a minute are probing; the
    count is per principal (ten of another do not add up)."""
    soc_file = tmp_path / "soc.jsonl"
    p = await plane(soc=SecurityEvents(file=soc_file), clock=frozen)
    other = await p.client("ores", "service", "field-ops")
    await denials(p.session, p.url, 10)
    await denials(other, p.url, 10)
    assert soc_events(soc_file) == []
    incidents = await denials(p.session, p.url, 10)
    [event] = soc_events(soc_file)
    assert event == {
        "kind": "repeated-denials", "severity": "warning", "incident": incidents[-1],
        "tenant": "ores", "principal": "api", "cert_serial": p.client_serial,
        "route": METER_ROUTE, "upstream": "hes", "reason": "no-relation", "status": 403}


async def test_server_errors_are_no_probing(plane: Start, tmp_path: Path) -> None:
    """D12: a principal whose requests fail upstream (an outage) or at the
    audit store is not probing: thirty 5xx answers raise no repeated-denials
    alert, twenty refusals after them do."""
    soc_file = tmp_path / "soc.jsonl"

    def down(sent: Sent) -> UpstreamResponse:
        raise UpstreamFailed(504, "upstream-timeout")

    p = await plane(down, soc=SecurityEvents(file=soc_file), clock=frozen)
    for _ in range(20):
        async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            assert resp.status == 504
    with writes_refused(p.audit):
        for _ in range(10):
            async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
                assert resp.status == 503
    assert soc_events(soc_file) == []
    await denials(p.session, p.url, 20)
    assert [e["kind"] for e in soc_events(soc_file)] == ["repeated-denials"]


# -- the canary prober (D1, D10) ------------------------------------------------------

async def test_the_canary_probers_requests_are_marked_and_kept_out_of_the_tenants_series(
        plane: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """D1, D10: the prober's requests are audited, marked ``canary``; they are
    no tenant's use (usage), stay out of the request, denial and latency
    series and the access log, and its refusals (by design) raise no
    repeated-denials alert."""
    soc_file = tmp_path / "soc.jsonl"
    ledger = UsageLedger(tmp_path / "usage.db", clock=frozen)
    feed = [*FEED, Relation("meter", CANARY_METER, "ores", "owner"),
            Relation("meter", CANARY_METER, "ores", "canary")]

    def own(sent: Sent) -> UpstreamResponse:
        return json_answer({"serial": sent.target.rsplit("/", 1)[-1]})

    p = await plane(own, relations=feed, soc=SecurityEvents(file=soc_file), usage=ledger,
                    clock=frozen, access_log=True)
    caplog.set_level(logging.INFO, logger="gateway.access")
    prober = await p.client("ores", "service", "canary")
    async with prober.get(f"{p.url}/hes/meters/{CANARY_METER}") as resp:
        assert resp.status == 200
    refused = 0
    for _ in range(25):
        async with prober.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            refused += resp.status == 403
    assert refused == 25
    assert soc_events(soc_file) == []
    assert access_lines(caplog) == []
    assert usage_rows(ledger) == []
    for status in ("200", "403"):
        assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                        route=METER_ROUTE, status=status) is None
    assert p.sample("gateway_request_duration_seconds_count", tenant="ores",
                    upstream="hes") is None
    # An ordinary caller's request is counted as ever.
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
    assert p.sample("gateway_requests_total", tenant="ores", upstream="hes",
                    route=METER_ROUTE, status="200") == 1
    ledger.close()
    events = p.requests()
    assert [(e["principal"], e["status"], e.get("canary")) for e in events] == [
        ("canary", 200, True), *[("canary", 403, True)] * 25, ("api", 200, None)]
    denied = {e["reason"] for e in events if e["status"] == 403}
    [reason] = denied
    assert p.sample("gateway_denied_total", tenant="ores", upstream="hes",
                    reason=reason) is None
