"""The edge limits' guards (gateway/edge/_limits.py), each pinned by its
outcome: the listener self-check on the gateway's own TLS policy context,
the connection book's caps and memory budget at their exact bounds, and the
same caps over real mTLS on 127.0.0.1 (the data plane's harness,
tests/dataplane/harness.py, whose listener counts connections in a
``ConnectionBook``): a connection over a cap is closed before any HTTP
byte, and another tenant's is still served (D1 availability)."""

from __future__ import annotations

import asyncio
import os
import ssl
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.config import EdgeLimits
from gateway.edge import ConnectionBook, Peers, _limits, self_check
from gateway.errors import ConfigError
from gateway.pki import CertificateAuthority
from gateway.tls import server_context, server_policy_context
from tests.dataplane.harness import ORES_METER, TRUST_DOMAIN, Plane, Start
from tests.dataplane.harness import plane as plane  # the fixture, shared with tests/dataplane

MiB = 1024 * 1024
LIMIT_NAMES = ("max_request_line_bytes", "max_header_bytes", "max_header_block_bytes",
               "max_headers", "header_timeout_s", "body_timeout_s", "handshake_timeout_s",
               "keepalive_timeout_s", "max_connections", "max_connections_per_tenant",
               "max_in_flight", "memory_budget_mb", "max_push_records_mb",
               "max_push_meter_days_mb", "max_push_in_progress")
# Every limit at the smallest value that still applies it.
SMALLEST = EdgeLimits(**dict.fromkeys(LIMIT_NAMES, 1))
HAS_PROC = os.path.exists("/proc/self/statm")


# -- the listener self-check ---------------------------------------------------------

@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(CertificateAuthority.create("self-check test CA").cert_pem())
    return path


def policy(ca_pem: Path | None) -> ssl.SSLContext:
    """The gateway's listener policy (gateway.tls), with ``ca_pem`` trusted."""
    ctx = server_policy_context()
    if ca_pem is not None:
        ctx.load_verify_locations(cafile=str(ca_pem))
    return ctx


def test_the_gateways_listener_context_passes_with_every_limit_applied(ca_pem: Path) -> None:
    """TLS 1.2 as the floor, client certificates required, one CA trusted,
    and every limit at 1 (the smallest that applies it): a listener starts."""
    ctx = policy(ca_pem)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    self_check(ctx, SMALLEST)
    self_check(ctx, EdgeLimits())


def test_a_listener_that_does_not_require_client_certificates_is_refused(
        ca_pem: Path) -> None:
    """SECURITY: without CERT_REQUIRED a caller without a certificate would
    reach the HTTP layer: the gateway does not start."""
    for mode in (ssl.CERT_OPTIONAL, ssl.CERT_NONE):
        ctx = policy(ca_pem)
        ctx.verify_mode = mode
        with pytest.raises(ConfigError) as refused:
            self_check(ctx, EdgeLimits())
        assert str(refused.value) == (
            "self-check: the listener does not require client certificates")


