"""Bad bodies are never a 500 (over real mTLS against the whole stack).

- A JSON body nested deeper than the documented limit (64) is a 400
  ``bad-request`` with an incident id and an audit event, on every route that
  parses one: proxied writes and both push intakes (meter-days batches too).
- The decision comes before the body is parsed: a tenant that may not act on
  a resource gets 403 whatever it sends (D1, D6).
- An upstream answer with a key twice in one object is withheld like a
  misroute (502, isolation violation, D1): the check would see one value, a
  client keeping the first would read the other.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from gateway.core.push.days import FORMAT

from .conftest import HOST, RunningStack, start_stack

DEPTH_LIMIT = 64
DEEP = b"[" * 3000 + b"]" * 3000  # 6 KB: a RecursionError for an unbounded parser


def nested(depth: int) -> str:
    """A JSON value of exactly ``depth`` nested arrays."""
    return "[" * depth + "]" * depth


def post_raw(gw: RunningStack, who: tuple[str, str], path: str, body: bytes) -> tuple[
        int, dict[str, Any]]:
    conn = http.client.HTTPSConnection(HOST, gw.port, context=gw.context(*who), timeout=15)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
        assert resp.getheader("Content-Type", "").startswith(
            "application/problem+json" if status >= 400 else "application/json"), raw[:200]
        doc = json.loads(raw)
        assert isinstance(doc, dict)
        return status, doc
    finally:
        conn.close()


def audited(gw: RunningStack, problem: dict[str, Any]) -> dict[str, Any]:
    """The one audit event carrying the problem's incident id."""
    events = [e for e in gw.audit_events() if e.get("incident") == problem["incident"]]
    assert len(events) == 1, events
    assert events[0]["status"] == problem["status"]
    return events[0]


def refused(gw: RunningStack, who: tuple[str, str], path: str, body: bytes,
            status: int) -> dict[str, Any]:
    got, problem = post_raw(gw, who, path, body)
    assert got == status, problem
    assert problem["status"] == status and problem["incident"]
    assert set(problem) == {"type", "title", "status", "detail", "incident"}
    event = audited(gw, problem)
    assert event["tenant"] == who[0] and event["decision"] == "deny"
    return event


def own_meter(gw: RunningStack, tenant: str) -> str:
    return next(m["serial"] for m in gw.stack.dataset.meters
                if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"]
                and m["utility"] == "electricity")


def connection(gw: RunningStack, operator: str) -> tuple[str, str]:
    req = next(r for r in gw.stack.dataset.cmh_requests
               if any(c["operator"] == operator for c in r["connections"]))
    conn = next(c for c in req["connections"] if c["operator"] == operator)
    return req["id"], conn["id"]


# -- proxied routes ------------------------------------------------------------
def test_deep_body_on_the_operations_route_is_400(gw: RunningStack) -> None:
    path = f"/hes/meters/{own_meter(gw, 'ores')}/operations"
    gw.clear_sim_logs()
    event = refused(gw, ("ores", "field-ops"), path, DEEP, 400)
    assert event["reason"] == "body-too-deep"
    assert gw.sim_log("hes") == []  # never forwarded


def test_the_depth_limit_is_exact(gw: RunningStack) -> None:
    """64 levels (the body object included) pass; 65 are refused."""
    path = f"/hes/meters/{own_meter(gw, 'ores')}/operations"
    at_limit = f'{{"operation": "connect", "note": {nested(DEPTH_LIMIT - 1)}}}'.encode()
    status, doc = post_raw(gw, ("ores", "field-ops"), path, at_limit)
    assert status == 200, doc
    over = f'{{"operation": "connect", "note": {nested(DEPTH_LIMIT)}}}'.encode()
    assert refused(gw, ("ores", "field-ops"), path, over, 400)["reason"] == "body-too-deep"


@pytest.mark.parametrize("body", [DEEP, b"{\"operation\": ", b"\xff\xfe garbage",
                                  b"{\"operation\": \"connect\"}"])
