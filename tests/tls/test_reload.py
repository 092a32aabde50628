"""TLS material reload over real mTLS on loopback: server certificate swap, CA
rotation and CRLs take effect for new handshakes; established connections
keep working; bad material is refused and the old material keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.pki._authority import CertificateAuthority, IssuedCertificate
from gateway.tls._reload import ServerTls, TlsMaterial, TlsMaterialError

HOST = "127.0.0.1"
VERIFY_FAILED = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
# No chain to a trusted CA. The client's OpenSSL appends its issuer when its
# own store holds it, so the server says either of these.
UNTRUSTED = re.compile(re.escape(VERIFY_FAILED) + "(unable to get local issuer certificate"
                       "|self-signed certificate in certificate chain)")
REVOKED = VERIFY_FAILED + "certificate revoked"
GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _crl(ca: CertificateAuthority, revoked: Iterable[IssuedCertificate] = (), *,
         number: int = 1, signer: CertificateAuthority | None = None) -> bytes:
    now = datetime.now(UTC)
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.certificate.subject)
               .last_update(now - timedelta(minutes=5))
               .next_update(now + timedelta(days=1))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                   critical=False))
    for issued in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(issued.certificate.serial_number)
            .revocation_date(now - timedelta(minutes=1))
            .build())
    return builder.sign((signer or ca).key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM)


def _material(server: IssuedCertificate, *cas: CertificateAuthority,
              crls: tuple[bytes, ...] = ()) -> TlsMaterial:
    return TlsMaterial(server.cert_pem(), server.key_pem(),
                       b"".join(ca.cert_pem() for ca in cas), crls)


def _server(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue_server(["localhost"], [HOST])


_seq = iter(range(10**6))


def _client_ctx(tmp: Path, server_ca: CertificateAuthority, client: IssuedCertificate, *,
                version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    n = next(_seq)
    ca, cert, key = tmp / f"ca{n}.pem", tmp / f"client{n}.pem", tmp / f"client{n}.key"
    ca.write_bytes(server_ca.cert_pem())
    cert.write_bytes(client.cert_pem())
    key.write_bytes(client.key_pem())
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@contextlib.asynccontextmanager
async def _serving(tls: ServerTls) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0, ssl_context=tls.context).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def refusals(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The server's reasons for failed handshakes, in order.

    asyncio's server drops a failed handshake without flushing OpenSSL's
    alert, so the client only sees EOF; the reason is logged in debug mode.
    """
    asyncio.get_running_loop().set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def reasons() -> list[str]:
        return [str(r.exc_info[1]) for r in caplog.records
                if r.exc_info and "handshake failed" in r.getMessage()]
    return reasons


