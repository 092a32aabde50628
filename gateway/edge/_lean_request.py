"""The request the lean server (:mod:`gateway.edge._lean`) hands to the
data plane: :class:`LeanRequest` (what :class:`gateway.edge.HttpRequest`
names) and its body as it arrives, flow-controlled and decoded as it is
read; and ``_Refused``, what the HTTP layer refuses (private: it never leaves
the lean server, which turns it into its problem document)."""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp.helpers import parse_content_type
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from gateway.edge._lean_head import HeadReader

DECODE_STEP = 64 * 1024  # decoded bytes per read of a gzip or deflate body


class _Refused(Exception):
    """What the HTTP layer refuses: the status and reason of its problem document."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


@functools.lru_cache(maxsize=64)
def _mimetype(raw: str) -> str:
    return parse_content_type(raw)[0]  # aiohttp's reading, so both paths agree


class Body:
    """One request's body as it arrives (``request.content``): what the
    parser delivers is buffered until the handler reads it; the connection
    stops reading while too much is buffered (flow control). A gzip or
    deflate body is decoded as it is read, at most ``DECODE_STEP`` bytes at
    a time, so a small compressed body cannot fill the memory at once."""

    __slots__ = ("_chunks", "_conn", "_decoder", "_discard", "_encoding", "_eof", "_exc",
                 "_size", "_waiter")

    def __init__(self, conn: HeadReader | None, encoding: str | None = None) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = conn is None
        self._exc: BaseException | None = None
        self._discard = False
        self._waiter: asyncio.Future[None] | None = None
        self._encoding = encoding
        self._decoder: Any = None  # zlib's decompressobj, made at the first byte

    @property
    def done(self) -> bool:
        """Read to its end by the parser, or failed."""
        return self._eof or self._exc is not None

    def feed(self, data: bytes) -> None:
        if self._discard or self._exc is not None:
            return
        self._chunks.append(data)
        self._size += len(data)
        assert self._conn is not None
        self._conn.buffered += len(data)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The body will not arrive whole (connection lost, bad framing)."""
        if self.done:
            return
        self._exc = exc
        self._drop()
        self._wake()

    def discard(self) -> None:
        """Its handler is done: what is left is read and dropped."""
        self._discard = True
        self._decoder = None
        self._drop()

    async def readany(self) -> bytes:
        while True:
            if self._exc is not None:
                raise self._exc
            if self._encoding is not None:
                data = self._decode()
                if data or (self._eof and not self._chunks):
                    return data
            elif self._chunks:
                chunks = self._chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._consumed(self._size)
                return data
            elif self._eof:
                return b""
            await self._wait()

    def _decode(self) -> bytes:
        """Up to DECODE_STEP decoded bytes from what has arrived; at the end
        of the body, b"" once the compressed stream is complete."""
        decoder = self._decoder
        while True:
            data = b"" if decoder is None else decoder.unconsumed_tail
            if not data and self._chunks:
                data = self._chunks.popleft()
                self._consumed(len(data))
            if not data:
                if self._eof and decoder is not None and not decoder.eof:
                    raise _Refused(400, "http-parse-error")  # a truncated stream
                return b""
            if decoder is None:
                decoder = self._decoder = _decoder(self._encoding, data[0])
            elif decoder.eof:
                raise _Refused(400, "http-parse-error")  # bytes after the stream's end
            try:
                out: bytes = decoder.decompress(data, DECODE_STEP)
            except zlib.error as exc:
                raise _Refused(400, "http-parse-error") from exc
            if decoder.eof and decoder.unused_data:
                raise _Refused(400, "http-parse-error")
            if out:
                return out

    async def wait_done(self) -> None:
        while not self.done:
            await self._wait()

    async def _wait(self) -> None:
        assert self._conn is not None
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drop(self) -> None:
        self._chunks.clear()
        self._consumed(self._size)

    def _consumed(self, size: int) -> None:
        self._size -= size
        if size and self._conn is not None:
            self._conn.buffered -= size
            self._conn.flow()


def _decoder(encoding: str | None, first: int) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # deflate: RFC 9110 says zlib-wrapped; raw deflate is taken too, as aiohttp does.
    return zlib.decompressobj(zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS)


NO_BODY = Body(None)


class LeanRequest:
    """One parsed request, as the data plane reads it
    (:class:`gateway.edge.HttpRequest`)."""

    __slots__ = ("_conn", "_ctype", "content", "headers", "keep_alive", "method", "raw_headers",
                 "raw_path", "version")

    def __init__(self, conn: HeadReader, method: str, raw_path: str,
                 version: tuple[int, int], headers: CIMultiDictProxy[str],
                 raw_headers: tuple[tuple[bytes, bytes], ...], content: Body,
                 keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.raw_headers = raw_headers
        self.content = content
        self.keep_alive = keep_alive
        self._ctype: str | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport  # None once the connection is gone, as aiohttp's

    @property
    def content_type(self) -> str:
        if self._ctype is None:
            raw = self.headers.get("Content-Type")
            self._ctype = "application/octet-stream" if raw is None else _mimetype(raw)
        return self._ctype

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)

    @property
    def body_exists(self) -> bool:
        return self.content is not NO_BODY


class Unparsed:
    """A refusal of the HTTP layer waiting its turn among pipelined requests."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason
