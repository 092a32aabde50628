"""Security events as RFC 5424 syslog, over UDP (RFC 5426) or TCP (RFC 6587),
for the SIEM the 24/7 SOC watches (D12).

One event becomes one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [gateway@32473 incident="..." ...] BOM{json}

- PRI is ``facility * 8 + severity code`` (facility 10 is authpriv, RFC 5424
  §6.2.1); the severity names are those of ``gateway.audit._soc.SEVERITIES``.
- TIMESTAMP is the event's ``ts`` in UTC with microseconds and ``Z``.
- MSGID is the event ``kind``, cut to the header's 32 printable US-ASCII
  characters.
- One structured-data element carries the incident id first, then the other
  fields sorted by name (not ``ts``, ``kind`` and ``severity``, which are in
  the header). Scalars are written as text (``true``, ``null``, ``12.5``),
  nested values as compact JSON.
- MSG is the whole event as compact, key-sorted UTF-8 JSON behind a BOM
  (§6.4): the same document the JSON-lines file sink writes, so a SIEM that
  ignores structured data loses nothing, and a key that had to be rewritten
  to fit the SD-NAME grammar is still there under its real name.

The message never contains a raw line break: JSON escapes control characters
and the structured data replaces them (see ``_param_value``), so a field a
caller controls cannot forge a second log line at a relay that splits on
newlines.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.errors import ConfigError

log = logging.getLogger("gateway.audit")

# RFC 5424 §6.2.1, table 2.
SEVERITY_CODES: Mapping[str, int] = {
    "emergency": 0, "alert": 1, "critical": 2, "error": 3,
    "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
SD_NAME = "gateway"
# Header fields already carried by PRI, TIMESTAMP and MSGID.
_HEADER_FIELDS = frozenset({"ts", "kind", "severity"})
# RFC 5424 §6: field lengths of the header.
_MAX_HOSTNAME, _MAX_APP_NAME, _MAX_PROCID, _MAX_MSGID, _MAX_SD_NAME = 255, 48, 128, 32, 32
_SD_NAME_FORBIDDEN = frozenset('= ]"')
_FORMAT_KEYWORDS = frozenset({"app_name", "hostname", "facility", "enterprise_id"})


def _printusascii(text: str, limit: int, forbidden: frozenset[str] = frozenset()) -> str:
    """Replace what is not PRINTUSASCII (%d33-126) or is forbidden by ``_``,
    cut to ``limit``; NILVALUE when nothing is left."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 and c not in forbidden else "_"
                      for c in text[:limit])
    return cleaned or NILVALUE


def _sd_name(key: str) -> str:
    name = _printusascii(key, _MAX_SD_NAME, _SD_NAME_FORBIDDEN)
    return "_" if name == NILVALUE and key != NILVALUE else name


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(
        value, sort_keys=True, separators=(",", ":"), default=str)
    # SECURITY: no control characters (CR, LF, NUL...) in the SD, against log
    # forging at relays that split on newlines; the JSON MSG keeps the exact value.
    text = "".join("\ufffd" if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in text)
    # RFC 5424 §6.3.3: '"', '\' and ']' are escaped with a backslash.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(ts: Any) -> str:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return NILVALUE
    try:
        instant = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return NILVALUE
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_rfc5424(event: Mapping[str, Any], *, app_name: str = "shared-grid-gateway",
                   hostname: str | None = None, facility: int = 10,
                   enterprise_id: int = 32473) -> bytes:
    """One RFC 5424 message for one security event (see the module docstring).

    Raises ``ValueError`` for an unknown severity, a facility outside 0-23 or
    an enterprise id that is not a positive number.
    """
    severity = event.get("severity")
    if severity not in SEVERITY_CODES:
        raise ValueError(f"unknown severity {severity!r}")
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0-23, not {facility}")
    if enterprise_id < 1:
        raise ValueError(f"enterprise id must be a positive number, not {enterprise_id}")
    fields = {str(k): v for k, v in event.items()}
    pri = facility * 8 + SEVERITY_CODES[str(severity)]
    host = _printusascii(socket.gethostname() if hostname is None else hostname,
                         _MAX_HOSTNAME)
    header = " ".join((
        f"<{pri}>1",
        _timestamp(fields.get("ts")),
        host,
        _printusascii(app_name, _MAX_APP_NAME),
        _printusascii(str(os.getpid()), _MAX_PROCID),
        _printusascii(str(fields.get("kind", "")), _MAX_MSGID),
    ))
    keys = sorted((k for k in fields if k not in _HEADER_FIELDS),
                  key=lambda k: (k != "incident", k))
    params: list[str] = []
    seen: set[str] = set()
    for key in keys:
        name = _sd_name(key)
        if name in seen:  # two keys that sanitise alike: the first wins, MSG has both
            continue
        seen.add(name)
        params.append(f' {name}="{_param_value(fields[key])}"')
    sd = f"[{SD_NAME}@{enterprise_id}{''.join(params)}]"
    body = json.dumps(fields, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, default=str)
    return (f"{header} {sd} ".encode("utf-8", "replace") + BOM
            + body.encode("utf-8", "replace"))


