"""The wire forms of the lean server (:mod:`gateway.edge._lean`): which
request targets it takes, and an :class:`~gateway.edge._answer.Answer`
serialized as aiohttp would write it."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import TYPE_CHECKING

from yarl import URL

from gateway.core.native import native as _native

if TYPE_CHECKING:
    from gateway.edge._answer import Answer
    from gateway.edge._lean_request import LeanRequest

_EMPTY_BODY_STATUS = frozenset((204, 304, *range(100, 200)))


def target_form_ok(method: str, target: str) -> bool:
    """The request-target forms aiohttp accepts (RFC 9112 §3.2): origin-form,
    authority-form for CONNECT, asterisk-form for OPTIONS, absolute-form
    with a host."""
    if target[:1] == "/":
        return True
    if method == "CONNECT":
        try:
            return URL.build(authority=target, encoded=True).raw_host is not None
        except ValueError:
            return False
    if target == "*":
        return method == "OPTIONS"
    rest = target.partition(":")[2]
    if rest[:2] != "//" or rest[2:3] in ("", "/", "?", "#"):
        return False
    try:
        return URL(target, encoded=True).raw_host is not None
    except ValueError:
        return False


_date = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True)
    return str(_date[1])


def _no_body(method: str, status: int) -> bool:
    """No body is sent: an answer to HEAD, a 1xx, 204 or 304."""
    return method == "HEAD" or status in _EMPTY_BODY_STATUS


def _body_of(response: Answer) -> bytes:
    raw = response.body
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray):
        return bytes(raw)
    raise ValueError("not a body of bytes")


def serialize(request: LeanRequest, response: Answer,
              keep_alive: bool) -> tuple[bytes, bytes]:
    """The status line and headers, and the body, of ``response`` as aiohttp
    would write them: Content-Length (none on 1xx/204/304, none for an empty
    HEAD or 304 answer), Date, ``Connection: close`` (HTTP/1.1) or
    ``keep-alive`` (HTTP/1.0), no body for HEAD. No Server banner is added.
    Raises ValueError for CR or LF in a header (no response splitting).
    The head is written in C where gateway.core._native was built, for plain
    ASCII headers; ``serialize_reference`` is the specification."""
    if _native is not None:
        body = _body_of(response)
        major, minor = request.version
        method = request.method
        status = response.status
        written = _native.answer_head(major, minor, status, response.reason,
                                      list(response.headers.items()), method, len(body),
                                      keep_alive, http_date())
        if written is not None:
            head, length = written
            if _no_body(method, status):
                return head, b""
            if 0 <= length < len(body):
                return head, body[:length]
            return head, body
    return serialize_reference(request, response, keep_alive)


def serialize_reference(request: LeanRequest, response: Answer,
                        keep_alive: bool) -> tuple[bytes, bytes]:
    """``serialize`` in Python: the specification of ``answer_head`` in
    gateway/core/_native_wire.c."""
    status = response.status
    method = request.method
    body = _body_of(response)
    headers = response.headers
    empty = _no_body(method, status)
    drop_length = status in _EMPTY_BODY_STATUS or (method == "CONNECT" and 200 <= status < 300)
    major, minor = request.version
    lines = [f"HTTP/{major}.{minor} {status} {response.reason}\r\n"]
    length: int | None = None
    for name, value in headers.items():
        lname = name.lower()
        if lname == "content-length":
            if drop_length:
                continue
            length = int(value)
        elif lname == "transfer-encoding" and empty:
            continue
        lines.append(f"{name}: {value}\r\n")
    if length is None and not drop_length and (body or (status != 304 and method != "HEAD")):
        length = len(body)
        lines.append(f"Content-Length: {length}\r\n")
    if not empty and length != 0 and "Content-Type" not in headers:
        lines.append("Content-Type: application/octet-stream\r\n")
    if "Date" not in headers:
        lines.append(f"Date: {http_date()}\r\n")
    if "Connection" not in headers:
        if keep_alive:
            if (major, minor) == (1, 0):
                lines.append("Connection: keep-alive\r\n")
        elif (major, minor) == (1, 1):
            lines.append("Connection: close\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # SECURITY: every line ends in the one CR LF its element put there; any
    # other CR or LF (a CR LF inside a value too) would split the answer.
    if head.count("\r") != len(lines) or head.count("\n") != len(lines):
        raise ValueError("CR or LF in a response header")
    if empty:
        body = b""
    elif length is not None and len(body) > length:
        body = body[:length]
    return head.encode("utf-8"), body
