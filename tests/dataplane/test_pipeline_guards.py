"""The data plane's guards, each pinned by its observable outcome (the
answer's status, problem type and headers, the audit event's reason and
caller, what reached the upstream, what the registers and metrics hold), so
that deleting or loosening a guard in gateway/dataplane/_pipeline.py fails
a test (docs/mutation.md). Same harness as test_pipeline.py; a raw TLS
client is used where the exact bytes of the request matter (header counts,
HTTP/1.0, pipelining)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.audit import SecurityEvents, UsageLedger
from gateway.config import EdgeLimits, Upstream
from gateway.core.catalog import ROUTES
from gateway.core.identifiers import with_nrn_check
from gateway.core.model import Relation
from gateway.core.pseudonym import Pseudonymiser
from gateway.core.push.records import ACCESS_POINT, METER_EAN, meter_ean_id
from gateway.core.quota import Quota
from gateway.core.routes import RecordCheck, ResourceRef, Route, RouteTable
from gateway.errors import RequestRefused
from gateway.pki._assertion import ISSUER
from gateway.state import Consultation, NrnApproval
from gateway.upstream import UpstreamResponse
from tests.dataplane.fakes import FakeUpstream, Sent, json_answer
from tests.dataplane.harness import FEED, FLUVIUS_METER, ORES_METER, Plane, Start

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
PROBLEM = "urn:shared-grid-gateway:problem:"


def fixed_clock() -> datetime:
    return NOW


def effective(sent: Sent) -> dict[str, str]:
    """The header fields the upstream reads: names are case-insensitive and
    a name given twice is sent once, the last value winning (what the real
    transport's serialize_request does with the same mapping)."""
    return {name.lower(): value for name, value in sent.headers.items()}


def event_of(p: Plane, incident: str) -> dict[str, Any]:
    [event] = [e for e in p.requests() if e["incident"] == incident]
    return event


def meter_answer(sent: Sent) -> UpstreamResponse:
    """The HES's answer naming the meter of the path (``/meters/{serial}[/...]``)
    or, for ``/lookups``, of the body."""
    parts = sent.target.split("/")
    serial = parts[2] if len(parts) > 2 else json.loads(sent.body or b"{}").get("serial")
    return json_answer({"serial": serial, "utility": "electricity", "communicating": True})


def get_line(path: str, *extra: str, version: str = "1.1") -> bytes:
    fields = ["Host: localhost", *extra]
    return (f"GET {path} HTTP/{version}\r\n" + "".join(f"{f}\r\n" for f in fields)
            + "\r\n").encode()


# -- load shedding, fail-closed 503s -------------------------------------------

async def test_load_is_shed_at_max_in_flight_before_anything_else(plane: Start) -> None:
    """D1 availability: at the in-flight bound a request is refused at once
    (503, Retry-After) and audited as "overloaded"; one below it is served,
    and the counter is back where it was after each request."""
    seen: list[int] = []

    def counting(sent: Sent) -> UpstreamResponse:
        seen.append(p.data_plane.in_flight)
        return meter_answer(sent)

    p = await plane(counting, limits=EdgeLimits(max_in_flight=8))
    p.data_plane.in_flight = 7
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
    assert seen == [8]  # this request counted while it is handled
    assert p.data_plane.in_flight == 7
    p.data_plane.in_flight = 8
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
    assert problem["type"] == PROBLEM + "unavailable" and problem["status"] == 503
    assert p.data_plane.in_flight == 8
    assert len(p.upstream.sent) == 1
    assert p.sample("gateway_denied_total", tenant="unknown", upstream="none",
                    reason="overloaded") == 1
    event = event_of(p, problem["incident"])
    assert (event["reason"], event["status"], event["tenant"]) == ("overloaded", 503, "unknown")


async def test_over_the_memory_budget_every_request_is_shed(plane: Start) -> None:
    p = await plane()
    p.data_plane.over_memory_budget = True  # however few requests are in flight
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
    assert p.upstream.sent == []
    assert event_of(p, problem["incident"])["reason"] == "memory-budget"


async def test_no_writable_audit_log_no_request(plane: Start) -> None:
    """D10, SECURITY: refused before it is forwarded, when the audit log
    says it cannot take the event."""

    class Unwritable:
        writable = False

    p = await plane()
    p.data_plane.audit = Unwritable()  # type: ignore[assignment]
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        problem = await resp.json()
    assert problem["type"] == PROBLEM + "unavailable"
    assert p.upstream.sent == []
    assert event_of(p, problem["incident"])["reason"] == "audit-unavailable"


async def test_a_stale_view_of_revocations_fails_closed(plane: Start) -> None:
    """D8: the shared state unread for longer than its bound: nothing is
    served (a revocation might be missed), and the caller is told to retry."""
    p = await plane()
    p.data_plane.state_stale = True
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
    assert problem["type"] == PROBLEM + "unavailable"
    assert p.upstream.sent == []
    assert event_of(p, problem["incident"])["reason"] == "state-stale"


# -- D9: a contract-bounded tenant ------------------------------------------------

@pytest.mark.parametrize(("at", "status", "reason"), [
    (datetime(2027, 12, 31, 23, 59, tzinfo=UTC), 200, "list"),
    (datetime(2028, 1, 1, 0, 0, tzinfo=UTC), 403, "tenant-contract-ended"),
])
async def test_a_providers_certificates_serve_only_while_its_contract_runs(
        plane: Start, at: datetime, status: int, reason: str) -> None:
    """D9: ENGIE IT's contract ends on 31 December 2027 (tenants/engie-it.toml)."""
    p = await plane(lambda sent: json_answer({"tickets": []}), clock=lambda: at)
    engie = await p.client("engie-it", "service", "api")
    async with engie.get(f"{p.url}/itsm/tickets") as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    event = event_of(p, incident)
    # Refused, but who it is goes to the audit log (and the SOC).
    assert (event["tenant"], event["principal"], event["reason"]) == ("engie-it", "api", reason)
    assert len(p.upstream.sent) == (1 if status == 200 else 0)


# -- edge header limits and framing (RFC 9112) --------------------------------------

def _padded(count: int, block: int) -> list[str]:
    """``count`` header fields (Host and Connection: close among them) whose
    block is exactly ``block`` bytes as the pipeline counts it (name + value
    + 4 per field)."""
    fields = [("Host", "localhost"), ("Connection", "close")] + [
        (f"X-F{i}", "v") for i in range(count - 3)]
    used = sum(len(n) + len(v) + 4 for n, v in fields) + len("X-Pad") + 4
    return [f"{n}: {v}" for n, v in fields[1:]] + ["X-Pad: " + "p" * (block - used)]


@pytest.mark.parametrize(("count", "block", "status", "reason"), [
    (6, 200, 200, "owner"),  # both limits met exactly
    (7, 200, 431, "too-many-headers"),
    (6, 201, 431, "header-block-too-large"),
])
async def test_the_header_limits_are_applied_exactly(
        plane: Start, tmp_path: Path, count: int, block: int, status: int,
        reason: str) -> None:
    p = await plane(meter_answer, limits=EdgeLimits(max_headers=6, max_header_block_bytes=200))
    [answer] = await p.raw((
        f"GET /hes/meters/{ORES_METER} HTTP/1.1\r\nHost: localhost\r\n"
        + "".join(f"{f}\r\n" for f in _padded(count, block)) + "\r\n").encode())
    assert answer.status == status
    if status == 431:
        assert answer.json()["type"] == PROBLEM + "headers-too-large"
    incident = answer.header("X-Request-Id")
    assert incident is not None
    assert event_of(p, incident)["reason"] == reason


async def test_http10_with_transfer_encoding_is_refused_and_the_connection_closed(
        plane: Start, tmp_path: Path) -> None:
    """RFC 9112 §6.1: HTTP/1.0 has no chunked framing: a smuggling attempt.
    Refused, and nothing after it on the connection is read (the request
    pipelined behind it gets no answer)."""
    p = await plane(meter_answer)
    smuggled = (f"GET /hes/meters/{ORES_METER} HTTP/1.0\r\nHost: localhost\r\n"
                "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode()
    answers = await p.raw(smuggled + get_line(
        f"/hes/meters/{ORES_METER}", "Connection: close"))
    [refused] = answers
    assert refused.status == 400
    assert refused.json()["type"] == PROBLEM + "bad-request"
    assert p.upstream.sent == []
    assert event_of(p, refused.json()["incident"])["reason"] == "http10-transfer-encoding"


async def test_http10_without_transfer_encoding_and_chunked_http11_are_served(
        plane: Start, tmp_path: Path) -> None:
    p = await plane(meter_answer, routes=_routes())
    [plain] = await p.raw(get_line(f"/hes/meters/{ORES_METER}",
                                                        version="1.0"))
    assert plain.status == 200
    body = json.dumps({"serial": ORES_METER}).encode()
    chunked = (f"POST /hes/lookups HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    [posted] = await p.raw(chunked)
    assert posted.status == 200
    assert [s.body for s in p.upstream.sent] == [None, body]


# -- target and routing: 404, 405 with Allow, 501 --------------------------------------

HES = {"dso": frozenset({"owner"}), "water": frozenset({"owner"})}


def _routes() -> RouteTable:
    """The catalogue, plus a route naming its resource in the body and a
    second method on the operations path (DELETE: no body allowed)."""
    serial = ResourceRef("meter", "path", "serial")
    same = (RecordCheck("meter", "serial", same_as_request=True),)
    return RouteTable((*ROUTES,
                       Route("hes", "POST", "/hes/lookups", HES, member_of="hes_consortium",
                             resource=ResourceRef("meter", "body", "serial"), records=same),
                       Route("hes", "DELETE", "/hes/meters/{serial}/operations", HES,
                             member_of="hes_consortium", resource=serial, records=same),
                       *(Route("hes", method, "/hes/probes/{serial}", HES,
                               member_of="hes_consortium", resource=serial, records=same)
                         for method in ("HEAD", "OPTIONS"))))


@pytest.mark.parametrize(("method", "path", "status", "slug", "reason", "allow"), [
    ("GET", "/hes/nothing/here", 404, "not-found", "no-route", None),
    ("POST", f"/hes/meters/{ORES_METER}", 405, "method-not-allowed", "method-not-allowed", "GET"),
    ("GET", f"/hes/meters/{ORES_METER}/operations", 405, "method-not-allowed",
     "method-not-allowed", "DELETE, POST"),
    ("TRACE", "/hes/meters", 405, "method-not-allowed", "method-forbidden", "GET, POST"),
    ("PROPFIND", "/hes/meters", 501, "not-implemented", "method-unknown", None),
])
async def test_what_has_no_route_is_refused_with_the_methods_that_have_one(
        plane: Start, method: str, path: str, status: int, slug: str, reason: str,
        allow: str | None) -> None:
    p = await plane(routes=_routes())
    async with p.session.request(method, f"{p.url}{path}") as resp:
        assert resp.status == status
        assert resp.headers.get("Allow") == allow
        problem = await resp.json()
    assert problem["type"] == PROBLEM + slug
    assert p.upstream.sent == []
    assert event_of(p, problem["incident"])["reason"] == reason


# -- body rules ----------------------------------------------------------------------

OPERATIONS = f"/hes/meters/{ORES_METER}/operations"


@pytest.mark.parametrize(("method", "path", "content_type", "body", "status", "reason"), [
    ("GET", f"/hes/meters/{ORES_METER}", None, b"{}", 400, "body-not-allowed"),
    ("DELETE", OPERATIONS, None, b"{}", 400, "body-not-allowed"),
    ("HEAD", f"/hes/probes/{ORES_METER}", None, b"{}", 400, "body-not-allowed"),
    ("OPTIONS", f"/hes/probes/{ORES_METER}", None, b"{}", 400, "body-not-allowed"),
    ("POST", OPERATIONS, "text/plain", b'{"operation": "disconnect"}', 415, "body-not-json"),
    ("POST", OPERATIONS, "application/json", b"[1]", 400, "body-not-object"),
    ("POST", OPERATIONS, "application/json", b'{"operation": ', 400, "body-malformed-json"),
    ("POST", OPERATIONS, "application/json", b'{"a": 1, "a": 2}', 400, "body-duplicate-key"),
    ("POST", OPERATIONS, "application/json", b'{"a": ' * 80 + b"1" + b"}" * 80, 400,
     "body-too-deep"),
    # The route naming its resource in the body reads it before deciding.
    ("POST", "/hes/lookups", "text/plain", b'{"serial": "x"}', 415, "body-not-json"),
])
async def test_a_body_the_gateway_does_not_read_is_refused_and_not_forwarded(
        plane: Start, method: str, path: str, content_type: str | None, body: bytes,
        status: int, reason: str) -> None:
    p = await plane(meter_answer, routes=_routes())
    ops = await p.client("ores", "service", "field-ops")
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with ops.request(method, f"{p.url}{path}", data=body, headers=headers) as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    assert p.upstream.sent == []
    assert event_of(p, incident)["reason"] == reason


async def test_a_body_that_trickles_in_is_refused_at_the_configured_deadline(
        plane: Start, tmp_path: Path) -> None:
    """D1 availability: the body timeout of the configuration, not the
    default; the connection is closed."""
    p = await plane(meter_answer, routes=_routes(), limits=EdgeLimits(body_timeout_s=0.05))
    [answer] = await p.raw(
        b"POST /hes/lookups HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 40\r\n\r\n{"serial": ')
    assert answer.status == 408
    assert p.upstream.sent == []
    assert event_of(p, answer.json()["incident"])["reason"] == "body-timeout"


async def test_the_body_deadline_is_per_read_not_for_the_whole_body(plane: Start) -> None:
    """A body that keeps arriving, each part within the deadline of the one
    before, is read whole though it takes longer than one deadline."""
    p = await plane(meter_answer, routes=_routes(), limits=EdgeLimits(body_timeout_s=0.4))
    body = json.dumps({"serial": ORES_METER}).encode()
    parts = [body[i:i + 5] for i in range(0, len(body), 5)]

    async def steady() -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(0.15)
            yield part

    assert 0.15 * len(parts) > 0.4 * 1.5
    async with p.session.post(f"{p.url}/hes/lookups", data=steady(),
                              headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
    assert [s.body for s in p.upstream.sent] == [body]


async def test_a_body_without_it_is_read_only_after_the_decision(plane: Start) -> None:
    """D1, D6: a tenant that may not act on a meter gets its 403 whatever it
    sent; a DELETE without a body goes on without one."""
    p = await plane(meter_answer, routes=_routes())
    ops = await p.client("ores", "service", "field-ops")
    async with ops.post(f"{p.url}/hes/meters/{FLUVIUS_METER}/operations", data=b"[not json",
                        headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 403
    async with ops.delete(f"{p.url}{OPERATIONS}") as resp:
        assert resp.status == 200
    [sent] = p.upstream.sent
    assert (sent.method, sent.target, sent.body) == ("DELETE", f"/meters/{ORES_METER}/operations",
                                                     None)


@pytest.mark.parametrize(("serial", "status", "reason"), [
    (ORES_METER, 200, "owner"), (FLUVIUS_METER, 403, "no-relation")])
async def test_a_route_naming_its_resource_in_the_body_decides_on_it(
        plane: Start, serial: str, status: int, reason: str) -> None:
    """D1: the resource named in the body is decided like one in the path."""
    p = await plane(meter_answer, routes=_routes())
    body = json.dumps({"serial": serial}).encode()
    async with p.session.post(f"{p.url}/hes/lookups", data=body,
                              headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    assert [s.body for s in p.upstream.sent] == ([body] if status == 200 else [])
    event = event_of(p, incident)
    assert (event["reason"], event["resources"]) == (reason, [serial])


# -- forwarding: what the upstream receives ------------------------------------------------

async def test_the_upstream_receives_the_body_as_sent_and_the_gateways_own_fields(
        plane: Start) -> None:
    """D1, D6, D7: the body byte for byte; the gateway's signed assertion for
    this upstream and principal; the vault's credential for this upstream,
    never the caller's and never shown back; the incident id as
    X-Request-Id; Content-Type application/json."""
    in_use: list[int] = []

    def answer(sent: Sent) -> UpstreamResponse:
        in_use.append(p.data_plane.slots.in_use("hes"))
        return meter_answer(sent)

    vault = {"hes": ("Authorization", "Basic aGVzOnNlY3JldA=="), "itsm": ("X-Api-Key", "itsm")}
    p = await plane(answer, upstream_auth=vault.get)
    assert p.data_plane.in_flight == 0
    ops = await p.client("ores", "service", "field-ops")
    body = b'{ "operation" :  "disconnect" }'
    async with ops.post(f"{p.url}{OPERATIONS}", data=body, headers={
            "Content-Type": "application/json; charset=utf-8", "X-Request-Id": "forged",
            "Authorization": "Bearer the-callers-own"}) as resp:
        assert resp.status == 200
        incident = resp.headers["X-Request-Id"]
        shown = json.dumps(dict(resp.headers)) + await resp.text()
    [sent] = p.upstream.sent
    assert (sent.upstream, sent.method, sent.target, sent.body) == (
        "hes", "POST", f"/meters/{ORES_METER}/operations", body)
    fields = effective(sent)
    # The caller's X-Request-Id and Content-Type are replaced, not handed to
    # the transport beside the gateway's: each name once.
    for name in ("x-request-id", "content-type"):
        assert [n for n in sent.headers if n.lower() == name] == [name.title()]
    assert fields["authorization"] == "Basic aGVzOnNlY3JldA=="
    assert "x-api-key" not in fields
    assert fields["x-request-id"] == incident != "forged"
    assert fields["content-type"] == "application/json"
    key = p.data_plane.signer.keys.current().private_key.public_key()
    claims = jwt.decode(fields["x-gateway-assertion"], key, algorithms=["EdDSA"],
                        audience="hes", issuer=ISSUER)
    assert claims["sub"] == "tenant/ores/service/field-ops"
    assert in_use == [1] and p.data_plane.slots.in_use("hes") == 0
    assert p.data_plane.in_flight == 0
    assert "aGVzOnNlY3JldA" not in shown
    event = event_of(p, incident)
    assert "aGVzOnNlY3JldA" not in json.dumps(event)
    assert (event["reason"], event["resources"]) == ("owner", [ORES_METER])


async def test_a_get_is_forwarded_without_a_body_or_a_content_type(plane: Start) -> None:
    p = await plane(meter_answer)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
    [sent] = p.upstream.sent
    assert sent.body is None and "content-type" not in effective(sent)


# -- decide: D1 with time, the portal (D2, D4), the canary (D1) ----------------------------

async def test_ownership_is_judged_at_the_requests_instant(plane: Start) -> None:
    """D1: a meter ORES owned until yesterday is no longer its to read; a day
    of readings is judged on that day (the query's ``date``)."""
    feed = (Relation("meter", ORES_METER, "ores", "owner", valid_to=NOW - timedelta(days=1)),
            Relation("meter", FLUVIUS_METER, "ores", "owner",
                     valid_from=NOW - timedelta(days=3)))

    def readings(sent: Sent) -> UpstreamResponse:
        return json_answer({"readings": [{"meter": FLUVIUS_METER, "obis": "1-0:1.8.1",
                                          "timestamp": "2026-12-05T12:00:00Z", "value": 1.0}]})

    p = await plane(readings, relations=feed, clock=fixed_clock)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 403
    async with p.session.get(f"{p.url}/hes/meters/{FLUVIUS_METER}/readings",
                             params={"date": "2026-12-05"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["readings"][0]["meter"] == FLUVIUS_METER
    async with p.session.get(f"{p.url}/hes/meters/{FLUVIUS_METER}/readings",
                             params={"date": "2026-12-01"}) as resp:
        assert resp.status == 403  # before ORES owned it
    assert [s.target for s in p.upstream.sent] == [
        f"/meters/{FLUVIUS_METER}/readings?date=2026-12-05"]


EAN = "541448860012075359"
PORTAL_METER = "1SAG1100042062"


def _portal_feed() -> tuple[Relation, ...]:
    return (*FEED, Relation("ean", EAN, "ores", "grid-operator"),
            Relation("occupancy", f"cust-1/{EAN}", "ores", "occupant",
                     valid_from=NOW - timedelta(days=400)),
            Relation(METER_EAN, meter_ean_id(PORTAL_METER, EAN), "ores", ACCESS_POINT,
                     valid_from=NOW - timedelta(days=400)))


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({"X-On-Behalf-Of": "cust-1", "X-Meter-Number": PORTAL_METER}, 200, "occupant"),
    ({"X-On-Behalf-Of": "cust-1", "X-Meter-Number": "1SAG1100042063"}, 403,
     "meter-number-mismatch"),
    ({"X-On-Behalf-Of": "cust-2", "X-Meter-Number": PORTAL_METER}, 403, "no-occupancy"),
    ({"X-Meter-Number": PORTAL_METER}, 400, "on-behalf-of-missing"),
    ({"X-On-Behalf-Of": "cust-1"}, 400, "meter-number-missing"),
])
async def test_the_customer_portal_reads_for_the_customer_it_names_with_the_meter_number(
        plane: Start, headers: dict[str, str], status: int, reason: str) -> None:
    """D2, D4: the portal acts for one customer, proven by the meter number."""
    p = await plane(lambda sent: json_answer({"ean": EAN, "energy": "electricity"}),
                    relations=_portal_feed(), clock=fixed_clock)
    portal = await p.client("ores", "service", "customer-portal")
    async with portal.get(f"{p.url}/clearing/access-points/{EAN}", headers=headers) as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    assert len(p.upstream.sent) == (1 if status == 200 else 0)
    assert event_of(p, incident)["reason"] == reason


@pytest.mark.parametrize(("serial", "status", "reason"), [
    ("1SAG0000000009", 200, "owner"), (ORES_METER, 403, "canary-principal-not-a-canary"),
    ("1SAG0000000008", 403, "canary-principal-not-a-canary"),  # a retired canary
])
async def test_the_canary_principal_reads_canary_resources_only(
        plane: Start, serial: str, status: int, reason: str) -> None:
    """D1: the gateway's isolation prober, never a real record (nor a
    canary retired yesterday)."""
    feed = (*FEED, Relation("meter", "1SAG0000000009", "ores", "owner"),
            Relation("meter", "1SAG0000000009", "ores", "canary"),
            Relation("meter", "1SAG0000000008", "ores", "owner"),
            Relation("meter", "1SAG0000000008", "ores", "canary",
                     valid_to=NOW - timedelta(days=1)))
    p = await plane(meter_answer, relations=feed, clock=fixed_clock)
    canary = await p.client("ores", "service", "canary")
    async with canary.get(f"{p.url}/hes/meters/{serial}") as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    assert [s.target for s in p.upstream.sent] == (
        [f"/meters/{serial}"] if status == 200 else [])
    assert event_of(p, incident)["reason"] == reason


# -- D5: remote operations in airplane mode -------------------------------------------------

@pytest.mark.parametrize(("operation", "until", "status", "reason"), [
    ("disconnect", NOW + timedelta(days=1), 409, "meter-in-airplane-mode"),
    ("prepayment-top-up", NOW + timedelta(days=1), 200, "owner"),
    ("disconnect", NOW - timedelta(hours=1), 200, "owner"),  # airplane mode has ended
])
async def test_no_remote_operation_on_a_meter_in_airplane_mode(
        plane: Start, operation: str, until: datetime, status: int, reason: str) -> None:
    feed = (*FEED, Relation("meter", ORES_METER, "*", "airplane-mode",
                            valid_from=NOW - timedelta(days=10), valid_to=until))
    p = await plane(meter_answer, relations=feed, clock=fixed_clock)
    ops = await p.client("ores", "service", "field-ops")
    body = json.dumps({"operation": operation}).encode()
    async with ops.post(f"{p.url}{OPERATIONS}", data=body,
                        headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
        problem = await resp.json()
    if status == 409:
        assert problem["type"] == PROBLEM + "conflict"
    assert [s.body for s in p.upstream.sent] == ([body] if status == 200 else [])
    assert event_of(p, incident)["reason"] == reason


# -- D8: the consultation register ---------------------------------------------------------

NRN = with_nrn_check("850101123")
OTHER_NRN = with_nrn_check("850101124")


def _approval(id_: str, nrn: str = NRN, approver: str | None = "person/hanna",
              status: str = "approved") -> NrnApproval:
    return NrnApproval(id_, "ores", "person/erik", "hr", nrn, "hr-administration", "HR-2026-17",
                       NOW - timedelta(hours=1), NOW + timedelta(hours=1), status, approver,
                       NOW - timedelta(minutes=30))


@dataclass
class Register:
    approvals: dict[str, NrnApproval]
    entries: list[Consultation]

    async def start(self, plane: Start, **overrides: Any) -> Plane:
        feed = (*FEED, Relation("person", NRN, "ores", "owner"),
                Relation("person", OTHER_NRN, "ores", "owner"))
        kwargs: dict[str, Any] = {"consultations": self.entries.append,
                                  "approvals": self.approvals.get, **overrides}
        return await plane(lambda sent: json_answer({"nrn": sent.target.rsplit("/", 1)[-1]}),
                           relations=feed, clock=fixed_clock, **kwargs)


def _register() -> Register:
    return Register({"a-1": _approval("a-1"), "a-2": _approval("a-2", approver=None),
                     "a-3": _approval("a-3", status="pending")}, [])


async def test_a_national_register_lookup_is_registered_before_it_is_made(
        plane: Start) -> None:
    """D8: the register holds who looked whom up, when, on which approval,
    given by whom, for which purpose, under the incident of the request."""
    register = _register()
    p = await register.start(plane)
    erik = await p.client("ores", "person", "erik")
    incidents = []
    for approval in ("a-1", "a-2"):
        async with erik.get(f"{p.url}/itsm/persons/{NRN}",
                            headers={"X-Approval": approval}) as resp:
            assert resp.status == 200
            incidents.append(resp.headers["X-Request-Id"])
    assert register.entries == [
        Consultation(incidents[0], NOW, "ores", "person/erik", "/itsm/persons/{nrn}", NRN,
                     "hr-administration", "HR-2026-17", "a-1", "person/hanna"),
        Consultation(incidents[1], NOW, "ores", "person/erik", "/itsm/persons/{nrn}", NRN,
                     "hr-administration", "HR-2026-17", "a-2", ""),
    ]
    assert len(p.upstream.sent) == 2


@pytest.mark.parametrize(("who", "approval", "nrn", "status", "reason"), [
    ("erik", None, NRN, 403, "approval-missing"),
    ("erik", "a-9", NRN, 403, "approval-missing"),
    ("erik", "a-1", OTHER_NRN, 403, "approval-for-another-person"),
    ("erik", "a-3", NRN, 403, "approval-not-approved"),
    ("hanna", "a-1", NRN, 403, "approval-of-another"),
])
async def test_a_lookup_without_its_own_approval_is_refused_and_not_registered(
        plane: Start, who: str, approval: str | None, nrn: str, status: int,
        reason: str) -> None:
    register = _register()
    p = await register.start(plane)
    person = await p.client("ores", "person", who)
    headers = {} if approval is None else {"X-Approval": approval}
    async with person.get(f"{p.url}/itsm/persons/{nrn}", headers=headers) as resp:
        assert resp.status == status
        incident = resp.headers["X-Request-Id"]
    assert register.entries == [] and p.upstream.sent == []
    assert event_of(p, incident)["reason"] == reason


@pytest.mark.parametrize("missing", ["consultations", "approvals"])
async def test_no_register_no_consultation(plane: Start, missing: str) -> None:
    """D8: without the register (or the approvals) the lookup is a 503."""
    register = _register()
    p = await register.start(plane, **{missing: None})
    erik = await p.client("ores", "person", "erik")
    async with erik.get(f"{p.url}/itsm/persons/{NRN}", headers={"X-Approval": "a-1"}) as resp:
        assert resp.status == 503
        incident = resp.headers["X-Request-Id"]
    assert register.entries == [] and p.upstream.sent == []
    assert event_of(p, incident)["reason"] == "consultation-register-unavailable"


# -- D1 availability: quotas and the upstream's slots -----------------------------------------

async def test_a_tenant_over_its_quota_is_told_when_to_retry(plane: Start) -> None:
    p = await plane(meter_answer)
    p.data_plane.quotas.replace({"ores": Quota(concurrency=0)})  # its limit is reached
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
    assert problem["type"] == PROBLEM + "too-many-requests"
    assert p.upstream.sent == []
    fluvius = await p.client("fluvius", "service", "api")
    async with fluvius.get(f"{p.url}/hes/meters/{FLUVIUS_METER}") as resp:
        assert resp.status == 200  # another tenant is not held back
    assert event_of(p, problem["incident"])["reason"] == "rate-limited"


# -- the branches off the proxy: push intakes, notifications, lockbox ------------------------

class FakePush:
    """What the pipeline's branches call of the push service (gateway.push)."""

    def __init__(self) -> None:
        self.cmh: list[tuple[str, bytes, dict[str, str], frozenset[str]]] = []

    def authorize(self, caller: Any, intake: str) -> None:
        if caller.tenant_id != {"cmh": "cmh-portal", "hes": "hes-operator"}[intake]:
            raise RequestRefused(403, "push-intake-not-yours")

    def intake_cmh(self, caller: Any, raw: bytes, kinds: dict[str, str],
                   coordinators: frozenset[str]) -> tuple[int, Any, str]:
        self.cmh.append((caller.tenant_id, raw, kinds, coordinators))
        return 202, {"accepted": 1}, "0190000000aa-00000000000000aa"

    def notifications(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        return [{"tenant": tenant, "kind": "breach", "limit": limit}]


class FakeLockbox:
    def entries_of(self, tenant: str) -> list[Any]:
        return []


async def test_the_push_intake_takes_its_own_paths_only(plane: Start) -> None:
    """D1: pushed data goes to the intake (its own system's only), never
    proxied; every other path is proxied as before."""
    push = FakePush()
    p = await plane(meter_answer, push=push, push_max_body_bytes=64)
    portal = await p.client("cmh-portal", "service", "pusher")
    body = b'{"requests": []}'
    async with portal.post(f"{p.url}/push/cmh/requests", data=body,
                           headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 202
        assert await resp.json() == {"accepted": 1}
    async with portal.post(f"{p.url}/push/cmh/requests", data=b'{"x": "' + b"y" * 64 + b'"}',
                           headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413  # the intake's own body limit
    async with p.session.post(f"{p.url}/push/hes/batches", data=body,
                              headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 403  # ORES is not the HES
        refused = (await resp.json())["incident"]
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
    [(tenant, raw, kinds, coordinators)] = push.cmh
    assert (tenant, raw, kinds["ores"], kinds["proximus"]) == (
        "cmh-portal", body, "dso", "telecom")
    assert "ores" in coordinators and "fluvius" not in coordinators
    assert len(p.upstream.sent) == 1
    events = {e["incident"]: e for e in p.requests()}
    accepted = events["0190000000aa-00000000000000aa"]
    assert (accepted["tenant"], accepted["route"], accepted["reason"], accepted["status"]) == (
        "cmh-portal", "/push/cmh/requests", "push-accepted", 202)
    assert (events[refused]["route"], events[refused]["reason"]) == (
        "/push/hes/batches", "push-intake-not-yours")


async def test_without_a_push_service_the_intake_paths_are_no_routes(plane: Start) -> None:
    p = await plane()
    async with p.session.post(f"{p.url}/push/hes/batches", data=b"{}",
                              headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 404
        incident = (await resp.json())["incident"]
    assert event_of(p, incident)["reason"] == "no-route"


@pytest.mark.parametrize(("path", "kwargs", "doc", "reason"), [
    ("/notifications?limit=5", {"push": FakePush()},
     {"tenant": "ores", "notifications": [{"tenant": "ores", "kind": "breach", "limit": 5}]},
     "notifications-read"),
    ("/lockbox", {"lockbox": FakeLockbox()}, {"tenant": "ores", "cases": []}, "lockbox-read"),
])
async def test_a_tenant_reads_its_own_notifications_and_lockbox(
        plane: Start, path: str, kwargs: dict[str, Any], doc: Any, reason: str) -> None:
    """D1, D7, D12: the caller's own tenant's, never proxied; audited."""
    p = await plane(**kwargs)
    async with p.session.get(f"{p.url}{path}") as resp:
        assert resp.status == 200
        assert await resp.json() == doc
        incident = resp.headers["X-Request-Id"]
    assert p.upstream.sent == []
    event = event_of(p, incident)
    assert (event["tenant"], event["reason"], event["status"]) == ("ores", reason, 200)


@pytest.mark.parametrize(("path", "reason"), [
    ("/notifications", "notifications-unavailable"), ("/lockbox", "lockbox-unavailable")])
async def test_without_their_service_notifications_and_lockbox_are_unavailable(
        plane: Start, path: str, reason: str) -> None:
    p = await plane()
    async with p.session.get(f"{p.url}{path}") as resp:
        assert resp.status == 503
        incident = resp.headers["X-Request-Id"]
    assert event_of(p, incident)["reason"] == reason


# -- what the HTTP layer could not parse, a header deadline ------------------------------------

@pytest.mark.parametrize(("who", "revoke", "tenant"), [
    ("api", False, "ores"),  # a known caller
    ("api", True, "ores"),  # revoked: refused, but who it is is audited
    ("nobody", False, "unknown"),  # not a declared principal
])
async def test_an_unparsable_request_is_refused_and_audited_with_its_caller(
        plane: Start, tmp_path: Path, who: str, revoke: bool, tenant: str) -> None:
    p = await plane()
    await p.client("ores", "service", who)
    if revoke:
        p.revoked.add(p.client_serial)
    stem = "client" if who == "api" else f"ores-service-{who}"
    [answer] = await p.raw(b"GET /hes/meters HTTP/1.1\r\nHost: a\r\n"
                                  b"Host: b\r\n\r\n", stem=stem)
    assert answer.status == 400
    incident = answer.json()["incident"]
    event = event_of(p, incident)
    assert (event["tenant"], event["reason"], event["status"]) == (
        tenant, "http-parse-error", 400)
    assert event["cert_serial"] == (p.client_serial if who == "api" else None)


async def test_a_header_deadline_missed_is_counted_as_an_unknown_callers_denial(
        plane: Start) -> None:
    p = await plane()
    p.data_plane.header_timed_out()
    assert p.sample("gateway_denied_total", tenant="unknown", upstream="none",
                    reason="header-timeout") == 1


# -- the trace's wiring: SOC, usage, the access line -------------------------------------------

@pytest.mark.parametrize("access", [True, False])
async def test_the_trace_feeds_the_soc_the_usage_ledger_and_the_access_log(
        plane: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture, access: bool) -> None:
    """D10, D12: a revoked certificate is a SOC event; usage is kept per
    day; the access line only where [log] access asks for it."""
    caplog.set_level("INFO", logger="gateway.access")
    ledger = UsageLedger(tmp_path / "usage.db", clock=fixed_clock)
    overrides: dict[str, Any] = {"access_log": True} if access else {}
    p = await plane(soc=SecurityEvents(file=tmp_path / "soc.jsonl"), usage=ledger,
                    clock=fixed_clock, **overrides)
    p.revoked.add(p.client_serial)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 403
        incident = resp.headers["X-Request-Id"]
    [row] = ledger.query(period="day")
    ledger.close()
    assert (row.tenant, row.requests, row.denied) == ("ores", 1, 1)
    [soc] = [json.loads(line) for line in (tmp_path / "soc.jsonl").read_text().splitlines()]
    assert (soc["kind"], soc["incident"], soc["reason"]) == (
        "certificate-refused", incident, "certificate-revoked")
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert [getattr(r, "incident", None) for r in lines] == ([incident] if access else [])


# -- the response check's wiring: breach notices (D12), pseudonyms (D9) ------------------------

class BreachPush(FakePush):
    def __init__(self) -> None:
        super().__init__()
        self.told: list[tuple[str, str | None]] = []

    def notify_breach(self, notices: Any, contact: Callable[[str], str | None]) -> int:
        self.told += [(n.owner, contact(n.owner)) for n in notices]
        return len(self.told)


async def test_a_withheld_answer_tells_the_owner_at_its_security_contact(
        plane: Start) -> None:
    """D1, D12: Fluvius's record in an answer to ORES is withheld, and
    Fluvius is told, at the contact of its tenant file."""
    push = BreachPush()
    p = await plane(lambda sent: json_answer({"serial": FLUVIUS_METER}), push=push)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 502
    assert ("fluvius", "mailto:security@fluvius.example") in push.told
    assert all(contact is not None for _, contact in push.told)


async def test_an_owner_no_longer_declared_is_told_without_a_contact(plane: Start) -> None:
    """A record the feed still gives to a tenant whose file is gone: the
    breach is queued for it all the same, with no contact to name."""
    push = BreachPush()
    feed = (*FEED, Relation("meter", "1SAG0000000007", "gone-dso", "owner"))
    p = await plane(lambda sent: json_answer({"serial": "1SAG0000000007"}), push=push,
                    relations=feed)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 502
    assert push.told == [("gone-dso", None)]


async def test_an_it_provider_reads_keyed_pseudonyms_never_a_national_number(
        plane: Start) -> None:
    """D9: data given to the IT provider is pseudonymised with its own key."""
    feed = (*FEED, Relation("ticket", "T-1", "ores", "owner"),
            Relation("ticket", "T-1", "engie-it", "assignee"))
    p = await plane(lambda sent: json_answer({"id": "T-1", "summary": f"caller {NRN}"}),
                    relations=feed, clock=fixed_clock,
                    pseudonyms=lambda tenant: Pseudonymiser(b"k" * 32 + tenant.encode()))
    engie = await p.client("engie-it", "service", "api")
    async with engie.get(f"{p.url}/itsm/tickets/T-1") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert NRN not in text and "ps_" in text


# -- header hygiene, the upstream's queue --------------------------------------------------

async def test_identity_headers_are_dropped_and_counted_and_ambiguous_names_refused(
        plane: Start) -> None:
    """D1, D6: what a caller claims about itself never reaches the upstream;
    X_Tenant would pass as X-Tenant behind a CGI-style upstream: refused."""
    p = await plane(meter_answer)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}", headers={
            "X-Tenant": "fluvius", "X-Forwarded-For": "10.0.0.1"}) as resp:
        assert resp.status == 200
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}",
                             headers={"X_Tenant": "fluvius"}) as resp:
        assert resp.status == 400
        incident = resp.headers["X-Request-Id"]
    assert p.sample("gateway_identity_headers_dropped_total", tenant="ores") == 2
    [sent] = p.upstream.sent
    assert "x-tenant" not in effective(sent) and "x-forwarded-for" not in effective(sent)
    assert event_of(p, incident)["reason"] == "header-name-underscore"


async def test_a_request_waiting_too_long_for_the_upstreams_pool_is_a_503(
        plane: Start) -> None:
    """D1 availability: the pool's one slot is another tenant's; ORES waits
    its queue timeout, is refused with Retry-After, and the queue depth is
    published for the upstream."""
    pools = {name: Upstream(name, "https://127.0.0.1:9", pool_size=1, queue_timeout_s=0.05)
             for name in ("hes", "clearing", "cmh", "itsm")}
    upstream = FakeUpstream(meter_answer, upstreams=pools)
    p = await plane(upstreams=upstream)
    assert p.data_plane.slots.try_acquire("hes", "fluvius")
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        incident = resp.headers["X-Request-Id"]
    assert upstream.sent == []
    assert p.sample("gateway_upstream_queue_depth", upstream="hes") == 0
    assert p.data_plane.slots.in_use("hes") == 1  # the other tenant's, still
    assert event_of(p, incident)["reason"] == "upstream-busy"


async def test_a_queued_request_gets_the_slot_another_tenant_gives_back(
        plane: Start) -> None:
    """D1 availability: queued fairly under its own tenant, served when the
    slot is handed to it, and the slot given back afterwards."""
    pools = {name: Upstream(name, "https://127.0.0.1:9", pool_size=1, queue_timeout_s=30)
             for name in ("hes", "clearing", "cmh", "itsm")}
    upstream = FakeUpstream(meter_answer, upstreams=pools)
    p = await plane(upstreams=upstream)
    slots = p.data_plane.slots
    assert slots.try_acquire("hes", "fluvius")
    queued = asyncio.Event()
    publish = slots._on_depth  # the data plane's: the queue-depth gauge

    def on_depth(name: str, depth: int) -> None:
        publish(name, depth)
        if depth:
            queued.set()

    slots._on_depth = on_depth

    async def get() -> int:
        async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
            return resp.status

    task = asyncio.ensure_future(get())
    await queued.wait()
    assert p.sample("gateway_upstream_queue_depth", upstream="hes") == 1
    slots.release("hes", "fluvius")
    assert await task == 200
    assert len(upstream.sent) == 1
    assert slots.in_use("hes") == 0 and slots.waiting("hes") == 0
    assert p.sample("gateway_upstream_queue_depth", upstream="hes") == 0


async def test_a_refusals_own_detail_reaches_the_caller(plane: Start) -> None:
    """A refusal that says what to send instead (the lockbox's body) keeps
    its detail in the problem document."""
    p = await plane(lockbox=FakeLockbox())
    async with p.session.post(f"{p.url}/lockbox/case-1/approve", json={"why": "x"}) as resp:
        assert resp.status == 400
        problem = await resp.json()
    assert problem["detail"] == 'the body is {"reason": "..."}'
    assert event_of(p, problem["incident"])["reason"] == "field-invalid"