def _spy_callback(tls: ServerTls) -> list[tuple[str | None, int | None]]:
    """Spy on the base context's callback: server names seen, alerts returned."""
    calls: list[tuple[str | None, int | None]] = []
    inner = tls.context.sni_callback
    assert inner is not None

    def spy(conn: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
        alert = inner(conn, name, ctx)  # type: ignore[arg-type]  # typeshed: no None
        calls.append((name, alert))
        return alert

    tls.context.sni_callback = spy
    return calls


class _Conn:
    """One keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, sni: str | None = None) -> _Conn:
        # By IP (the default) Python sends no SNI at all.
        reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx,
                                                       server_hostname=sni or HOST)
        return cls(reader, writer)

    async def get(self) -> int:
        self.writer.write(GET)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        assert length is not None
        await self.reader.readexactly(int(length[1]))
        return int(head.split()[1])

    def server_serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await self.writer.wait_closed()


async def _outcome(port: int, ctx: ssl.SSLContext, sni: str | None = None) -> str:
    """"ok", or "refused" when the server dropped the new connection."""
    try:
        conn = await _Conn.open(port, ctx, sni)
    except (ssl.SSLError, ConnectionError):
        return "refused"
    try:
        status = await conn.get()  # TLS 1.3: the client learns of a refusal here
        return "ok" if status == 200 else f"status {status}"
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return "refused"
    finally:
        await conn.close()


def _serial(issued: IssuedCertificate) -> int:
    return issued.certificate.serial_number


# 1. Server certificate ----------------------------------------------------

@pytest.mark.parametrize("sni", [None, "localhost"])
async def test_new_server_certificate_for_new_connections_only(tmp_path: Path,
                                                               sni: str | None) -> None:
    ca = CertificateAuthority.create("CA")
    first, second = _server(ca), _server(ca)
    tls = ServerTls(_material(first, ca))
    ctx = _client_ctx(tmp_path, ca, ca.issue_client("spiffe://t/tenant/a/service/api"))
    async with _serving(tls) as port:
        established = await _Conn.open(port, ctx, sni)
        try:
            assert await established.get() == 200
            tls.update(_material(second, ca))
            assert tls.generation == 1 and tls.material.cert_chain_pem == second.cert_pem()
            assert await established.get() == 200  # kept alive across the update
            assert established.server_serial() == _serial(first)
            fresh = await _Conn.open(port, ctx, sni)
            try:
                assert await fresh.get() == 200
                assert fresh.server_serial() == _serial(second)
            finally:
                await fresh.close()
        finally:
            await established.close()


async def test_no_failed_request_while_updating_under_traffic(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    servers = [_server(ca) for _ in range(3)]
    tls = ServerTls(_material(servers[0], ca))
    ctx = _client_ctx(tmp_path, ca, ca.issue_client("spiffe://t/tenant/a/service/api"))
    results: list[str] = []
    serials_seen: set[int] = set()
    traffic_flowing = asyncio.Event()

    def record(outcome: str) -> None:
        results.append(outcome)
        if len(results) == 20:
            traffic_flowing.set()

    async def keep_alive(port: int, n: int) -> None:
        conn = await _Conn.open(port, ctx)
        try:
            for _ in range(n):
                record("ok" if await conn.get() == 200 else "bad status")
                await asyncio.sleep(0.004)
        finally:
            await conn.close()

    async def reconnecting(port: int, n: int, sni: str | None) -> None:
        for _ in range(n):
            conn = await _Conn.open(port, ctx, sni)
            try:
                record("ok" if await conn.get() == 200 else "bad status")
                serials_seen.add(conn.server_serial())
            finally:
                await conn.close()
            await asyncio.sleep(0.004)

    async def updates() -> None:
        await traffic_flowing.wait()
        for i in range(1, 6):  # from another thread, as a reload would
            await asyncio.to_thread(tls.update, _material(servers[i % 3], ca))
            await asyncio.sleep(0.03)

    async with _serving(tls) as port:
        await asyncio.wait_for(asyncio.gather(
            keep_alive(port, 50), keep_alive(port, 50),
            reconnecting(port, 50, None), reconnecting(port, 50, "localhost"),
            updates()), timeout=20)
    assert results == ["ok"] * 200
    assert tls.generation == 5
    assert len(serials_seen) >= 2  # the updates did land in the middle of the traffic


async def test_client_without_certificate_refused_after_update(
        refusals: Callable[[], list[str]]) -> None:
    # verify_mode is the base context's: it must stay CERT_REQUIRED.
    ca = CertificateAuthority.create("CA")
    tls = ServerTls(_material(_server(ca), ca))
    tls.update(_material(_server(ca), ca))
    anonymous = ssl.create_default_context(cadata=ca.cert_pem().decode())
    async with _serving(tls) as port:
        assert await _outcome(port, anonymous) == "refused"
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in refusals()[0]


# 2. CA rotation ------------------------------------------------------------

async def test_ca_rotation_overlap_then_new_only(tmp_path: Path,
                                                 refusals: Callable[[], list[str]]) -> None:
    old, new = CertificateAuthority.create("Old CA"), CertificateAuthority.create("New CA")
    server = _server(old)
    old_client = _client_ctx(tmp_path, old, old.issue_client("spiffe://t/tenant/a/service/x"))
    new_client = _client_ctx(tmp_path, old, new.issue_client("spiffe://t/tenant/a/service/y"))
    tls = ServerTls(_material(server, old))
    async with _serving(tls) as port:
        assert await _outcome(port, old_client) == "ok"
        assert await _outcome(port, new_client) == "refused"
        assert [bool(UNTRUSTED.match(r)) for r in refusals()] == [True]

        tls.update(_material(server, old, new))  # overlap
        assert await _outcome(port, old_client) == "ok"
        assert await _outcome(port, new_client, "localhost") == "ok"

        established = await _Conn.open(port, old_client)
        try:
            assert await established.get() == 200
            tls.update(_material(server, new))  # the old CA is gone
            assert await _outcome(port, old_client) == "refused"
            assert await _outcome(port, old_client, "localhost") == "refused"
            assert await _outcome(port, new_client) == "ok"
            assert [bool(UNTRUSTED.match(r)) for r in refusals()] == [True] * 3
            # Verified once, at its handshake: an established connection of
            # the old CA keeps working until it closes.
            assert await established.get() == 200
        finally:
            await established.close()


# 3. CRL ----------------------------------------------------------------------

@pytest.mark.parametrize("sni", [None, "localhost"])
async def test_crl_update_refuses_revoked_client(tmp_path: Path, sni: str | None,
                                                 refusals: Callable[[], list[str]]) -> None:
    ca = CertificateAuthority.create("CA")
    server = _server(ca)
    alice = ca.issue_client("spiffe://t/tenant/a/service/alice")
    bob = ca.issue_client("spiffe://t/tenant/a/service/bob")
    alice_ctx, bob_ctx = _client_ctx(tmp_path, ca, alice), _client_ctx(tmp_path, ca, bob)
    tls = ServerTls(_material(server, ca, crls=(_crl(ca),)), check_crl=True)
    calls = _spy_callback(tls)
    async with _serving(tls) as port:
        assert await _outcome(port, alice_ctx, sni) == "ok"
        established = await _Conn.open(port, alice_ctx, sni)
        try:
            assert await established.get() == 200
            tls.update(_material(server, ca, crls=(_crl(ca, [alice], number=2),)))
            assert await _outcome(port, alice_ctx, sni) == "refused"
            assert [r.startswith(REVOKED) for r in refusals()] == [True]
            assert await _outcome(port, bob_ctx, sni) == "ok"
            assert await established.get() == 200
        finally:
            await established.close()
    assert calls == [(sni, None)] * 4  # the callback ran for every handshake, SNI or not


def _get_blocking(port: int, ctx: ssl.SSLContext,
                  session: ssl.SSLSession | None) -> tuple[str, ssl.SSLSession | None, bool]:
    """One request on a new connection, offering ``session`` for resumption."""
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := conn.recv(4096):
                response += chunk
            ok = response.startswith(b"HTTP/1.1 200")
            return "ok" if ok else "bad response", conn.session, bool(conn.session_reused)
    except (ssl.SSLError, ConnectionError):
        return "refused", None, False


async def test_resumed_session_cannot_bypass_a_narrowed_trust(
        tmp_path: Path, refusals: Callable[[], list[str]]) -> None:
    # Resumption skips the certificate checks; TLS 1.2's session cache is the
    # only resumption left, and a session older than a revocation is refused.
    ca = CertificateAuthority.create("CA")
    alice, bob = (ca.issue_client(f"spiffe://t/tenant/a/service/{n}") for n in ("a", "b"))
    v12 = ssl.TLSVersion.TLSv1_2
    alice_ctx = _client_ctx(tmp_path, ca, alice, version=v12)
    bob_ctx = _client_ctx(tmp_path, ca, bob, version=v12)
    tls = ServerTls(_material(_server(ca), ca, crls=(_crl(ca),)), check_crl=True)
    calls = _spy_callback(tls)
    stale = ("localhost", ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE)

    def get(ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
            ) -> asyncio.Future[tuple[str, ssl.SSLSession | None, bool]]:
        return asyncio.ensure_future(asyncio.to_thread(_get_blocking, port, ctx, session))

    async with _serving(tls) as port:
        outcome, alice_session, reused = await get(alice_ctx)
        assert (outcome, reused) == ("ok", False)
        outcome, _, reused = await get(alice_ctx, alice_session)
        assert (outcome, reused) == ("ok", True)  # the server's session cache works
        _, bob_session, _ = await get(bob_ctx)

        tls.update(_material(_server(ca), ca, crls=(_crl(ca, number=2),)))  # narrows nothing
        outcome, _, reused = await get(alice_ctx, alice_session)
        assert (outcome, reused) == ("ok", True)

        tls.update(_material(_server(ca), ca, crls=(_crl(ca, [alice], number=3),)))
        outcome, _, _ = await get(alice_ctx, alice_session)
        assert outcome == "refused" and calls[-1] == stale
        outcome, _, _ = await get(alice_ctx)
        assert outcome == "refused" and refusals()[-1].startswith(REVOKED)
        # Bob's session also predates the revocation: refused, a fresh one is fine.
        outcome, _, _ = await get(bob_ctx, bob_session)
        assert outcome == "refused" and calls[-1] == stale
        # Sessions carry whole seconds: one from the second of the revocation
        # counts as older, so the next fresh session must start a second later.
        await asyncio.sleep(1.01 - time.time() % 1)
        outcome, bob_session, reused = await get(bob_ctx)
        assert (outcome, reused) == ("ok", False)
        outcome, _, reused = await get(bob_ctx, bob_session)
        assert (outcome, reused) == ("ok", True)


async def test_tls13_never_resumes(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    ctx = _client_ctx(tmp_path, ca, ca.issue_client("spiffe://t/tenant/a/service/a"),
                      version=ssl.TLSVersion.TLSv1_3)
    tls = ServerTls(_material(_server(ca), ca))
    async with _serving(tls) as port:
        outcome, session, _ = await asyncio.to_thread(_get_blocking, port, ctx, None)
        assert outcome == "ok"
        outcome, _, reused = await asyncio.to_thread(_get_blocking, port, ctx, session)
        assert (outcome, reused) == ("ok", False)


# 4. Bad material -------------------------------------------------------------

def _bad_materials() -> dict[str, tuple[TlsMaterial, str]]:
    ca, other = CertificateAuthority.create("CA"), CertificateAuthority.create("Other CA")
    server = _server(ca)
    good = _material(server, ca, other, crls=(_crl(ca), _crl(other)))
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    return {
        "key of another cert": (
            TlsMaterial(server.cert_pem(), _server(ca).key_pem(), good.trust_bundle_pem,
                        good.crl_pems), "does not match"),
        "empty bundle": (TlsMaterial(server.cert_pem(), server.key_pem(), b"", good.crl_pems),
                         "trust bundle"),
        "garbage certificate": (TlsMaterial(garbage, server.key_pem(), good.trust_bundle_pem,
                                            good.crl_pems), "server certificate chain"),
        "garbage key": (TlsMaterial(server.cert_pem(), b"-----BEGIN " + b"PRIVATE KEY-----\nx\n",
                                    good.trust_bundle_pem, good.crl_pems), "server key"),
        "garbage CRL": (_material(server, ca, crls=(garbage.replace(
            b"CERTIFICATE", b"X509 CRL"),)), "CRL #0"),
        "missing CRL": (_material(server, ca, other, crls=(_crl(ca),)), "no CRL for CA"),
        "CRL signed by another key": (
            _material(server, ca, crls=(_crl(ca, signer=other),)), "signature"),
        "leaf in the bundle": (TlsMaterial(server.cert_pem(), server.key_pem(),
                                           server.cert_pem(), ()), "not a CA"),
        "certificate smuggled in a CRL entry": (
            _material(server, ca, crls=(_crl(ca) + other.cert_pem(),)), "CRL #0"),
    }


_BAD = _bad_materials()


@pytest.mark.parametrize("kind", sorted(_BAD))
async def test_bad_material_is_refused_and_the_old_keeps_serving(tmp_path: Path,
                                                                 kind: str) -> None:
    ca = CertificateAuthority.create("CA")
    server = _server(ca)
    tls = ServerTls(_material(server, ca, crls=(_crl(ca),)), check_crl=True)
    before = tls.material
    ctx = _client_ctx(tmp_path, ca, ca.issue_client("spiffe://t/tenant/a/service/api"))
    bad, message = _BAD[kind]
    async with _serving(tls) as port:
        with pytest.raises(TlsMaterialError, match=message):
            tls.update(bad)
        assert tls.generation == 0 and tls.material is before
        conn = await _Conn.open(port, ctx)
        try:
            assert await conn.get() == 200
            assert conn.server_serial() == _serial(server)
        finally:
            await conn.close()


def test_first_material_is_checked_too() -> None:
    ca = CertificateAuthority.create("CA")
    with pytest.raises(TlsMaterialError, match="no CRL for CA"):
        ServerTls(_material(_server(ca), ca), check_crl=True)


def test_private_files_are_removed_after_loading(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ca = CertificateAuthority.create("CA")
    tls = ServerTls(_material(_server(ca), ca, crls=(_crl(ca),)), check_crl=True)
    tls.update(_material(_server(ca), ca, crls=(_crl(ca, number=2),)))
    assert list(tmp_path.iterdir()) == []