def test_a_listener_with_an_empty_trust_bundle_is_refused() -> None:
    ctx = policy(None)
    with pytest.raises(ConfigError) as refused:
        self_check(ctx, EdgeLimits())
    assert str(refused.value) == "self-check: the trust bundle is empty"


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_a_listener_that_allows_tls_older_than_1_2_is_refused(
        ca_pem: Path, version: str) -> None:
    ctx = policy(ca_pem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python warns on the old names
        ctx.minimum_version = getattr(ssl.TLSVersion, version)
    with pytest.raises(ConfigError) as refused:
        self_check(ctx, EdgeLimits())
    assert str(refused.value) == "self-check: TLS older than 1.2 is allowed"


@pytest.mark.parametrize("name", LIMIT_NAMES)
@pytest.mark.parametrize("value", [0, -1])
def test_a_limit_that_is_not_applied_is_named(ca_pem: Path, name: str, value: int) -> None:
    """A limit of 0 (or less) would refuse nothing, or everything: the
    listener does not start, and the message names the limit."""
    with pytest.raises(ConfigError) as refused:
        self_check(policy(ca_pem), replace(SMALLEST, **{name: value}))
    assert str(refused.value) == f"self-check: limit {name} is not applied"


# -- the connection book, at its bounds ------------------------------------------------

class Clock:
    """time.monotonic for the book (its RSS reading is rate-limited)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    frozen = Clock()
    monkeypatch.setattr(_limits, "time", SimpleNamespace(monotonic=frozen.monotonic))
    yield frozen


def book(rss: int = 0, refusals: list[str] | None = None, **limits: int) -> ConnectionBook:
    said = refusals if refusals is not None else []
    return ConnectionBook(EdgeLimits(**limits), TRUST_DOMAIN, rss=lambda: rss,
                          on_refused=said.append)


def test_the_listener_cap_admits_exactly_max_connections(clock: Clock) -> None:
    """D1 availability: at most max_connections open at once on a listener,
    whoever holds them; a release makes room for exactly one more."""
    said: list[str] = []
    b = book(refusals=said, max_connections=3)
    assert [b.admit(t) for t in ("ores", "fluvius", "")] == [True, True, True]
    assert b.total == 3
    assert b.admit("sibelga") is False and b.admit("") is False
    assert (b.total, b.refused, said) == (3, 2, ["connection-cap", "connection-cap"])
    b.release("fluvius")
    assert b.admit("sibelga") is True and b.admit("resa") is False
    assert (b.total, b.refused) == (3, 3)
    assert dict(b.per_tenant) == {"ores": 1, "sibelga": 1}


def test_the_tenant_cap_admits_exactly_max_connections_per_tenant(clock: Clock) -> None:
    """D1: a noisy neighbour cannot take every socket: ORES stops at its cap,
    Fluvius is still admitted; a connection without a tenant (no principal
    of ours) counts against the listener only."""
    said: list[str] = []
    b = book(refusals=said, max_connections_per_tenant=2)
    assert [b.admit("ores") for _ in range(3)] == [True, True, False]
    assert said == ["tenant-connection-cap"]
    assert b.admit("fluvius") is True
    assert all(b.admit("") for _ in range(5))  # no tenant, no tenant cap
    assert (b.total, b.refused, dict(b.per_tenant)) == (8, 1, {"ores": 2, "fluvius": 1})
    b.release("ores")
    assert dict(b.per_tenant) == {"ores": 1, "fluvius": 1}
    assert b.admit("ores") is True and b.admit("ores") is False


def test_a_tenants_last_connection_leaves_no_entry(clock: Clock) -> None:
    """The book holds the tenants with a connection open, not every tenant
    ever seen: the entry goes with the last connection, and the count of
    the others stays exact."""
    b = book()
    for tenant in ("ores", "ores", "fluvius"):
        b.admit(tenant)
    b.admit("")
    b.release("ores")
    assert dict(b.per_tenant) == {"ores": 1, "fluvius": 1}
    b.release("ores")
    b.release("fluvius")
    b.release("")
    assert (b.total, dict(b.per_tenant)) == (0, {})


@pytest.mark.parametrize(("rss", "admitted"), [
    (2 * MiB, True), (3 * MiB - 1, True), (3 * MiB, True), (3 * MiB + 1, False)])
def test_the_memory_budget_is_the_rss_in_mebibytes(
        clock: Clock, rss: int, admitted: bool) -> None:
    """D1 availability: a new connection is refused once the process's RSS is
    over memory_budget_mb MiB (1 MiB = 1024 * 1024 bytes), not at it."""
    said: list[str] = []
    b = book(rss, said, memory_budget_mb=3)
    assert b.admit("ores") is admitted
    assert said == ([] if admitted else ["memory-budget"])
    assert (b.total, b.refused) == ((1, 0) if admitted else (0, 1))


def test_the_first_connection_is_checked_against_the_budget_at_once(clock: Clock) -> None:
    """A process whose monotonic clock is still near 0 (a fresh container)
    reads its RSS for the very first connection, not 50 ms later."""
    for now in (0.0, 0.01):
        clock.now = now
        assert book(2 * MiB, memory_budget_mb=1).admit("ores") is False


def test_the_rss_is_read_again_after_the_interval_and_not_before(clock: Clock) -> None:
    """The budget's RSS reading is at most RSS_READ_EVERY_S old: within it
    the last verdict holds (either way); once exactly that long has passed,
    the RSS is read again."""
    every = _limits.RSS_READ_EVERY_S
    rss = [2 * MiB]
    readings: list[float] = []

    def read() -> int:
        readings.append(clock.now)
        return rss[0]

    b = ConnectionBook(EdgeLimits(memory_budget_mb=1), TRUST_DOMAIN, rss=read)
    assert b.admit("ores") is False  # read at 0.0
    rss[0] = 0
    clock.now = every / 2
    assert b.admit("ores") is False  # the last reading still holds
    clock.now = every  # exactly the interval after the last reading
    assert b.admit("ores") is True  # read again: under the budget
    rss[0] = 2 * MiB
    clock.now = every * 1.5
    assert b.admit("ores") is True
    clock.now = every * 3
    assert b.admit("ores") is False
    assert readings == [0.0, every, every * 3]


def test_without_a_reader_the_book_reads_this_processs_rss() -> None:
    """The default reading is the process's own RSS (/proc): a budget of 1 MiB
    is always exceeded by a Python process; a budget of 1 TiB never is."""
    if not HAS_PROC:
        pytest.skip("Linux /proc")
    said: list[str] = []
    tight = ConnectionBook(EdgeLimits(memory_budget_mb=1), TRUST_DOMAIN, on_refused=said.append)
    assert tight.admit("ores") is False and said == ["memory-budget"]
    roomy = ConnectionBook(EdgeLimits(memory_budget_mb=1024 * 1024), TRUST_DOMAIN)
    assert roomy.admit("ores") is True


def test_a_refusal_is_counted_even_without_a_listener_to_tell() -> None:
    """``on_refused`` defaults to nothing: the book still counts."""
    b = ConnectionBook(EdgeLimits(max_connections=1), TRUST_DOMAIN, rss=lambda: 0)
    assert b.admit("ores") is True and b.admit("ores") is False
    assert b.refused == 1


# -- over real mTLS ------------------------------------------------------------------------

GET = f"GET /hes/meters/{ORES_METER} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
GET_CLOSE = (f"GET /hes/meters/{ORES_METER} HTTP/1.1\r\nHost: localhost\r\n"
             "Connection: close\r\n\r\n").encode()


async def held(p: Plane, stem: str = "client") -> tuple[asyncio.StreamWriter, bytes]:
    """An mTLS connection kept open after one answered request (its first
    bytes: empty when the gateway closed it at once)."""
    ctx = ssl.create_default_context(cafile=str(p.certs / "ca.pem"))
    ctx.load_cert_chain(p.certs / f"{stem}.pem", p.certs / f"{stem}.key")
    host, _, port = p.url.removeprefix("https://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                  server_hostname="localhost")
    writer.write(GET)
    async with asyncio.timeout(10):
        first = await reader.read(65536)
    return writer, first


async def test_a_tenant_over_its_connection_cap_is_cut_and_another_is_served(
        plane: Start) -> None:
    """D1 availability: with ORES at its cap (1 connection here), its next
    connection is closed before any HTTP byte is answered; Fluvius's
    connection is served; once ORES's first connection is gone, ORES is
    admitted again."""
    p = await plane(limits=EdgeLimits(max_connections_per_tenant=1))
    await p.client("fluvius", "service", "api")
    writer, first = await held(p)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert await p.raw(GET_CLOSE) == []
    [fluvius] = await p.raw(GET_CLOSE, stem="fluvius-service-api")
    assert fluvius.status == 403  # answered (another tenant's meter: refused by the plane)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):  # until the gateway has seen the close
        answers = await p.raw(GET_CLOSE)
        if answers:
            break
        await asyncio.sleep(0.02)
    assert [a.status for a in answers] == [200]


async def test_the_listener_cap_cuts_every_tenant(plane: Start) -> None:
    """D1 availability: max_connections counts every connection of the
    listener: with one open, any tenant's next connection is closed."""
    p = await plane(limits=EdgeLimits(max_connections=1))
    await p.client("fluvius", "service", "api")
    writer, first = await held(p)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert await p.raw(GET_CLOSE, stem="fluvius-service-api") == []
    writer.close()
    await writer.wait_closed()


async def test_over_the_memory_budget_new_connections_are_cut(plane: Start) -> None:
    """D1 availability: the process's own RSS over the budget (1 MiB: always,
    for a Python process): a new connection is closed, unanswered; with the
    default budget the same request is served."""
    if not HAS_PROC:
        pytest.skip("Linux /proc")
    p = await plane(limits=EdgeLimits(memory_budget_mb=1))
    assert await p.raw(GET_CLOSE) == []
    roomy = await plane()
    assert [a.status for a in await roomy.raw(GET_CLOSE)] == [200]


@pytest.mark.parametrize("http_server", ["lean", "aiohttp"])
async def test_a_connection_refused_at_admission_has_no_request_handled(
        plane: Start, http_server: str) -> None:
    """D1 availability: a connection over the memory budget is closed
    "before any HTTP byte"; the request its client sent with the handshake
    must not be handled either (forwarded to the upstream, audited, its body
    read into the memory the budget protects).

    On asyncio's loop the bytes that arrive in the same read as the end of
    the handshake still reach the connection's ``data_received`` after
    ``connection_made`` closed the refused transport: the lean server
    parses nothing once refused (gateway/edge/_lean.py). uvloop delivers
    nothing after the close."""
    if not HAS_PROC:
        pytest.skip("Linux /proc")
    p = await plane(limits=EdgeLimits(memory_budget_mb=1), http_server=http_server)
    for _ in range(3):
        assert await p.raw(GET_CLOSE) == []
    assert p.upstream.sent == []


def test_the_book_reads_the_tenant_of_a_connection_from_its_peers() -> None:
    """A book given no ``Peers`` reads certificates for its own trust domain."""
    b = ConnectionBook(EdgeLimits(), TRUST_DOMAIN)
    assert isinstance(b.peers, Peers) and b.peers.trust_domain == TRUST_DOMAIN
    shared = Peers(TRUST_DOMAIN)
    assert ConnectionBook(EdgeLimits(), TRUST_DOMAIN, peers=shared).peers is shared


def test_server_context_from_files_passes(tmp_path: Path) -> None:
    """The context `gateway serve` builds from its files passes the check."""
    ca = CertificateAuthority.create("self-check test CA")
    server = ca.issue_server(["localhost"], ["127.0.0.1"])
    for name, data in {"ca.pem": ca.cert_pem(), "server.pem": server.cert_pem(),
                       "server.key": server.key_pem()}.items():
        (tmp_path / name).write_bytes(data)
    self_check(server_context(tmp_path / "server.pem", tmp_path / "server.key",
                              tmp_path / "ca.pem"), EdgeLimits())


# -- the RSS reading ---------------------------------------------------------------------

def _statm_resident() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not HAS_PROC, reason="Linux /proc")
def test_the_reading_is_the_resident_set_not_another_field() -> None:
    """statm's second field (resident pages), in bytes."""
    assert abs(_limits.rss_bytes() - _statm_resident()) < 4 * MiB


@pytest.mark.skipif(not HAS_PROC, reason="Linux /proc")
def test_after_a_fork_the_inherited_descriptor_is_closed_and_read_afresh() -> None:
    """What the at-fork hook does in a child, here in this process: the
    descriptor kept for the parent's statm is closed (not leaked), the lock
    is a new, free one, and the next reading opens statm again."""
    assert _limits.rss_bytes() > 0
    kept, lock = _limits._statm, _limits._statm_lock
    assert kept is not None
    _limits._forget_statm()
    with pytest.raises(OSError):
        os.fstat(kept)
    assert _limits._statm is None
    assert _limits._statm_lock is not lock and not _limits._statm_lock.locked()
    assert abs(_limits.rss_bytes() - _statm_resident()) < 4 * MiB
    assert _limits._statm is not None
    _limits._forget_statm()  # nothing kept: nothing to close
    assert _limits._statm is None and _limits.rss_bytes() > 0
