"""Enforcing the edge limits (:class:`gateway.config.EdgeLimits`, where the
table of limits and defaults is): the listener self-check, the connection
book (per listener, per tenant, the memory budget) and the process RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable

from gateway.config import EdgeLimits
from gateway.edge._peer import Peers
from gateway.errors import ConfigError

# How stale the admission's RSS reading may be: at ~800 handshakes/s that
# admits at most ~40 connections (~3 MiB) past the budget before it is seen.
RSS_READ_EVERY_S = 0.05


def self_check(context: ssl.SSLContext, limits: EdgeLimits) -> None:
    """Refuse to start a listener that would not be what it claims."""
    if context.verify_mode != ssl.CERT_REQUIRED:
        raise ConfigError("self-check: the listener does not require client certificates")
    if not context.get_ca_certs():
        raise ConfigError("self-check: the trust bundle is empty")
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ConfigError("self-check: TLS older than 1.2 is allowed")
    for name in ("max_request_line_bytes", "max_header_bytes", "max_header_block_bytes",
                 "max_headers", "header_timeout_s", "body_timeout_s", "handshake_timeout_s",
                 "keepalive_timeout_s", "max_connections", "max_connections_per_tenant",
                 "max_in_flight", "memory_budget_mb", "max_push_records_mb",
                 "max_push_meter_days_mb", "max_push_in_progress"):
        if not getattr(limits, name) > 0:
            raise ConfigError(f"self-check: limit {name} is not applied")


class ConnectionBook:
    """Open connections per listener and per tenant (noisy neighbours cannot
    take every socket)."""

    def __init__(self, limits: EdgeLimits, trust_domain: str, *,
                 peers: Peers | None = None,
                 rss: Callable[[], int] | None = None,
                 on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self.limits = limits
        # The certificates, read once per connection (shared with the resolver
        # when the server passes the same Peers to both).
        self.peers = peers or Peers(trust_domain)
        self.total = 0
        self.per_tenant: Counter[str] = Counter()
        self.refused = 0
        self._rss = rss or rss_bytes
        self._budget = limits.memory_budget_mb * 1024 * 1024
        self._on_refused = on_refused
        self._over_budget = False
        self._rss_read_at = -RSS_READ_EVERY_S

    def tenant_of(self, transport: asyncio.BaseTransport) -> str:
        return self.peers.of(transport).tenant

    def admit(self, tenant: str) -> bool:
        """Count a new connection in, or say no: over the listener's or the
        tenant's cap, or with the process over its memory budget (an RSS
        read at most every 50 ms: memory stays bounded by the budget plus what
        the connections admitted meanwhile allocate)."""
        if self.total >= self.limits.max_connections:
            return self._refuse("connection-cap")
        if tenant and self.per_tenant[tenant] >= self.limits.max_connections_per_tenant:
            return self._refuse("tenant-connection-cap")
        if self._over():
            return self._refuse("memory-budget")
        self.total += 1
        if tenant:
            self.per_tenant[tenant] += 1
        return True

    def _over(self) -> bool:
        """RSS over the budget, read at most every RSS_READ_EVERY_S (reading
        /proc costs ~70 µs, 5 % of a handshake at full rate)."""
        now = time.monotonic()
        if now - self._rss_read_at >= RSS_READ_EVERY_S:
            self._rss_read_at = now
            self._over_budget = self._rss() > self._budget
        return self._over_budget

    def _refuse(self, reason: str) -> bool:
        self.refused += 1
        self._on_refused(reason)
        return False

    def release(self, tenant: str) -> None:
        self.total -= 1
        if tenant:
            self.per_tenant[tenant] -= 1
            if self.per_tenant[tenant] <= 0:
                del self.per_tenant[tenant]


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_statm: int | None = None  # /proc/self/statm, kept open: a pread, not an open, per reading
_statm_lock = threading.Lock()


def _forget_statm() -> None:
    """In a forked child: the descriptor inherited reads the parent's memory
    (/proc/self was resolved when it was opened), so the next reading opens
    the child's own; and a lock another thread held at the fork stays held
    in the child, so the child takes a new one."""
    global _statm, _statm_lock
    _statm_lock = threading.Lock()
    if _statm is not None:
        with contextlib.suppress(OSError):
            os.close(_statm)
    _statm = None


os.register_at_fork(after_in_child=_forget_statm)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc); 0 where it cannot be
    read. The file stays open (an open, a read and a close cost ≈ 10 times a
    ``pread``)."""
    global _statm
    try:
        fd = _statm
        if fd is None:
            with _statm_lock:
                if _statm is None:
                    _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
                fd = _statm
        pages = int(os.pread(fd, 128, 0).split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * _PAGE_SIZE
