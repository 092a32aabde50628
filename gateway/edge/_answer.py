"""What a data handler answers: an :class:`Answer`, the status, headers and
body the edge writes as they are (gateway.edge._lean_wire.serialize), or
hands to aiohttp as a ``web.Response`` when the data listener runs on
aiohttp's server (``[gateway] http_server = "aiohttp"``).

Not a ``web.Response`` itself: one of those is built for every data-plane
request, and aiohttp's (its ``StreamResponse`` state, the content-type and
status setters, a property per read) costs about three times what this
slotted object does (bench/README.md, "The answer without aiohttp's
response"). The headers are a case-insensitive multidict, as aiohttp's,
so a name is the same name in any case (RFC 9110 §5.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus

from aiohttp import web
from multidict import CIMultiDict

# The reason phrase of a status, as aiohttp writes it ("" for one it does not know).
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class Answer:
    """One answer of the data plane: ``status``, ``reason`` (the status's
    phrase unless given), ``headers`` (``content_type``, when given, is its
    Content-Type), ``body`` (bytes, sent as they are); ``keep_alive`` False
    once :meth:`force_close` was called (the connection ends after it)."""

    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None, *,
                 content_type: str | None = None, reason: str | None = None) -> None:
        self.status = status
        self.reason = _PHRASES.get(status, "") if reason is None else reason
        self.body = body
        self.headers: CIMultiDict[str] = CIMultiDict(headers) if headers else CIMultiDict()
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.keep_alive: bool | None = None

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.reason} ({len(self.body)} bytes)>"

    @property
    def content_type(self) -> str:
        """The Content-Type's media type (no parameters), "" without one."""
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers["Content-Type"] = value

    def set_status(self, status: int) -> None:
        """Another status, with its own phrase."""
        self.status = status
        self.reason = _PHRASES.get(status, "")

    def force_close(self) -> None:
        """No next request on this connection after this answer."""
        self.keep_alive = False

    def to_web(self) -> web.Response:
        """The same answer as aiohttp's server writes it."""
        response = web.Response(status=self.status, reason=self.reason, body=self.body,
                                headers=self.headers)
        if self.keep_alive is False:
            response.force_close()
        return response
