"""The keep-alive connection (plain TCP or TLS) that carries the gateway's
calls to a shared system: an asyncio protocol around the sans-IO
:class:`~gateway.upstream._http.ResponseReader`, at most one request in
flight, never pipelined, and the answer's deadline."""

from __future__ import annotations

import asyncio
from typing import cast

from gateway.upstream._http import ClientError, NoResponse, ResponseReader


class Connection(asyncio.Protocol):
    """One connection: at most one request in flight, never pipelined."""

    def __init__(self, registry: set[Connection]) -> None:
        self.registry = registry  # the pool's open connections
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.waiter: asyncio.Future[ResponseReader] | None = None
        self.closed = False
        self.idle_since = 0.0
        # The answer's deadline, and the timer that checks it. The timer is
        # left armed after an answer: the next request on the connection
        # (its deadline later) re-arms it only when it fires, so a
        # keep-alive connection costs one timer per timeout, not one per
        # request.
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but serve its API.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.registry.add(self)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            # SECURITY: an idle connection has nothing to say; bytes now would be
            # taken as the answer to the next request.
            self.abort()
            return
        try:
            done = reader.feed(data)
        except ClientError as exc:
            self._settle(exc)
            self.abort()
            return
        if done:
            self._settle(None)

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.registry.discard(self)
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        reader = self.reader
        if reader is None or self.waiter is None or self.waiter.done():
            return
        try:
            reader.feed_eof()
        except ClientError as error:
            error.__cause__ = exc
            self._settle(error)
            return
        self._settle(None)

    def _settle(self, exc: BaseException | None) -> None:
        """The exchange in flight is over: its waiter gets the reader (or
        the error), and the connection holds neither any more."""
        waiter, reader = self.waiter, self.reader
        self.waiter = self.reader = None
        if waiter is None or waiter.done():
            return
        if exc is None:
            assert reader is not None
            waiter.set_result(reader)
        else:
            waiter.set_exception(exc)

    def _deadline_due(self) -> None:
        """The timer fired: the request in flight, if any, is timed out at
        its deadline, or the timer re-armed for it."""
        self._timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Idle, or answered in this loop iteration (its caller not yet
            # resumed): nothing to time, and the connection may be reused.
            return
        loop = waiter.get_loop()
        if loop.time() >= self.deadline:
            self._settle(TimeoutError("no complete answer within the timeout"))
            self.abort()
        else:
            self._timer = loop.call_at(self.deadline, self._deadline_due)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def send(self, loop: asyncio.AbstractEventLoop, data: bytes, reader: ResponseReader,
             deadline: float) -> asyncio.Future[ResponseReader]:
        """Write one request; the future is ``reader`` once it has read the
        whole answer (or fails: the connection is then not to be reused).
        Not a coroutine: the caller awaits the future itself, one frame
        less to make and to resume per request."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise NoResponse("connection already closed")
        self.reader = reader
        waiter: asyncio.Future[ResponseReader] = loop.create_future()
        self.waiter = waiter
        transport.write(data)
        self.deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none armed, or for later
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._deadline_due)
        return waiter
