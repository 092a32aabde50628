"""The *check response* stage on the fast harness
(gateway/dataplane/_responsecheck.py): what of an upstream's answer reaches
the caller, and what happens when it may not.

- the upstream's status: a 5xx is a 502, a few 4xx are relayed, anything else
  that is not a 2xx JSON answer is a 502; the upstream's own body never;
- the body parsed with one value per key and a nesting limit;
- the routing check (D1): an answer holding another tenant's record is
  withheld, counted, and its owner told through the push outbox (D12);
- a Connect My Home status update goes to the coordinating DSO only;
- the classification label and who may receive it (D11);
- an IT provider's keyed pseudonyms, failing closed (D9);
- the upstream's bytes relayed unchanged only when they are exactly what was
  checked.

Everything but the upstream is real: the push service on a SQLite outbox
(not started: nothing is delivered, the outbox is read directly), the SOC's
file sink, the tenants of the repository."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import ChainedAuditLog, SecurityEvents
from gateway.audit._format import load_or_create_audit_key
from gateway.core.catalog import ROUTES
from gateway.core.classification import ClassificationPolicy
from gateway.core.jsonlimits import MAX_DEPTH
from gateway.core.model import Relation
from gateway.core.pseudonym import Pseudonymiser
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import RouteTable
from gateway.logs import fields
from gateway.metrics import GatewayMetrics
from gateway.push import Outbox, PushService, open_outbox
from gateway.upstream import UpstreamResponse
from tests.dataplane.fakes import Sent, json_answer
from tests.dataplane.harness import FLUVIUS_METER, ORES_METER, Plane, Start

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=365)  # every relation below is bounded: checked at an instant
EAN = "541448860012075359"  # an ORES access point (DOMAIN.md's example)
MASTER = bytes(range(32))  # the pseudonyms' master secret of these tests
OUTBOX_KEY = os.urandom(32)
JSON = "application/json"

FEED = (
    Relation("meter", ORES_METER, "ores", "owner", SINCE),
    Relation("meter", FLUVIUS_METER, "fluvius", "owner", SINCE),
    Relation("ean", EAN, "ores", "grid-operator", SINCE),
    Relation("ean", EAN, "lumen-energie", "supplier", SINCE),
    Relation("cmh-request", "CMH1", "ores", "coordinator", SINCE),
    Relation("cmh-request", "CMH1", "ores", "participant", SINCE),
    Relation("cmh-request", "CMH1", "proximus", "participant", SINCE),
    Relation("cmh-connection", "CMH1-1", "ores", "operator", SINCE),
    Relation("cmh-connection", "CMH1-2", "proximus", "operator", SINCE),
    Relation("ticket", "INC1", "ores", "owner", SINCE),
    Relation("ticket", "INC1", "engie-it", "assignee", SINCE),
    Relation("asset", "A1", "ores", "owner", SINCE),
    Relation("asset", "A1", "engie-it", "maintainer", SINCE),
)


def answer(body: bytes, status: int = 200, content_type: str = JSON,
           headers: tuple[tuple[str, str], ...] = ()) -> Callable[[Sent], UpstreamResponse]:
    """An upstream that answers these exact bytes."""
    def respond(sent: Sent) -> UpstreamResponse:
        return UpstreamResponse(status, content_type,
                                (("Content-Type", content_type), *headers), body)
    return respond


def labelled(doc: Any, label: str) -> Callable[[Sent], UpstreamResponse]:
    """An upstream that labels its JSON answer (D11)."""
    return answer(json.dumps(doc).encode(), headers=(("X-Classification", label),))


def event_of(p: Plane, incident: str) -> dict[str, Any]:
    [event] = [e for e in p.requests() if e["incident"] == incident]
    return event


async def refused(p: Plane, path: str, status: int, session: Any = None,
                  method: str = "GET", body: Any = None) -> dict[str, Any]:
    """The problem document of a refused request, after checking its status;
    the audit event's reason is under ``"reason"`` (reads the audit log)."""
    s = session or p.session
    async with s.request(method, f"{p.url}{path}", json=body) as resp:
        assert resp.status == status
        assert resp.content_type == "application/problem+json"
        problem: dict[str, Any] = await resp.json()
    assert problem["status"] == status
    return problem


