"""The data-plane pipeline's fast tests: a real DataPlane behind a real mTLS
DataServer on 127.0.0.1 (certificates from the project's own PKI), real
tenants, a real hash-chained audit log, and a fake upstream transport in place
of the shared systems (tests/dataplane/fakes.py). The end-to-end tests with
the simulators are in tests/e2e."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.config import EdgeLimits
from gateway.core.catalog import default_route_table
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex
from gateway.dataplane import DataPlane
from gateway.edge import CallerResolver, ConnectionBook, DataServer, Peers, TlsSite, bind
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.pki import AssertionSigner, CertificateAuthority, spiffe_uri
from gateway.pki._signing_keys import SigningKey
from gateway.tenants import load_tenants
from gateway.tls import client_context, server_context
from gateway.upstream import UpstreamResponse
from tests.audit.faults import writes_refused
from tests.dataplane.fakes import Answer, FakeUpstream, Sent, json_answer

REPO = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "shared-grid.test"
ORES_METER = "1SAG0000000001"
FLUVIUS_METER = "1SAG0000000002"


@dataclass
class Plane:
    url: str
    session: aiohttp.ClientSession
    upstream: FakeUpstream
    audit_path: Path
    audit: ChainedAuditLog
    peers: Peers
    revoked: set[str]
    client_serial: str

    def audit_events(self) -> list[dict[str, object]]:
        self.audit.close()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


def _answer_own_meter(sent: Sent) -> UpstreamResponse:
    serial = sent.target.rsplit("/", 1)[-1]
    return json_answer({"serial": serial, "utility": "electricity", "communicating": True})


@pytest.fixture()
async def plane(tmp_path: Path) -> AsyncIterator[Callable[..., Plane]]:
    ca = CertificateAuthority.create("dataplane test CA")
    server = ca.issue_server(["localhost"], ["127.0.0.1"])
    client = ca.issue_client(spiffe_uri(TRUST_DOMAIN, "ores", "service", "api"))
    files = {"ca.pem": ca.cert_pem(), "server.pem": server.cert_pem(),
             "server.key": server.key_pem(), "client.pem": client.cert_pem(),
             "client.key": client.key_pem()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    started: list[tuple[web.BaseRunner, aiohttp.ClientSession, ChainedAuditLog]] = []

    async def start(answer: Answer = _answer_own_meter) -> Plane:
        key, kid = load_or_create_audit_key(tmp_path / "audit-key")
        audit_path = tmp_path / "audit.log"
        audit = ChainedAuditLog(audit_path, key, kid)
        upstream = FakeUpstream(answer)
        relations = RelationIndex([Relation("meter", ORES_METER, "ores", "owner"),
                                   Relation("meter", FLUVIUS_METER, "fluvius", "owner")])
        limits = EdgeLimits()
        peers = Peers(TRUST_DOMAIN)
        revoked: set[str] = set()
        resolver = CallerResolver(
            load_tenants(REPO / "tenants"), TRUST_DOMAIN, peers=peers,
            revocation=lambda serial, key: "certificate-revoked" if serial in revoked else None)
        data_plane = DataPlane(
            resolver=resolver,
            routes=default_route_table(), relations=lambda: relations, upstreams=upstream,
            signer=AssertionSigner(SigningKey.generate()), audit=audit,
            metrics=GatewayMetrics(), limits=limits)
        ctx = server_context(tmp_path / "server.pem", tmp_path / "server.key",
                             tmp_path / "ca.pem")
        # The listener of `gateway serve`: TlsSite on a bound socket.
        runner = web.ServerRunner(
            DataServer(data_plane, limits, ConnectionBook(limits, TRUST_DOMAIN, peers=peers),
                       access_log=None), handle_signals=False)
        await runner.setup()
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        await TlsSite(runner, sock, ssl_context=ctx, handshake_timeout_s=5).start()
        cctx: ssl.SSLContext = client_context(tmp_path / "ca.pem", tmp_path / "client.pem",
                                              tmp_path / "client.key")
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=cctx))
        started.append((runner, session, audit))
        return Plane(f"https://127.0.0.1:{port}", session, upstream, audit_path, audit, peers,
                     revoked, format(client.certificate.serial_number, "X"))

    yield start
    for runner, session, audit in started:
        await session.close()
        await runner.cleanup()
        audit.close()


async def test_an_allowed_request_reaches_the_upstream_with_the_gateways_identity_only(
        plane: Callable[..., Plane]) -> None:
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
        plane: Callable[..., Plane]) -> None:
    p = await plane()
    async with p.session.get(f"{p.url}/hes/meters/{FLUVIUS_METER}") as resp:
        assert resp.status == 403
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert p.upstream.sent == []  # D1: decided before anything is forwarded
    [event] = [e for e in p.audit_events() if e.get("incident") == problem["incident"]]
    assert event["tenant"] == "ores" and event["decision"] == "deny"


async def test_an_answer_holding_another_tenants_record_is_withheld(
        plane: Callable[..., Plane]) -> None:
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
        plane: Callable[..., Plane], failure: UpstreamFailed, status: int) -> None:
    def fail(sent: Sent) -> UpstreamResponse:
        raise failure

    p = await plane(fail)
    async with p.session.get(f"{p.url}/hes/meters/{ORES_METER}") as resp:
        assert resp.status == status
        problem = await resp.json()
    [event] = [e for e in p.audit_events() if e.get("incident") == problem["incident"]]
    assert event["reason"] == failure.reason


async def test_the_certificate_is_read_once_per_connection_and_checked_per_request(
        plane: Callable[..., Plane]) -> None:
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
        plane: Callable[..., Plane]) -> None:
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
