"""Ports for listeners that another process opens later.

A port found free by binding port 0 comes from the kernel's ephemeral
range: the same range every outgoing connection takes its local port from.
Between closing that probe and the other process's ``bind``, a connection to
PostgreSQL or to a simulator can take the port, and the replica exits with
"address in use" (seen once in CI on a fleet start). A port *below* the
ephemeral range is never handed out by the kernel on its own, so only
another program's explicit ``bind`` can take it in that window; and this
process never hands out the same one twice. Processes that pick ports side
by side (the test suite's workers) each take a slice of their own
(``GATEWAY_SPARE_PORT_SLICE``, "k/n": the k-th of n, from 0), so no two of
them can pick the same port either.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, when the file cannot be read
LOWEST = 1024  # never a privileged port
SPAN = 16384  # how far below the ephemeral range to look
MIN_ROOM = 64  # below this, not worth searching
SLICE_ENV = "GATEWAY_SPARE_PORT_SLICE"

_given: set[int] = set()
_lock = threading.Lock()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for automatically chosen local ports."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def spare_port(host: str = "127.0.0.1", *, path: Path = EPHEMERAL_RANGE_FILE) -> int:
    """A port free on ``host`` now, outside the ephemeral range (in this
    process's slice of the room below it), and not returned before by this
    process. Falls back to a kernel-chosen port when that room is too small
    or none of it is free."""
    low, _ = ephemeral_range(path)
    first, room = _slice(max(LOWEST, low - SPAN), low)
    with _lock:
        if room >= MIN_ROOM:
            start = random.randrange(room)  # where to start; not a secret
            for step in range(room):  # every port of the room once, from a random one
                port = first + (start + step) % room
                if port not in _given and _bindable(host, port):
                    _given.add(port)
                    return port
        with socket.socket() as sock:  # no room below the range: the kernel's choice
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        _given.add(port)
        return port


def _slice(first: int, end: int) -> tuple[int, int]:
    """(first port, ports) of ``first..end-1`` that is this process's."""
    spec = os.environ.get(SLICE_ENV, "")
    if not spec:
        return first, max(end - first, 0)
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"{SLICE_ENV}={spec!r}: expected k/n, e.g. 0/2") from None
    if not 0 <= k < n:
        raise ValueError(f"{SLICE_ENV}={spec!r}: k must be 0 to n-1")
    size = max(end - first, 0) // n
    return first + k * size, size


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


__all__ = ["SLICE_ENV", "ephemeral_range", "spare_port"]
