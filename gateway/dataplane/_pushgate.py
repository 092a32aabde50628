"""The push intake's memory guard (D1 availability): one tenant's push must
never make the gateway refuse another tenant's connections.

- ``PushGate.slot``: at most ``limits.max_push_in_progress`` large push bodies
  are read and routed at once; one more gets 503 + ``Retry-After`` at once
  (before its body is read), so concurrent pushes cannot multiply the peak.
  A push that declares at most ``SMALL_PUSH_BYTES`` takes no slot: it costs no
  more than any other route's body.
- ``PushGate.read``: the body, refused (413, the limits named in the detail)
  past the larger cap as it arrives, and past its form's cap before it is
  parsed (:mod:`gateway.core.push.size`).
- ``release_memory()``: once large pushes have paused for ``TRIM_AFTER_S``,
  the heap pages their parses freed go back to the kernel (glibc keeps them
  otherwise, and the RSS the memory admission reads would stay high after
  the push; bench/README.md). Not after each push: a run of pushes reuses
  those pages instead of faulting them in again for every batch.
- ``fix_mmap_threshold()``: blocks of 4 MiB and more (bodies, their decoded
  text, large outbox payloads) are always mmapped, so freeing one unmaps it.
  glibc's default raises the threshold to the largest block freed (up to 32
  MiB), after which a 24 MiB payload decrypted for each delivery retry
  stayed in the heap: measured, 424 MiB of RSS instead of 120 after one
  push (bench/README.md). Smaller blocks (a tenant's part, SQLite's copy
  of it) come from the heap, which the trim returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
from collections.abc import AsyncIterator, Callable

from gateway.config import EdgeLimits
from gateway.core.push.size import MiB, PushSizes, oversized
from gateway.dataplane._exchange import Exchange, read_body
from gateway.edge import HttpRequest
from gateway.errors import RequestRefused

SMALL_PUSH_BYTES = 1 * MiB  # the data plane's default route body limit
BUSY_RETRY_AFTER_S = 2
TRIM_AFTER_S = 1.0  # after the last large push ends, if no other has begun


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0) (every arena), or nothing where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)  # ctypes releases the GIL meanwhile

    return release


release_memory = _malloc_trim()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 * MiB


def fix_mmap_threshold() -> None:
    """mallopt(M_MMAP_THRESHOLD, 1 MiB): also stops glibc's dynamic threshold."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class PushGate:
    def __init__(self, limits: EdgeLimits) -> None:
        self.sizes = PushSizes(limits.max_push_records_mb * MiB,
                               limits.max_push_meter_days_mb * MiB)
        self.max_in_progress = limits.max_push_in_progress
        self.in_progress = 0  # touched on the event loop only
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trimming: asyncio.Future[None] | None = None  # kept: a task needs a reference
        fix_mmap_threshold()

    @contextlib.asynccontextmanager
    async def slot(self, declared_bytes: int | None) -> AsyncIterator[None]:
        """Hold a large-push slot while the body is read and routed; after
        it, give the freed heap back to the kernel (in a worker thread)."""
        if declared_bytes is not None and declared_bytes <= SMALL_PUSH_BYTES:
            yield
            return
        if self.in_progress >= self.max_in_progress:
            # SECURITY: D1. A second large push would double the peak: later.
            raise RequestRefused(503, "push-busy", headers={
                "Retry-After": str(BUSY_RETRY_AFTER_S), "Connection": "close"})
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1
            self._trim_later()

    def _trim_later(self) -> None:
        """Give the freed heap back once large pushes have paused for
        TRIM_AFTER_S: one trim after a run of pushes, not one per push (each
        trim makes the next push fault the same pages in again)."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._trim)

    def _trim(self) -> None:
        self._trim_timer = None
        if self.in_progress:
            return  # a push began meanwhile: its end trims
        self._trimming = asyncio.ensure_future(asyncio.to_thread(release_memory))

    def refused(self, *, close: bool = False) -> RequestRefused:
        """413 naming the limits (the connection closes when the body is unread)."""
        return RequestRefused(413, "push-too-large",
                              headers={"Connection": "close"} if close else None,
                              detail=self.sizes.detail())

    async def read(self, request: HttpRequest, ex: Exchange, outer_limit: int,
                   timeout_s: float, *, columnar_allowed: bool) -> bytes:
        """The body, within ``outer_limit`` (``push.max_body_bytes``) and the caps."""
        limit = min(outer_limit, self.sizes.largest if columnar_allowed
                    else self.sizes.records_bytes)
        try:
            raw = await read_body(request, limit, ex, timeout_s)
        except RequestRefused as exc:
            if exc.status == 413:
                raise self.refused(close=True) from exc
            raise
        if oversized(raw, self.sizes, columnar_allowed=columnar_allowed):
            raise self.refused()
        return raw