def test_a_forbidden_tenant_gets_403_whatever_its_body(gw: RunningStack, body: bytes) -> None:
    """D1: the decision needs no body, so it comes first: Fluvius may not
    operate ORES's meter, and its body is never parsed (403, not 400)."""
    path = f"/hes/meters/{own_meter(gw, 'ores')}/operations"
    gw.clear_sim_logs()
    event = refused(gw, ("fluvius", "field-ops"), path, body, 403)
    assert event["reason"] == "no-relation"
    # D6: ORES's reader without the meter-operator role, likewise.
    assert refused(gw, ("ores", "api"), path, body, 403)["reason"] == "missing-role"
    assert gw.sim_log("hes") == []


def test_cmh_status_deep_body(gw: RunningStack) -> None:
    request_id, conn_id = connection(gw, "orange")
    path = f"/cmh/requests/{request_id}/connections/{conn_id}/status"
    gw.clear_sim_logs()
    # Proximus does not operate Orange's connection: 403 whatever the body.
    event = refused(gw, ("proximus", "api"), path, DEEP, 403)
    assert event["reason"] == "no-relation"
    # Orange does: its deep body is a 400, not a 500.
    assert refused(gw, ("orange", "api"), path, DEEP, 400)["reason"] == "body-too-deep"
    assert gw.sim_log("cmh") == []


def test_request_body_with_a_duplicate_key_is_400(gw: RunningStack) -> None:
    """Forwarded as sent: the gateway and the upstream must read the same value."""
    path = f"/hes/meters/{own_meter(gw, 'ores')}/operations"
    gw.clear_sim_logs()
    body = b'{"operation": "set-power-limit", "limit_kw": 5, "limit_kw": 900}'
    assert refused(gw, ("ores", "field-ops"), path, body, 400)["reason"] == "body-duplicate-key"
    assert gw.sim_log("hes") == []


# -- push intakes ----------------------------------------------------------------
HES_PUSHER = ("hes-operator", "pusher")
PORTAL_PUSHER = ("cmh-portal", "pusher")


@pytest.mark.parametrize("who,path", [(HES_PUSHER, "/push/hes/batches"),
                                      (PORTAL_PUSHER, "/push/cmh/requests")])
def test_deep_push_body_is_400(gw: RunningStack, who: tuple[str, str], path: str) -> None:
    assert refused(gw, who, path, DEEP, 400)["reason"] == "body-too-deep"
    over = f'{{"batch_id": "X", "records": {nested(DEPTH_LIMIT)}}}'.encode()
    assert refused(gw, who, path, over, 400)["reason"] == "body-too-deep"
    # UTF-16 (RFC 8259 §8.1 says UTF-8; json finds the encoding): the same limit.
    assert refused(gw, who, path, DEEP.decode().encode("utf-16"), 400)["reason"] \
        == "body-too-deep"


@pytest.mark.parametrize("path", ["/push/hes/batches", "/push/cmh/requests"])
def test_a_non_pusher_gets_403_whatever_its_body(gw: RunningStack, path: str) -> None:
    event = refused(gw, ("ores", "api"), path, DEEP, 403)
    assert event["reason"] != "body-too-deep"


