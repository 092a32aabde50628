"""Exceptions of the gateway, split by who is at fault (STYLE.md, "Errors").

::

    GatewayError                  every error the gateway raises on purpose
    ├── ConfigError               configuration, tenant file or key file unusable, at start-up
    │   ├── TlsMaterialError        (tls) server TLS material that cannot be served
    │   └── ListenerUnavailable     (edge) a listener's address cannot be bound (in use)
    ├── RequestRefused            the caller is at fault or not allowed (4xx): status + reason
    │   ├── CredentialRefused       (edge) a known principal, revoked or disabled
    │   ├── AdminRefused            (pki) an admin-plane action refused (with a detail)
    │   ├── CsrRefused              (pki) a CSR the CA will not sign
    │   ├── LockboxRefused          (vault) a tenant lockbox step refused (D7)
    │   └── InvalidAssertion        (pki) a gateway assertion a shared system must refuse
    ├── StateFileRefused          (state) a backup or restore of the state file not done (exit 1)
    ├── UpstreamFailed            the shared system failed or misbehaved (502/504)
    ├── ClientError               (upstream) the HTTP client's wire errors; they never leave
    │                             gateway.upstream, which translates them into UpstreamFailed
    ├── GatewayFailed             the gateway cannot keep a promise: fail closed (503)
    │   ├── AuditWriteFailed        (audit) no trace, no request
    │   ├── VaultError              (vault) locked, tampered, or no such secret
    │   └── NotReadyYet             a fleet replica started before what it needs (exit 75)
    └── AdminCallFailed           (admin CLI) the admin plane unreachable (exit 3)
        └── AdminCallRefused        ... or it refused the client certificate (exit 4)

The pure core raises :class:`gateway.core.rejected.Rejected` (a reason and the
status the caller should see); :meth:`RequestRefused.from_core` turns it into a
refusal, at the boundary, in one place.

Callers see a problem document with a status, a short title and an incident
id; the precise ``reason`` goes to the audit event and a metric label only.
"""

from __future__ import annotations

from gateway.core.rejected import Rejected


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Configuration that cannot be used; the message names file and key."""


class ListenerUnavailable(ConfigError):
    """A listener cannot bind its address (in use, not permitted, not on this
    host). The message is one line a person can act on: the listener and
    the address (``data plane: cannot listen on 127.0.0.1:8443: address in
    use``); the command line prints it and exits 2, like a configuration
    error, since the fix is in the configuration or on the host."""


class RequestRefused(GatewayError):
    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None,
                 detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.detail = detail  # shown to the caller instead of the default (a limit's value)

    @classmethod
    def for_body(cls, exc: ValueError) -> RequestRefused:
        """A request or push body that is not the JSON the gateway reads: too
        deep, a key twice (one value per key: what is checked is what is
        forwarded), or not JSON at all. 400 with the reason saying which."""
        reason = exc.reason if isinstance(exc, Rejected) else ""
        return cls(400, _BODY_REASONS.get(reason, "body-malformed-json"))

    @classmethod
    def from_core(cls, rejected: Rejected, *,
                  headers: dict[str, str] | None = None) -> RequestRefused:
        """The refusal the caller gets for what the core rejected: its status
        and reason, nothing of its detail (that stays in the log)."""
        return cls(rejected.status, rejected.reason, headers=headers)


_BODY_REASONS = {"too-deep": "body-too-deep", "duplicate-key": "body-duplicate-key"}


class UpstreamFailed(GatewayError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class GatewayFailed(GatewayError):
    """The gateway cannot do what it promised (write its audit trail, open its
    vault): it refuses rather than act without it."""


class NotReadyYet(GatewayFailed):
    """A replica of a fleet started before what it only reads exists (the
    control plane makes the vault's data keys and publishes the CRLs): it
    stops with exit code 75 (EX_TEMPFAIL), and its supervisor (systemd,
    Kubernetes, ``serve --workers``) starts it again."""

    exit_code = 75
