"""The security team's credential lifecycle: issue from CSRs,
rotate with overlap, revoke at once, disable leavers, rotate the CA, the
server certificate and the signing keys, without restart.

All changes go through :class:`Credentials`, which persists them in the state
store, audits them (actor, action, target, reason), and then refreshes what
the request path reads: the in-memory revocation view and the live TLS
material (trust bundle + CRLs for new handshakes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.audit import AdminEvent, AuditSink, SecurityEvents
from gateway.clock import utc_now
from gateway.core.canary import CANARY_KIND, CANARY_NAME
from gateway.files import write_atomically, write_private
from gateway.metrics import GatewayMetrics
from gateway.pki._authority import CertificateAuthority, key_pem, spiffe_uri
from gateway.pki._issuance import (
    DEFAULT_POLICY,
    CsrRefused,
    IssuancePolicy,
    RevokedEntry,
    build_crl,
    check_csr,
    crl_pem,
    issue_from_csr,
)
from gateway.pki._records import (
    SERVER_PRINCIPAL,
    AdminRefused,
    RevocationView,
    ca_id,
    certificate_record,
    import_certificate,
    issuer_id,
    reason_label,
    serial_hex,
)
from gateway.pki._review import access_review
from gateway.pki._signing_keys import KeyRing
from gateway.problem import new_incident_id
from gateway.state import (
    CaRecord,
    CertificateRecord,
    PrincipalKey,
    PrincipalState,
    StateStore,
)
from gateway.tenants import TenantRegistry
from gateway.tls import ServerTls, TlsMaterial

log = logging.getLogger("gateway.pki")

class Credentials:
    def __init__(self, *, store: StateStore, trust_domain: str,
                 registry: Callable[[], TenantRegistry], keyring: KeyRing,
                 metrics: GatewayMetrics, audit: AuditSink, soc: SecurityEvents | None = None,
                 server_cert: Path, server_key: Path, trust_bundle: Path,
                 policy: IssuancePolicy = DEFAULT_POLICY,
                 rotation_overlap: timedelta = timedelta(days=1),
                 crl_next_update: timedelta = timedelta(hours=24),
                 on_disable: Iterable[Callable[[PrincipalKey], Awaitable[Any]]] = (),
                 leads: Callable[[], bool] = lambda: True,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.registry = registry
        self.keyring = keyring
        self.soc = soc
        # Built by serve_tls() for the listeners; refresh() then swaps material in.
        self.server_tls: ServerTls | None = None
        self.metrics = metrics
        self.audit = audit
        self.server_cert = server_cert
        self.server_key = server_key
        self.trust_bundle = trust_bundle
        self.policy = policy
        self.rotation_overlap = rotation_overlap
        self.crl_next_update = crl_next_update
        self.clock = clock
        # Whether this process runs the control duties (signs CRLs, retires,
        # rotates): the only process, or the fleet's active control plane.
        self.leads = leads
        self.view = RevocationView()
        self._state_seq = -1  # the store's change_seq the view was read at
        self.followed_at = time.monotonic()  # last successful read of it
        self.crl = b""
        self._crls: tuple[bytes, ...] = ()
        self._crl_signed_at: datetime | None = None
        self._lock = threading.RLock()
        self._seen: dict[PrincipalKey, datetime] = {}
        self._flushing: dict[PrincipalKey, datetime] = {}  # being written (flush_seen)
        # Called (and awaited by the admin plane) after a principal is disabled.
        self.on_disable = list(on_disable)

    # -- start-up ------------------------------------------------------------
    def bootstrap(self, ca_cert: Path | None, ca_key: Path | None) -> None:
        """Adopt the configured CA on first start, then publish CRLs and the
        live view from the store."""
        now = self.clock()
        if ca_cert is not None and ca_key is not None:
            ca = CertificateAuthority.load(ca_cert, ca_key)
            known = {c.id: c for c in self.store.cas()}
            configured = ca_id(ca.certificate)
            if configured not in known:
                # The operator replaced the CA files ([ca]): that CA is the
                # declared truth; CAs kept from before stop being trusted.
                for other in known.values():
                    if other.status != "retired":
                        log.warning("CA %s replaced by the configured CA %s", other.id,
                                    configured)
                        self.store.set_ca_status(other.id, "retired", None)
                self.store.add_ca(CaRecord(configured, ca.cert_pem().decode(),
                                           ca.key_pem().decode(), now))
        self.refresh()

    def import_certificate(self, pem: bytes, principal: PrincipalKey) -> None:
        """Record a certificate issued outside the admin API (the dev PKI), so
        revocation by principal and the access review know it."""
        import_certificate(self.store, pem, principal, self.clock())

    def is_revoked(self, pem: bytes) -> bool:
        return serial_hex(x509.load_pem_x509_certificate(pem)) in self.view.serials

    # -- the view the request path reads -------------------------------------
    def check(self, serial: str, principal: PrincipalKey) -> str | None:
        """Why this certificate may not be used now, or None. Also notes use."""
        view = self.view
        if serial in view.serials:
            return "certificate-revoked"
        if principal in view.disabled:
            return "principal-disabled"
        self._seen[principal] = self.clock()
        return None

    def follow(self) -> bool:
        """Re-read what the request path checks when the shared state moved
        (another replica or the control plane revoked a certificate, disabled
        a principal, published CRLs, rotated a key): every request checks the
        view, so open connections are refused from then on too, and new
        handshakes meet the new CRLs (D8). True when it changed."""
        seq = self.store.change_seq()
        if seq == self._state_seq:
            self.followed_at = time.monotonic()
            return False
        self.refresh()
        self.followed_at = time.monotonic()
        return True

    def refresh(self) -> None:
        """Rebuild the revocation view, the CRLs and the TLS material from the
        store. The process that leads (``leads``: the active control plane,
        or the only process) signs the CRLs and publishes them in the store;
        the others serve what it published."""
        with self._lock:
            # Read first: a change landing during the rebuild is seen next time.
            seq = self.store.change_seq()
            revoked = self.store.certificates(status="revoked")
            disabled = frozenset(s.key for s in self.store.principal_states() if s.disabled)
            self.view = RevocationView(frozenset(r.serial for r in revoked), disabled)
            self.keyring.reload()
            leads = self.leads()
            # Only the signer reads the CA keys (a data replica's role cannot).
            cas = [c for c in (self.store.cas() if leads else self.store.ca_certificates())
                   if c.status != "retired"]
            if leads:
                published = self._sign_crls(cas, revoked)
                after = self.store.publish_crls(published)
                # Our own publication is no news; anything else that moved is.
                seq = after if after == seq + 1 else seq
                crls = tuple(pem for _, pem in published)
                self._crl_signed_at = self.clock()
            else:
                live = {c.id for c in cas}
                crls = tuple(pem for ca, pem in self.store.crls() if ca in live)
            self._state_seq = seq
            self.crl = b"".join(crls)
            self._crls = crls
            if cas:
                bundle = "".join(c.cert_pem for c in cas).encode()
                if self.trust_bundle.read_bytes() != bundle:
                    # Keep the file true: clients and a restart read it.
                    # Whole or not at all: other processes of the host read it too.
                    def emit(write: Callable[[bytes], object]) -> int:
                        write(bundle)
                        return len(bundle)

                    write_atomically(self.trust_bundle, emit)
                    self.trust_bundle.chmod(0o644)  # public: CA certificates only
            if self.server_tls is not None:
                self.server_tls.update(self.material())
            self._update_metrics()

    def _sign_crls(self, cas: list[CaRecord], revoked: list[CertificateRecord]
                   ) -> list[tuple[str, bytes]]:
        """One CRL per CA not retired, the active CA's first."""
        crls = []
        for rec in sorted(cas, key=lambda c: c.status != "active"):
            ca = self._authority(rec)
            entries = [RevokedEntry(int(r.serial, 16), r.revoked_at or r.issued_at)
                       for r in revoked if r.issuer_ca == rec.id]
            crl = build_crl(ca, entries, crl_number=self.store.next_crl_number(),
                            now=self.clock(), next_update=self.crl_next_update)
            crls.append((rec.id, crl_pem(crl)))
        return crls

    def serve_tls(self) -> ServerTls:
        """The listeners' TLS, built from this lifecycle's material (after
        :meth:`bootstrap`) and kept current by it: every change of server
        certificate, CA or CRL swaps new material in without a restart."""
        if self.server_tls is None:
            material = self.material()
            # With a CA of our own, CRLs are checked in every handshake too.
            self.server_tls = ServerTls(material, check_crl=bool(material.crl_pems))
        return self.server_tls

    def material(self) -> TlsMaterial:
        """The listeners' TLS material: server certificate, the trust bundle
        (every CA not retired) and, with a CA of our own, one CRL per CA."""
        return TlsMaterial(self.server_cert.read_bytes(), self.server_key.read_bytes(),
                           self.trust_bundle.read_bytes(), self._crls)

    def _update_metrics(self) -> None:
        newest: dict[PrincipalKey, datetime] = {}
        for rec in self.store.certificates(status="active"):
            if rec.not_after > newest.get(rec.principal, datetime.min.replace(tzinfo=UTC)):
                newest[rec.principal] = rec.not_after
        server = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        newest[SERVER_PRINCIPAL] = server.not_valid_after_utc
        self.metrics.certificate_expiry.clear()
        for (tenant, kind, name), not_after in newest.items():
            self.metrics.certificate_expiry.labels(tenant, f"{kind}/{name}").set(
                not_after.timestamp())

    # -- audited actions -------------------------------------------------------
    def record_admin_event(self, actor: str, action: str, target: str, reason: str, outcome: str,
                           detail: str = "", incident: str | None = None,
                           extra: dict[str, str] | None = None) -> str:
        """One admin-plane audit event (``AdminEvent``). ``extra`` adds named fields (D6: a
        dual-controlled action carries ``requested_by`` and ``approved_by``).
        Raises if the audit log cannot be written: the caller then must not act."""
        incident = incident or new_incident_id()
        self.audit.record(AdminEvent.build(
            incident=incident, actor=actor, action=action, target=target, reason=reason,
            outcome=outcome, detail=detail, extra=extra))
        # An attempt is not yet a change: the SOC hears of its outcome.
        if self.soc is not None and reason != "read" and outcome != "attempt":
            # D12: every admin change, and every refused admin attempt.
            self.soc.emit("admin-change" if outcome == "done" else "admin-refused",
                          "notice" if outcome == "done" else "warning", incident, actor=actor,
                          action=action, target=target, outcome=outcome, detail=detail)
        return incident

    # -- certificates ----------------------------------------------------------
    def _authority(self, rec: CaRecord) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(rec.cert_pem.encode())
        key = serialization.load_pem_private_key(rec.key_pem.encode(), password=None)
        return CertificateAuthority(cert, key)  # type: ignore[arg-type]

    def active_ca(self) -> tuple[CaRecord, CertificateAuthority]:
        active = [c for c in self.store.cas() if c.status == "active"]
        if not active:
            raise AdminRefused(501, "no-ca", "this gateway has no CA configured ([ca])")
        return active[-1], self._authority(active[-1])

    def _issuer_id(self, cert: x509.Certificate) -> str:
        return issuer_id(cert)

    def _principal(self, tenant: str, kind: str, name: str) -> PrincipalKey:
        if (kind, name) == (CANARY_KIND, CANARY_NAME):
            # D1: the canary prober's certificates are the gateway's own, short
            # lived and made in-process (gateway.canary); nobody issues one.
            raise AdminRefused(422, "canary-principal-reserved",
                               f"{tenant}/{kind}/{name} is the gateway's own canary prober")
        if self.registry().principal(tenant, kind, name) is None:
            raise AdminRefused(404, "unknown-principal",
                               f"{tenant}/{kind}/{name} is not declared in tenants/")
        return (tenant, kind, name)

    def _within_contract(self, key: PrincipalKey) -> None:
        """D9: no certificate for a tenant whose contract has not started or has ended."""
        found = self.registry().principal(*key)
        refused = None if found is None else found[0].contract_refusal(self.clock())
        if refused is not None:
            raise AdminRefused(409, refused, f"tenant {key[0]}: outside its contract window")

    def check_issuable(self, principal: PrincipalKey, csr: bytes,
                       lifetime: timedelta | None = None) -> None:
        """Refuse now what :meth:`issue` would refuse later: a request that
        waits for a second admin (D6) must be issuable when approved."""
        key = self._principal(*principal)
        if key in self.view.disabled:
            raise AdminRefused(409, "principal-disabled", "the principal is disabled")
        self._within_contract(key)
        self.active_ca()
        try:
            check_csr(csr, expected_uri=spiffe_uri(self.trust_domain, *key), policy=self.policy,
                      lifetime=lifetime)
        except CsrRefused as exc:
            raise AdminRefused(422, exc.reason, str(exc)) from exc

    def issue(self, principal: PrincipalKey, csr: bytes, lifetime: timedelta | None = None,
              replaces: str | None = None) -> CertificateRecord:
        key = self._principal(*principal)
        if key in self.view.disabled:
            raise AdminRefused(409, "principal-disabled", "the principal is disabled")
        self._within_contract(key)
        rec, ca = self.active_ca()
        try:
            cert = issue_from_csr(ca, csr, expected_uri=spiffe_uri(self.trust_domain, *key),
                                  policy=self.policy, lifetime=lifetime, now=self.clock())
        except CsrRefused as exc:
            raise AdminRefused(422, exc.reason, str(exc)) from exc
        out = certificate_record(cert, key, rec.id, self.clock(), replaces)
        self.store.add_certificate(out)
        self.refresh()
        return out

    def rotate(self, serial: str, csr: bytes, overlap: timedelta | None = None,
               lifetime: timedelta | None = None) -> CertificateRecord:
        old = self.store.certificate(serial)
        if old is None or old.status != "active":
            raise AdminRefused(404, "unknown-certificate", f"no active certificate {serial}")
        new = self.issue(old.principal, csr, lifetime, replaces=serial)
        self.store.schedule_retirement(serial, self.clock() + (overlap or self.rotation_overlap))
        return new

    def revoke(self, serial: str, reason: str) -> CertificateRecord:
        if not self.store.revoke_certificate(serial, reason, self.clock()):
            raise AdminRefused(404, "unknown-certificate", f"no active certificate {serial}")
        self.metrics.revocations.labels(reason_label(reason)).inc()
        self.refresh()
        rec = self.store.certificate(serial)
        assert rec is not None
        return rec

    def set_disabled(self, principal: PrincipalKey, disabled: bool, actor: str,
                     reason: str) -> list[str]:
        """D8: a leaver is blocked at once: every certificate revoked, every
        request refused. Re-enabling revokes nothing back: new certificates
        must be issued."""
        key = self._principal(*principal)
        self.store.set_principal_state(PrincipalState(key, disabled, self.clock(), reason, actor))
        revoked = []
        if disabled:
            for rec in self.store.certificates(principal=key, status="active"):
                self.store.revoke_certificate(rec.serial, "cessation-of-operation",
                                              self.clock())
                self.metrics.revocations.labels("cessation-of-operation").inc()
                revoked.append(rec.serial)
        self.refresh()
        return revoked

    # -- the gateway's own material --------------------------------------------
    def rotate_server_certificate(self) -> CertificateRecord:
        rec, ca = self.active_ca()
        issued = ca.issue_server(["localhost"], ["127.0.0.1", "::1"], now=self.clock())
        write_private(self.server_key, issued.key_pem())
        self.server_cert.write_bytes(issued.cert_pem())
        out = certificate_record(issued.certificate, SERVER_PRINCIPAL, rec.id, self.clock())
        self.store.add_certificate(out)
        self.refresh()
        return out

    def rotate_ca(self, overlap: timedelta) -> CaRecord:
        """A new CA issues from now on; the old one stays trusted for the
        overlap, then is removed (and the server certificate moves over)."""
        old, _ = self.active_ca()
        subject = x509.load_pem_x509_certificate(old.cert_pem.encode()).subject
        cn = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        base = str(cn).split(" #", 1)[0]
        new_ca = CertificateAuthority.create(f"{base} #{self.clock():%Y%m%d%H%M%S}",
                                             now=self.clock())
        new = CaRecord(ca_id(new_ca.certificate), new_ca.cert_pem().decode(),
                       key_pem(new_ca.key).decode(), self.clock())
        self.store.add_ca(new)
        self.store.set_ca_status(old.id, "retiring", self.clock() + overlap)
        self.refresh()
        return new

    def issue_upstream_identity(self, uri: str) -> tuple[bytes, bytes]:
        """A client certificate for the gateway itself at an mTLS upstream."""
        _, ca = self.active_ca()
        issued = ca.issue_client(uri, now=self.clock())
        return issued.cert_pem(), issued.key_pem()

    def issue_canary_identity(self, tenant: str, lifetime: timedelta) -> tuple[bytes, bytes]:
        """A short-lived client certificate for ``tenant``'s canary principal,
        for the gateway's own isolation prober (gateway.canary): made
        in-process, its key held in memory, not recorded as an issuance (it
        opens canary resources only, and lives an hour)."""
        _, ca = self.active_ca()
        uri = spiffe_uri(self.trust_domain, tenant, CANARY_KIND, CANARY_NAME)
        issued = ca.issue_client(uri, now=self.clock(), lifetime=lifetime)
        return issued.cert_pem(), issued.key_pem()

    def rotate_signing_key(self) -> str:
        return self.keyring.rotate().kid

    # -- time-driven work --------------------------------------------------
    def take_seen(self) -> dict[PrincipalKey, datetime]:
        """The uses noted since the last call, for :meth:`flush_seen`. Call
        on the event loop's thread (where :meth:`check` notes them): the swap
        never races a request's note."""
        seen, self._seen = self._seen, {}
        self._flushing = {**self._flushing, **seen}
        return seen

    def flush_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        """Write uses taken by :meth:`take_seen` to the state: one commit,
        and with SQLite its ``fdatasync``, so the server runs it in a worker
        thread, off the event loop. On failure they go back to be written
        next time: a use is never lost to a failed commit."""
        if not seen:
            return
        try:
            self.store.record_last_seen(seen)
        except Exception:
            for key, at in seen.items():  # the loop may have noted a later use meanwhile
                self._seen.setdefault(key, at)
            raise
        finally:
            self._flushing = {k: v for k, v in self._flushing.items() if seen.get(k) != v}

    def maintain(self) -> None:
        """Retire what is due: rotated predecessors at the end of their
        overlap, CAs at the end of theirs, unneeded signing keys. The uses
        noted are not written here: this runs on the event loop, and under
        load there are always some noted since the last flush, so writing
        them here put a commit (and SQLite's ``fdatasync``) on the loop every
        round; the server writes them off the loop (:meth:`flush_seen`)
        before each round and when it stops."""
        now = self.clock()
        changed = False
        with self._lock:
            if not self.leads():  # a data replica or the standby: the leader does it
                self.metrics.signing_key_age.set(self.keyring.age_seconds(now))
                return
            for rec in self.store.due_retirements(now):
                self.store.revoke_certificate(rec.serial, "superseded", now)
                self.metrics.revocations.labels("superseded").inc()
                self.record_admin_event("gateway", "certificate-retire", rec.serial,
                                        "rotation overlap ended", "done")
                changed = True
            for ca_rec in self.store.cas():
                if ca_rec.status == "retiring" and ca_rec.retire_at and ca_rec.retire_at <= now:
                    server = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
                    if self._issuer_id(server) == ca_rec.id:
                        self.rotate_server_certificate()
                    self.store.set_ca_status(ca_rec.id, "retired", None)
                    self.record_admin_event("gateway", "ca-retire", ca_rec.id,
                                            "CA overlap ended", "done")
                    changed = True
            # The CRLs are re-signed well before they expire: an expired CRL
            # would refuse every handshake (the listeners check it).
            if self._crl_signed_at is not None and \
                    now - self._crl_signed_at >= self.crl_next_update / 2:
                changed = True
            if changed:
                self.refresh()
            self.keyring.maintain(now)
        self.metrics.signing_key_age.set(self.keyring.age_seconds(now))

    # -- access review (D8) ------------------------------------------------
    def review(self) -> list[dict[str, Any]]:
        """One row per declared principal (:func:`access_review`), with the
        uses noted and not yet written."""
        return access_review(self.store, self.registry(), {**self._flushing, **self._seen})
