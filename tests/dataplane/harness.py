"""The data-plane tests' harness: a real DataPlane behind a real mTLS
DataServer on 127.0.0.1 (certificates from the project's own PKI), the
repository's tenant files, a real hash-chained audit log and a fake upstream
transport (tests/dataplane/fakes.py). ``start`` takes the upstream's answer
and, by keyword, anything the DataPlane is built with (``relations`` as a
list of relations); ``client`` makes a session with another principal's
certificate from the same CA."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.config import EdgeLimits
from gateway.core.catalog import default_route_table
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex
from gateway.dataplane import DataPlane
from gateway.edge import CallerResolver, ConnectionBook, DataServer, Peers, TlsSite, bind
from gateway.metrics import GatewayMetrics
from gateway.pki import AssertionSigner, CertificateAuthority, spiffe_uri
from gateway.pki._signing_keys import SigningKey
from gateway.tenants import load_tenants
from gateway.tls import client_context, server_context
from gateway.upstream import UpstreamResponse
from tests.dataplane.fakes import Answer, FakeUpstream, Sent, json_answer

REPO = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "shared-grid.test"
ORES_METER = "1SAG0000000001"
FLUVIUS_METER = "1SAG0000000002"
LIMITS = EdgeLimits()
FEED = (Relation("meter", ORES_METER, "ores", "owner"),
        Relation("meter", FLUVIUS_METER, "fluvius", "owner"))


class RawAnswer(NamedTuple):
    """One answer read off the wire by :meth:`Plane.raw`."""

    status: int
    headers: CIMultiDict[str]  # field names are case-insensitive (RFC 9110 §5.1)
    body: bytes

    def header(self, name: str) -> str | None:
        found = self.headers.getall(name, [])
        return found[-1] if found else None

    def json(self) -> Any:
        return json.loads(self.body)


def _answers(data: bytes) -> list[RawAnswer]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = CIMultiDict[str]((n.strip(), v.strip()) for n, _, v in
                                   (line.partition(":") for line in lines[1:]))
        size = int(headers.get("Content-Length", "0"))
        out.append(RawAnswer(int(lines[0].split(" ")[1]), headers, rest[:size]))
        data = rest[size:]
    return out


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
    data_plane: DataPlane
    metrics: GatewayMetrics
    # Another principal's session: client(tenant, kind, name).
    client: Callable[[str, str, str], Awaitable[aiohttp.ClientSession]] = field(repr=False)
    certs: Path = field(repr=False, default=Path())  # the CA's and the clients' files

    async def raw(self, data: bytes, stem: str = "client") -> list[RawAnswer]:
        """Send ``data`` as is on one mTLS connection (ORES's api certificate,
        or the one :attr:`client` made for ``tenant-kind-name``) and read every
        answer until the gateway closes it (10 s at most)."""
        ctx = client_context(self.certs / "ca.pem", self.certs / f"{stem}.pem",
                             self.certs / f"{stem}.key")
        host, _, port = self.url.removeprefix("https://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                       server_hostname="localhost")
        received = b""
        try:
            writer.write(data)
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    received += chunk
        except TimeoutError:
            raise  # the gateway kept the connection open: say so, not a short read
        except OSError:
            pass  # the gateway may cut the connection after its last answer
        finally:
            writer.close()
        return _answers(received)

    def audit_events(self) -> list[dict[str, Any]]:
        self.audit.close()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def requests(self) -> list[dict[str, Any]]:
        """The request events of the audit log (closes it)."""
        return [e for e in self.audit_events() if e.get("event") == "request"]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def answer_own_meter(sent: Sent) -> UpstreamResponse:
    serial = sent.target.rsplit("/", 1)[-1]
    return json_answer({"serial": serial, "utility": "electricity", "communicating": True})


class Start(Protocol):
    def __call__(self, answer: Answer = ..., *, relations: Iterable[Relation] = ...,
                 limits: EdgeLimits = ..., **overrides: Any) -> Awaitable[Plane]: ...


@pytest.fixture()
async def plane(tmp_path: Path) -> AsyncIterator[Start]:
    ca = CertificateAuthority.create("dataplane test CA")
    server = ca.issue_server(["localhost"], ["127.0.0.1"])
    client = ca.issue_client(spiffe_uri(TRUST_DOMAIN, "ores", "service", "api"))
    files = {"ca.pem": ca.cert_pem(), "server.pem": server.cert_pem(),
             "server.key": server.key_pem(), "client.pem": client.cert_pem(),
             "client.key": client.key_pem()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    started: list[tuple[web.BaseRunner, list[aiohttp.ClientSession], ChainedAuditLog]] = []

    async def start(answer: Answer = answer_own_meter, *,
                    relations: Iterable[Relation] = FEED, limits: EdgeLimits = LIMITS,
                    **overrides: Any) -> Plane:
        http_server = overrides.pop("http_server", "lean")  # DataServer's: or "aiohttp"
        key, kid = load_or_create_audit_key(tmp_path / "audit-key")
        audit_path = tmp_path / "audit.log"
        audit = overrides.pop("audit", None) or ChainedAuditLog(audit_path, key, kid)
        upstream = FakeUpstream(answer)
        index = RelationIndex(list(relations))
        peers = Peers(TRUST_DOMAIN)
        revoked: set[str] = set()
        resolver = CallerResolver(
            load_tenants(REPO / "tenants"), TRUST_DOMAIN, peers=peers,
            revocation=lambda serial, key: "certificate-revoked" if serial in revoked else None)
        metrics = overrides.pop("metrics", None) or GatewayMetrics()
        data_plane = DataPlane(**{
            "resolver": resolver, "routes": default_route_table(),
            "relations": lambda: index, "upstreams": upstream,
            "signer": AssertionSigner(SigningKey.generate()), "audit": audit,
            "metrics": metrics, "limits": limits, **overrides})
        ctx = server_context(tmp_path / "server.pem", tmp_path / "server.key",
                             tmp_path / "ca.pem")
        # The listener of `gateway serve`: TlsSite on a bound socket.
        runner = web.ServerRunner(
            DataServer(data_plane, limits, ConnectionBook(limits, TRUST_DOMAIN, peers=peers),
                       http_server=http_server, access_log=None), handle_signals=False)
        await runner.setup()
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        await TlsSite(runner, sock, ssl_context=ctx, handshake_timeout_s=5).start()
        sessions: list[aiohttp.ClientSession] = []

        def session_for(cert: str, key: str) -> aiohttp.ClientSession:
            cctx: ssl.SSLContext = client_context(tmp_path / "ca.pem", tmp_path / cert,
                                                  tmp_path / key)
            made = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=cctx))
            sessions.append(made)
            return made

        async def other(tenant: str, kind: str, name: str) -> aiohttp.ClientSession:
            issued = ca.issue_client(spiffe_uri(TRUST_DOMAIN, tenant, kind, name))
            stem = f"{tenant}-{kind}-{name}"
            (tmp_path / f"{stem}.pem").write_bytes(issued.cert_pem())
            (tmp_path / f"{stem}.key").write_bytes(issued.key_pem())
            return session_for(f"{stem}.pem", f"{stem}.key")

        started.append((runner, sessions, audit))
        return Plane(f"https://127.0.0.1:{port}", session_for("client.pem", "client.key"),
                     upstream, audit_path, audit, peers, revoked,
                     format(client.certificate.serial_number, "X"), data_plane, metrics, other,
                     tmp_path)

    yield start
    for runner, sessions, audit in started:
        for session in sessions:
            await session.close()
        await runner.cleanup()
        audit.close()