def logged(caplog: pytest.LogCaptureFixture, incident: str) -> list[tuple[int, dict[str, Any]]]:
    """The data plane's log records about one request: level and fields (the
    operator's log: a record about a request carries its incident id, never
    a resource id; gateway/logs.py)."""
    return [(r.levelno, fields(r)) for r in caplog.records
            if r.name == "gateway.dataplane" and fields(r).get("incident") == incident]


class Outboxed:
    """A real push service on a SQLite outbox, not started: what it queued
    is read from the outbox itself."""

    def __init__(self, tmp: Path) -> None:
        self.box: Outbox = open_outbox(None, tmp / "outbox.db", OUTBOX_KEY, owner="replica-a",
                                       clock=lambda: NOW)
        key, kid = load_or_create_audit_key(tmp / "push-audit-key")
        self.audit = ChainedAuditLog(tmp / "push-audit.log", key, kid)
        # Receivers of these tenants (never contacted: delivery is not started).
        self.service = PushService(
            outbox=self.box, relations=lambda: RelationIndex(list(FEED)),
            endpoints={t: f"https://127.0.0.1:9/{t}" for t in ("ores", "fluvius", "proximus")},
            client_tls=ssl.create_default_context(), metrics=GatewayMetrics(),
            audit=self.audit, clock=lambda: NOW)
        self.closed = False

    def parts(self, kind: str) -> list[tuple[str, Any]]:
        """(tenant, payload) of each part of ``kind`` in the outbox."""
        return [(part.tenant, json.loads(self.box.payload_bytes(part)))
                for part in self.box.parts() if part.kind == kind]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.audit.close()
            self.box.close()


@pytest.fixture()
def outboxed(tmp_path: Path) -> Iterator[Outboxed]:
    made = Outboxed(tmp_path)
    yield made
    made.close()


Begin = Callable[..., Awaitable[Plane]]


@pytest.fixture()
async def begin(plane: Start) -> AsyncIterator[Begin]:
    """``plane`` with this file's feed and a frozen clock."""
    async def start(answer: Any = None, **overrides: Any) -> Plane:
        overrides.setdefault("relations", FEED)
        overrides.setdefault("clock", lambda: NOW)
        if answer is None:
            return await plane(**overrides)
        return await plane(answer, **overrides)
    yield start


# -- the upstream's status ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
async def test_an_upstream_5xx_is_a_502_and_its_error_body_is_never_passed_on(
        begin: Begin, status: int) -> None:
    p = await begin(answer(b'{"error": "stack trace of the shared system"}', status))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert "stack trace" not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == "upstream-5xx"


@pytest.mark.parametrize(("upstream", "relayed"), [
    (400, 400), (404, 404), (409, 409), (422, 422),  # the caller's to act on: relayed
    (401, 502), (403, 502), (405, 502), (410, 502), (423, 502), (499, 502),
])
async def test_an_upstream_4xx_is_relayed_only_where_the_caller_can_act_on_it(
        begin: Begin, upstream: int, relayed: int) -> None:
    # The upstream's own error body is not checked, so it is never passed on.
    p = await begin(answer(b'{"detail": "meter 1SAG0000000002 of fluvius"}', upstream))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", relayed)
    assert FLUVIUS_METER not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == f"upstream-{upstream}"


@pytest.mark.parametrize(("status", "content_type"), [
    (300, JSON),  # a redirect is not an answer
    (199, JSON),
    (200, "text/plain"),  # not JSON: not checked, so not sent
    (200, "application/problem+json"),
])
async def test_an_answer_that_is_not_a_2xx_json_one_is_a_502(
        begin: Begin, status: int, content_type: str) -> None:
    body = json.dumps({"serial": ORES_METER, "utility": "electricity"}).encode()
    if content_type == "text/plain":
        body = b"serial " + ORES_METER.encode()
    p = await begin(answer(body, status, content_type))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert event_of(p, problem["incident"])["reason"] == "upstream-unexpected-answer"