@pytest.mark.parametrize("depth", [DEPTH_LIMIT, 3000])
def test_deep_nesting_inside_a_meter_days_batch_is_400(gw: RunningStack, depth: int) -> None:
    """The columnar format goes through its own scanner (gateway.core.push.scan):
    the same limit holds inside a meter-day."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) \
        - timedelta(days=1)
    day = {"meter": own_meter(gw, "ores"), "start": start.isoformat(), "interval": 900,
           "obis": "1-0:1.29.0", "unit": "kWh", "values": [0.1] * 96, "quality": "01" * 96}
    text = json.dumps({"format": FORMAT, "batch_id": f"DEEP-{depth}", "source": "hes",
                       "meter_days": [day]})
    # Two levels (batch object, meter_days array) + the day object + the note.
    body = text.replace('"quality"', f'"note": {nested(depth - 2)}, "quality"', 1).encode()
    assert refused(gw, HES_PUSHER, "/push/hes/batches", body, 400)["reason"] == "body-too-deep"
    fine = text.replace('"quality"', f'"note": {nested(DEPTH_LIMIT - 3)}, "quality"', 1)
    status, doc = post_raw(gw, HES_PUSHER, "/push/hes/batches",
                           fine.replace(f"DEEP-{depth}", f"FINE-{depth}").encode())
    # Within the limit the batch is parsed and routed: the unknown member
    # quarantines the day, nothing else.
    assert status == 202, doc
    assert doc["received"] == 96 and doc["queued"] == 0 and doc["quarantined"] == 96


# -- an upstream answer with duplicate keys --------------------------------------------
class FakeHes:
    """A TLS upstream in place of the HES that answers whatever bytes it is given."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.answer = b"{}"
        self.runner: web.AppRunner | None = None

    async def start(self, gw: RunningStack) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(gw.stack.pki.server_cert), str(gw.stack.pki.server_key))

        async def answer(request: web.Request) -> web.Response:
            body = b"{}" if request.path == "/healthz" else self.answer
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, FakeHes]]:
    fake = FakeHes()
    gw = start_stack(tmp_path_factory.mktemp("dupkeys"), upstream_ports={"hes": fake.port})
    gw.run(fake.start(gw))
    yield gw, fake
    gw.run(fake.stop())
    gw.stop()


def _violations(gw: RunningStack) -> float:
    return gw.metric("gateway_isolation_violations_total", tenant="ores", upstream="hes",
                     direction="response")


@pytest.mark.parametrize("shape", ["detail-foreign-first", "detail-own-first", "list",
                                   "nested"])
def test_upstream_duplicate_keys_are_withheld(lying: tuple[RunningStack, FakeHes],
                                              shape: str) -> None:
    gw, fake = lying
    own, foreign = own_meter(gw, "ores"), own_meter(gw, "fluvius")
    detail = f"/hes/meters/{own}"
    fake.answer = json.dumps({"serial": own, "model": "Sagemcom T211"}).encode()
    healthy = gw.client("ores").get(detail)
    assert healthy.status == 200 and healthy.json["serial"] == own  # the fake answers

    path, answer = {
        # The check (last key wins) sees ORES's serial; a first-key client, Fluvius's.
        "detail-foreign-first": (detail, f'{{"serial": "{foreign}", "serial": "{own}"}}'),
        "detail-own-first": (detail, f'{{"serial": "{own}", "serial": "{foreign}"}}'),
        "list": ("/hes/meters", f'{{"meters": [{{"serial": "{foreign}", "serial": "{own}"}}]}}'),
        "nested": (detail, f'{{"serial": "{own}", "owner": {{"id": "fluvius", "id": "ores"}}}}'),
    }[shape]
    fake.answer = answer.encode()
    before = _violations(gw)
    resp = gw.client("ores").get(path)
    assert resp.status == 502
    problem = resp.json
    assert problem["type"].endswith(":isolation-violation")
    assert foreign.encode() not in resp.body
    event = audited(gw, problem)
    assert event["reason"] == "response-duplicate-key" and event["tenant"] == "ores"
    assert _violations(gw) == before + 1


def test_upstream_answer_nested_too_deep_is_502_not_500(lying: tuple[RunningStack, FakeHes]
                                                        ) -> None:
    gw, fake = lying
    own = own_meter(gw, "ores")
    fake.answer = f'{{"serial": "{own}", "x": {"[" * 3000 + "]" * 3000}}}'.encode()
    resp = gw.client("ores").get(f"/hes/meters/{own}")
    assert resp.status == 502
    problem = resp.json
    assert problem["type"].endswith(":upstream-error")
    assert audited(gw, problem)["reason"] == "upstream-json-too-deep"