def _is_loopback(sockaddr: tuple[Any, ...]) -> bool:
    try:
        return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


class SyslogSink:
    """Sends security events to a syslog collector; a sink for SecurityEvents.

    ``transport="udp"``: one datagram per message, no framing (RFC 5426).
    ``transport="tcp"``: octet-counting framing ``LEN SP MSG`` (RFC 6587
    §3.4.1). A connection the collector closed is noticed before the next
    send and reopened; a send that fails on an open connection is retried
    once on a new one. After a failed connect no new attempt is made for
    ``retry_interval`` seconds, so a dead collector costs at most one
    ``timeout`` per interval, not one per event. TCP without application
    acknowledgements can still lose a message written just as the collector
    goes away; the JSON-lines file sink remains the durable record.

    ``send()`` blocks for at most ``timeout`` seconds and never raises:
    failures are counted in ``failures`` and logged once per outage.

    Only loopback collectors are allowed unless ``allow_remote=True`` (the
    project rule: tests and demos talk to loopback only). A loopback host is
    resolved once, here, and the address pinned, so a later DNS answer
    cannot send events off the machine; a remote host is resolved at each
    connect so a SIEM fail-over by DNS is followed.

    ``format_kw`` goes to ``format_rfc5424`` (app_name, hostname, facility,
    enterprise_id) and is checked here, at start-up.
    """

    def __init__(self, host: str, port: int, *, transport: str = "udp",
                 allow_remote: bool = False, timeout: float = 1.0,
                 retry_interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 **format_kw: Any) -> None:
        if transport not in ("udp", "tcp"):
            raise ConfigError(f"syslog transport must be 'udp' or 'tcp', not {transport!r}")
        if not 0 < port < 65536:
            raise ConfigError(f"syslog port must be 1-65535, not {port}")
        unknown = set(format_kw) - _FORMAT_KEYWORDS
        if unknown:
            raise ConfigError(f"unknown syslog format option(s): {', '.join(sorted(unknown))}")
        try:
            format_rfc5424({"severity": "info"}, **format_kw)
        except ValueError as exc:
            raise ConfigError(f"syslog format: {exc}") from exc
        self.host = host
        self.port = port
        self.transport = transport
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.failures = 0
        self.sent = 0
        self._format_kw = format_kw
        self._clock = clock
        self._socktype = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._next_connect = 0.0
        self._down = False
        self._closed = False
        self._pinned: Sequence[_AddrInfo] | None = None
        if not allow_remote:
            try:
                infos = socket.getaddrinfo(host, port, type=self._socktype)
            except OSError as exc:
                raise ConfigError(f"syslog host {host!r} does not resolve: {exc}") from exc
            # SECURITY: events stay on this machine unless remote is asked for.
            if not infos or not all(_is_loopback(info[4]) for info in infos):
                raise ConfigError(f"syslog host {host!r} is not a loopback address; "
                                  "pass allow_remote=True to send events off this machine")
            self._pinned = infos[:1]

    def send(self, event: Mapping[str, Any]) -> None:
        try:
            message = format_rfc5424(event, **self._format_kw)
        except Exception:
            log.exception("security event could not be formatted for syslog")
            self.failures += 1
            return
        frame = message if self.transport == "udp" else b"%d %s" % (len(message), message)
        with self._lock:
            if self._closed:
                self.failures += 1
                return
            for _ in range(2):  # the open connection, then at most one new one
                sock = self._connection()
                if sock is None:
                    break
                try:
                    if self.transport == "udp":
                        sock.send(frame)
                    else:
                        sock.sendall(frame)
                except OSError as exc:
                    log.debug("syslog send to %s:%s failed: %s", self.host, self.port, exc)
                    self._drop()
                    continue
                self.sent += 1
                if self._down:
                    self._down = False
                    log.info("syslog collector %s:%s reachable again", self.host, self.port)
                return
            self.failures += 1
            if not self._down:
                self._down = True
                log.warning("syslog collector %s:%s unreachable; security events are "
                            "kept in the other sinks only", self.host, self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> SyslogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> socket.socket | None:
        if self._sock is not None and self.transport == "tcp" and self._peer_closed(self._sock):
            self._drop()
        if self._sock is not None:
            return self._sock
        if self._clock() < self._next_connect:
            return None
        try:
            self._sock = self._connect()
        except OSError as exc:
            log.debug("syslog connect to %s:%s failed: %s", self.host, self.port, exc)
            self._next_connect = self._clock() + self.retry_interval
            return None
        return self._sock

    def _connect(self) -> socket.socket:
        infos = self._pinned or socket.getaddrinfo(self.host, self.port, type=self._socktype)
        error: OSError = OSError(f"no address for {self.host!r}")
        for family, socktype, proto, _, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                sock.settimeout(self.timeout)
                sock.connect(sockaddr)  # UDP: fixes the peer, so ICMP errors surface
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """Did the collector close or reset the connection? A collector never
        writes, so anything readable is EOF, an error, or noise to discard."""
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