# -- the body -----------------------------------------------------------------------------


async def test_an_answer_with_a_key_twice_is_withheld_as_an_isolation_violation(
        begin: Begin, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """D1: the check would read one value, a client keeping the first the
    other (another tenant's meter): withheld like a misroute, counted, and
    the SOC told (D12)."""
    raw = f'{{"serial": "{FLUVIUS_METER}", "serial": "{ORES_METER}"}}'.encode()
    soc = tmp_path / "soc.jsonl"
    p = await begin(answer(raw), soc=SecurityEvents(file=soc))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert problem["type"].endswith(":isolation-violation")
    assert FLUVIUS_METER not in json.dumps(problem)
    assert p.sample("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                    direction="response") == 1
    assert event_of(p, problem["incident"])["reason"] == "response-duplicate-key"
    [alert] = [json.loads(line) for line in soc.read_text().splitlines()]
    assert (alert["kind"], alert["incident"]) == ("isolation-violation", problem["incident"])
    assert logged(caplog, problem["incident"]) == [(logging.WARNING, {
        "incident": problem["incident"], "tenant": "ores", "route": "/hes/meters/{serial}",
        "reason": "response-duplicate-key"})]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "upstream-json-too-deep"),
    (b'{"serial": "' + ORES_METER.encode() + b'"', "upstream-malformed-json"),
    (b'{"serial": "\xff\xfe"}', "upstream-malformed-json"),  # not UTF-8
])
async def test_an_answer_that_cannot_be_parsed_is_a_502_and_no_isolation_violation(
        begin: Begin, raw: bytes, reason: str) -> None:
    p = await begin(answer(raw))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert problem["type"].endswith(":upstream-error")
    assert p.sample("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                    direction="response") in (None, 0)
    assert event_of(p, problem["incident"])["reason"] == reason


# -- the routing check (D1) and the owners told (D12) ------------------------------------


def mixed_meters(sent: Sent) -> UpstreamResponse:
    """The HES misroutes: ORES's list holds one of Fluvius's meters."""
    return json_answer({"meters": [{"serial": ORES_METER, "utility": "electricity"},
                                   {"serial": FLUVIUS_METER, "utility": "electricity"}]})


async def test_a_foreign_record_withholds_the_answer_and_its_owner_is_told(
        begin: Begin, outboxed: Outboxed, caplog: pytest.LogCaptureFixture) -> None:
    """D1: one record of Fluvius's in ORES's answer withholds the whole
    answer; it is counted, and Fluvius (the feed's owner, not what the answer
    says) is told of it through the push outbox, never the record itself
    (D10, D12); ORES is told nothing."""
    p = await begin(mixed_meters, push=outboxed.service)
    problem = await refused(p, "/hes/meters", 502)
    assert problem["type"].endswith(":isolation-violation")
    assert FLUVIUS_METER not in json.dumps(problem)
    assert p.sample("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                    direction="response") == 1
    event = event_of(p, problem["incident"])
    assert (event["reason"], event["resources"]) == ("foreign-record", [FLUVIUS_METER])
    [note] = outboxed.service.notifications("fluvius")
    assert note == {
        "type": "breach-notification", "incident": problem["incident"],
        "time": NOW.isoformat(), "owner": "fluvius", "shared_system": "hes",
        "route": "/hes/meters", "records": 1, "requested_by": "ores",
        "reason": "foreign-record", "outcome": "withheld",
        "security_contact": "mailto:security@fluvius.example"}
    assert outboxed.service.notifications("ores") == []
    # The part for Fluvius's receiver: the same document, nothing of the record.
    assert outboxed.parts("breach-notification") == [("fluvius", note)]
    assert logged(caplog, problem["incident"]) == [(logging.WARNING, {
        "incident": problem["incident"], "tenant": "ores", "route": "/hes/meters",
        "reason": "foreign-record"})]


async def test_a_foreign_record_nobody_owns_is_withheld_and_nobody_is_told(
        begin: Begin, outboxed: Outboxed, caplog: pytest.LogCaptureFixture) -> None:
    """The feed names no owner of the stray meter: the answer is withheld and
    counted all the same; the requester, whatever the answer claims, is
    never told of it (D1)."""
    def stray(sent: Sent) -> UpstreamResponse:
        return json_answer({"meters": [{"serial": ORES_METER, "owner": "ores"},
                                       {"serial": "1SAG0000000099", "owner": "ores"}]})

    p = await begin(stray, push=outboxed.service)
    problem = await refused(p, "/hes/meters", 502)
    assert "1SAG0000000099" not in json.dumps(problem)
    assert p.sample("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                    direction="response") == 1
    assert event_of(p, problem["incident"])["reason"] == "foreign-record"
    assert outboxed.box.parts() == []
    assert outboxed.service.notifications("ores") == []
    # The operator hears of a record without an owner: how many, never which.
    assert logged(caplog, problem["incident"])[1:] == [
        (logging.WARNING, {"incident": problem["incident"], "records": 1})]


async def test_a_reason_that_is_no_isolation_violation_is_neither_counted_nor_notified(
        begin: Begin, outboxed: Outboxed) -> None:
    # A record without its id cannot be checked: withheld, but it names no
    # other tenant's record.
    p = await begin(lambda sent: json_answer({"meters": [{"utility": "water"}]}),
                    push=outboxed.service)
    problem = await refused(p, "/hes/meters", 502)
    assert problem["type"].endswith(":upstream-error")
    assert p.sample("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                    direction="response") in (None, 0)
    assert event_of(p, problem["incident"])["reason"] == "response-malformed"
    assert outboxed.box.parts() == []


@pytest.mark.parametrize("outbox", ["away", "none"])
async def test_the_answer_is_withheld_even_when_the_owners_cannot_be_told(
        begin: Begin, outboxed: Outboxed, caplog: pytest.LogCaptureFixture,
        outbox: str) -> None:
    """The outbox away, or none configured: the notification is lost (the SOC
    has the incident, the operator's log says which), the answer is withheld
    all the same, with its own reason."""
    outboxed.close()
    push = outboxed.service if outbox == "away" else None
    p = await begin(mixed_meters, push=push)
    problem = await refused(p, "/hes/meters", 502)
    assert FLUVIUS_METER not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == "foreign-record"
    assert logged(caplog, problem["incident"])[1:] == [
        (logging.ERROR, {"incident": problem["incident"]})]


# -- Connect My Home: a status update flows to the coordinating DSO ---------------------


def echo_status(sent: Sent) -> UpstreamResponse:
    connection = sent.target.split("/")[-2]
    return json_answer({"id": connection, **json.loads(sent.body or b"{}")})


async def test_a_status_update_reaches_the_coordinator_only(
        begin: Begin, outboxed: Outboxed) -> None:
    p = await begin(echo_status, push=outboxed.service)
    proximus = await p.client("proximus", "service", "api")
    path = "/cmh/requests/CMH1/connections/CMH1-2/status"
    async with proximus.post(f"{p.url}{path}", json={"status": "planned"}) as resp:
        assert resp.status == 200
    assert outboxed.parts("cmh-status") == [
        ("ores", [{"request": "CMH1", "by": "proximus",
                   "connection": {"id": "CMH1-2", "status": "planned"}}])]
    # The coordinator's own update: it has it already.
    path = "/cmh/requests/CMH1/connections/CMH1-1/status"
    async with p.session.post(f"{p.url}{path}", json={"status": "done"}) as resp:
        assert resp.status == 200
    assert len(outboxed.parts("cmh-status")) == 1


async def test_reading_a_request_notifies_nobody(begin: Begin, outboxed: Outboxed) -> None:
    request = {"id": "CMH1", "coordinator": "ores", "status": "open",
               "connections": [{"id": "CMH1-2", "operator": "proximus", "status": "new"}]}
    p = await begin(lambda sent: json_answer(request), push=outboxed.service)
    proximus = await p.client("proximus", "service", "api")
    async with proximus.get(f"{p.url}/cmh/requests/CMH1") as resp:
        assert resp.status == 200
        assert await resp.json() == request
    assert outboxed.box.parts() == []


# -- what a served answer is --------------------------------------------------------------


async def test_an_unchanged_answer_is_the_upstreams_bytes_with_the_gateways_headers(
        begin: Begin) -> None:
    raw = b'{ "utility" : "electricity",\n  "serial" : "' + ORES_METER.encode() + b'" }'
    p = await begin(answer(raw, 201, headers=(
        ("ETag", '"v7"'), ("Server", "hes/4.2"), ("Set-Cookie", "hes-session=abc"),
        ("X-Request-Id", "upstream-chosen"))))
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 201
        assert await resp.read() == raw  # exactly what was checked: sent unchanged
        headers = resp.headers
    assert headers["Server"] == "gateway"
    assert headers["ETag"] == '"v7"'
    assert "Set-Cookie" not in headers
    assert headers.getall("X-Classification") == ["C2"]  # the route's default (D11)
    [event] = p.requests()
    assert headers.getall("X-Request-Id") == [event["incident"]]
    assert (event["status"], event["classification"]) == (201, "C2")
    assert p.sample("gateway_classified_responses_total", label="C2") == 1


async def test_what_a_field_rule_removed_is_not_in_the_bytes_sent(begin: Begin) -> None:
    """D3: a supplier does not learn that a drop is under way on its access
    point: the answer is the checked copy, not the upstream's bytes."""
    record = {"ean": EAN, "energy": "electricity", "grid_operator": "ores",
              "restricted": {"drop_in_progress": True, "initiator": "mosa-energie"}}
    p = await begin(lambda sent: json_answer(record))
    lumen = await p.client("lumen-energie", "service", "api")
    async with lumen.get(f"{p.url}/clearing/access-points/{EAN}") as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert json.loads(raw) == {"ean": EAN, "energy": "electricity", "grid_operator": "ores"}
    assert b"drop_in_progress" not in raw


# -- classification (D11) -----------------------------------------------------------------


async def test_the_upstreams_label_is_the_answers(begin: Begin) -> None:
    p = await begin(labelled({"serial": ORES_METER}, " c1"))
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
        assert resp.headers.getall("X-Classification") == ["C1"]
    assert p.sample("gateway_classified_responses_total", label="C1") == 1
    assert p.requests()[0]["classification"] == "C1"


async def test_a_label_that_is_not_one_of_the_four_withholds_the_answer(begin: Begin) -> None:
    p = await begin(labelled({"serial": ORES_METER}, "C5"))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert ORES_METER not in json.dumps(problem)  # fail closed, never guess
    assert event_of(p, problem["incident"])["reason"] == "classification-invalid"


async def test_the_label_is_read_whatever_the_case_of_its_field_name(begin: Begin) -> None:
    """D11, RFC 9110 §5.1: ``x-classification: C4`` labels the answer C4; read
    as no label, the route's default would let it reach a principal C4 does
    not name."""
    ticket = {"id": "INC1", "summary": "firewall change"}
    p = await begin(answer(json.dumps(ticket).encode(), headers=(("x-classification", "C4"),)))
    session = await p.client("ores", "service", "it-desk")
    problem = await refused(p, "/itsm/tickets/INC1", 403, session=session)
    assert "firewall change" not in json.dumps(problem)
    event = event_of(p, problem["incident"])
    assert (event["reason"], event["classification"]) == ("classification-c4-not-named", "C4")


@pytest.mark.parametrize("labels", [("C4", "C1"), ("C1", "C4"), ("C2", "C2")])
async def test_an_answer_with_two_labels_is_withheld(begin: Begin,
                                                      labels: tuple[str, str]) -> None:
    """D11: two X-Classification fields (in any case), even equal ones: the
    gateway does not pick one, it fails closed."""
    ticket = {"id": "INC1", "summary": "firewall change"}
    p = await begin(answer(json.dumps(ticket).encode(), headers=(
        ("X-Classification", labels[0]), ("x-CLASSIFICATION", labels[1]))))
    session = await p.client("ores", "service", "ciso-desk")  # named for C4: C1..C4 all pass
    problem = await refused(p, "/itsm/tickets/INC1", 502, session=session)
    assert "firewall change" not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == "classification-invalid"


@pytest.mark.parametrize(("principal", "label", "status", "reason"), [
    ("it-desk", "C3", 200, "owner"),  # ORES's IT desk team
    ("api", "C3", 403, "classification-c3-not-in-team"),
    ("ciso-desk", "C4", 200, "owner"),  # named for C4
    ("it-desk", "C4", 403, "classification-c4-not-named"),
])
async def test_a_restricted_or_confidential_answer_reaches_only_its_audience(
        begin: Begin, principal: str, label: str, status: int, reason: str) -> None:
    ticket = {"id": "INC1", "summary": "firewall change"}
    p = await begin(labelled(ticket, label))
    session = await p.client("ores", "service", principal)
    async with session.get(f"{p.url}/itsm/tickets/INC1") as resp:
        assert resp.status == status
        body = await resp.text()
    assert ("firewall change" in body) == (status == 200)
    [event] = p.requests()
    assert (event["reason"], event["classification"]) == (reason, label)


async def test_an_it_provider_is_never_the_owner_of_what_it_maintains(begin: Begin) -> None:
    """D9, D11: the ticket assigned to the provider is ORES's; without a
    contract naming it (here a route that names none), the provider is no
    insider of ORES and an internal (C2) answer is withheld."""
    uncontracted = RouteTable(tuple(
        dataclasses.replace(r, classification=ClassificationPolicy(default="C2"))
        if r.template == "/itsm/tickets/{ticket_id}" else r for r in ROUTES))
    p = await begin(lambda sent: json_answer({"id": "INC1", "summary": "disk full"}),
                    routes=uncontracted)
    engie = await p.client("engie-it", "service", "api")
    problem = await refused(p, "/itsm/tickets/INC1", 403, session=engie)
    assert "disk full" not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == "classification-c2-not-internal"


# -- pseudonyms for the IT provider (D9) --------------------------------------------------


def keyed(tenant: str) -> Pseudonymiser:
    return Pseudonymiser.for_tenant(MASTER, tenant)


async def test_an_it_provider_gets_its_own_keyed_pseudonym_never_the_identifier(
        begin: Begin) -> None:
    email = "j.peeters@ores.example"
    ticket = {"id": "INC1", "summary": "smart meter offline", "requester": {"email": email}}
    p = await begin(lambda sent: json_answer(ticket), pseudonyms=keyed)
    engie = await p.client("engie-it", "service", "api")
    async with engie.get(f"{p.url}/itsm/tickets/INC1") as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert email.encode() not in raw
    assert json.loads(raw) == {**ticket, "requester": {
        "email": keyed("engie-it").token("email", email)}}


async def test_an_it_providers_answer_without_identifiers_is_the_upstreams_bytes(
        begin: Begin) -> None:
    raw = b'{"id" : "A1",  "type": "laptop"}'
    p = await begin(answer(raw), pseudonyms=keyed)
    engie = await p.client("engie-it", "service", "api")
    async with engie.get(f"{p.url}/itsm/assets/A1") as resp:
        assert resp.status == 200
        assert await resp.read() == raw


async def test_the_owner_reads_its_own_identifiers_in_clear(begin: Begin) -> None:
    ticket = {"id": "INC1", "requester": {"email": "j.peeters@ores.example"}}
    p = await begin(lambda sent: json_answer(ticket), pseudonyms=keyed)
    async with p.session.get(f"{p.url}/itsm/tickets/INC1") as resp:
        assert resp.status == 200
        assert await resp.json() == ticket


class Blind(Pseudonymiser):
    """A pseudonymiser that misses what it should replace."""

    def apply(self, body: Any) -> int:
        return 0


def no_key(tenant: str) -> Pseudonymiser:
    return Pseudonymiser.for_tenant(b"too short", tenant)  # ValueError: no usable key


@pytest.mark.parametrize(("pseudonyms", "reason"), [
    (lambda tenant: Blind(MASTER), "pseudonymisation-leak"),
    (no_key, "pseudonymisation-impossible"),
])
async def test_an_answer_that_cannot_be_pseudonymised_is_withheld(
        begin: Begin, pseudonyms: Callable[[str], Pseudonymiser], reason: str) -> None:
    """D9, fail closed: an identifier still in the answer after the
    pseudonymiser ran, or no pseudonymiser for the provider at all."""
    email = "j.peeters@ores.example"
    ticket = {"id": "INC1", "requester": {"email": email}}
    p = await begin(lambda sent: json_answer(ticket), pseudonyms=pseudonyms)
    engie = await p.client("engie-it", "service", "api")
    problem = await refused(p, "/itsm/tickets/INC1", 502, session=engie)
    assert email not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == reason


# -- a one-record answer proven without being made (Route.record_fields) ----------------


@pytest.mark.parametrize("raw", [
    # Spaced oddly, a member named like the record's id inside a nested
    # object (not the record's), non-ASCII text: relayed as they came.
    f'{{ "serial" :"{ORES_METER}" ,\n"owner": {{"serial": "{FLUVIUS_METER}"}},'
    f' "note": "caf\u00e9 \u20ac", "n": [1.5e3, -0, true, null]}}'.encode(),
    # An escape: not proven in one pass; the full parse takes it.
    f'{{"serial": "{ORES_METER}", "note": "a \\"quoted\\" \\u00e9"}}'.encode(),
])
async def test_a_one_record_answer_is_relayed_as_the_upstreams_bytes(
        begin: Begin, raw: bytes) -> None:
    p = await begin(answer(raw))
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == 200
        assert await resp.read() == raw


@pytest.mark.parametrize(("raw", "reason"), [
    (f'{{"serial": "{FLUVIUS_METER}", "owner": {{"serial": "{ORES_METER}"}}}}'.encode(),
     "record-not-requested"),
    (f'{{"owner": {{"serial": "{ORES_METER}"}}}}'.encode(), "response-malformed"),  # none
    (f'{{"serial": ["{ORES_METER}"]}}'.encode(), "response-malformed"),
])
async def test_a_one_record_answer_is_checked_on_its_own_id(
        begin: Begin, raw: bytes, reason: str) -> None:
    """D1: the record's id is its top-level member, whatever a nested object
    holds; one that is not the requested meter, or no string, is withheld."""
    p = await begin(answer(raw))
    problem = await refused(p, f"/hes/meters/{ORES_METER}", 502)
    assert FLUVIUS_METER not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == reason


# -- a list answer proven without being made (Route.listed_fields) ----------------------


def meters(*records: str) -> bytes:
    return ('{"meters": [' + ", ".join(records) + "]}").encode()


@pytest.mark.parametrize("raw", [
    # Spaced oddly, a record's id also inside a nested object (not the
    # record's), non-ASCII text: relayed as they came.
    f'{{ "meters" :[ {{"serial" :"{ORES_METER}", "paired": {{"serial": "{FLUVIUS_METER}"}},'
    f' "note": "caf\u00e9"}} ,\n{{"utility": "gas", "serial": "{ORES_METER}"}} ] ,'
    f' "serial": "{FLUVIUS_METER}", "n": [1.5e3, -0, true, null]}}'.encode(),
    b'{"meters": []}',
    # An escape: not proven in one pass; the full parse takes it.
    meters(f'{{"serial": "{ORES_METER}", "note": "a \\"quoted\\" \\u00e9"}}'),
])
async def test_a_list_answer_is_relayed_as_the_upstreams_bytes(begin: Begin, raw: bytes) -> None:
    p = await begin(answer(raw))
    async with p.session.get(f"{p.url}/hes/meters") as resp:
        assert resp.status == 200
        assert await resp.read() == raw


@pytest.mark.parametrize(("raw", "reason"), [
    (meters(f'{{"serial": "{ORES_METER}"}}', f'{{"serial": "{FLUVIUS_METER}"}}'),
     "foreign-record"),
    (meters(f'{{"serial": "{FLUVIUS_METER}"}}', f'{{"serial": "{ORES_METER}"}}'),
     "foreign-record"),
    (meters(f'{{"serial": "{ORES_METER}"}}', f'{{"paired": {{"serial": "{ORES_METER}"}}}}'),
     "response-malformed"),  # a record whose id is only in a nested object: none
    (meters(f'{{"serial": ["{ORES_METER}"]}}'), "response-malformed"),
    (meters(f'{{"serial": "{ORES_METER}"}}', f'"{ORES_METER}"'), "response-malformed"),
    (meters(f'{{"serial": "{ORES_METER}"}}', "null"), "response-malformed"),
    (f'{{"meters": {{"serial": "{ORES_METER}"}}}}'.encode(), "response-malformed"),
    (f'{{"serial": "{ORES_METER}"}}'.encode(), "response-malformed"),  # no list at all
    # A record nested one deeper than the limit (the list 2, a record 3).
    (meters(f'{{"serial": "{ORES_METER}", "d": ' + "[" * (MAX_DEPTH - 2)
            + "]" * (MAX_DEPTH - 2) + "}"), "upstream-json-too-deep"),
    # SECURITY: D1. A key twice: in a record, or the list itself twice.
    (meters(f'{{"serial": "{ORES_METER}", "serial": "{FLUVIUS_METER}"}}'),
     "response-duplicate-key"),
    (meters(f'{{"serial": "{ORES_METER}"}}')[:-1]
     + f', "meters": [{{"serial": "{FLUVIUS_METER}"}}]}}'.encode(), "response-duplicate-key"),
])
async def test_a_list_answer_is_checked_record_by_record(
        begin: Begin, raw: bytes, reason: str) -> None:
    """D1: each record of the list is checked on its own id, whatever a
    nested object or a top-level member holds; one that is not the
    caller's, or not readable as a record, withholds the whole answer."""
    p = await begin(answer(raw))
    problem = await refused(p, "/hes/meters", 502)
    assert FLUVIUS_METER not in json.dumps(problem)
    assert event_of(p, problem["incident"])["reason"] == reason


HANDOVER = NOW - timedelta(hours=2)  # the meter became ORES's at 07:00 on the day asked for
MOVED_FEED = (Relation("meter", ORES_METER, "fluvius", "owner", SINCE, HANDOVER),
              Relation("meter", ORES_METER, "ores", "owner", HANDOVER), *FEED[1:])


def readings(*stamps: str) -> Callable[[Sent], UpstreamResponse]:
    return answer(json.dumps({"meter": ORES_METER, "readings": [
        {"meter": ORES_METER, "timestamp": stamp, "value": 1.5} for stamp in stamps]}).encode())


@pytest.mark.parametrize(("stamps", "reason"), [
    (("2026-06-15T07:00:00+00:00", "2026-06-15T23:45:00+00:00"), None),
    # Within the day asked for, but before the meter was ORES's: Fluvius's
    # reading (D1, the relation at the record's own instant).
    (("2026-06-15T07:00:00+00:00", "2026-06-15T06:45:00+00:00"), "foreign-record"),
    # Outside the day asked for (D2/D4), ORES's meter or not.
    (("2026-06-15T08:00:00+00:00", "2026-06-16T00:00:00+00:00"), "record-outside-window"),
    (("2026-06-14T23:45:00+00:00",), "record-outside-window"),
    (("2026-06-15T08:00:00+00:00", "yesterday"), "response-malformed"),
])
async def test_a_readings_answer_is_checked_at_each_readings_own_instant(
        begin: Begin, stamps: tuple[str, ...], reason: str | None) -> None:
    p = await begin(readings(*stamps), relations=MOVED_FEED)
    path = f"/hes/meters/{ORES_METER}/readings?date=2026-06-15"
    if reason is None:
        async with p.session.get(f"{p.url}{path}") as resp:
            assert resp.status == 200
            assert [r["timestamp"] for r in (await resp.json())["readings"]] == list(stamps)
        return
    problem = await refused(p, path, 502)
    assert event_of(p, problem["incident"])["reason"] == reason
