"""What an admin-plane handler reads from its request, and the types the
admin route sets are written against (:mod:`gateway.admin._app`,
:mod:`gateway.admin._certs`, :mod:`gateway.admin._duties`,
:mod:`gateway.admin._vault`).

- ``CALLER``: the resolved caller, set by the guarded wrapper;
  ``AUDIT_EXTRA``: named fields a handler adds to its audit event (D6: both
  actors of a decision).
- :func:`read_body`: the JSON body, at most 64 KiB, nested at most
  ``MAX_JSON_DEPTH`` deep, one value per key, and every text in it valid
  Unicode, so no action can run whose audit event cannot be written (D10).
- :func:`_text`, :func:`_seconds`: a required text field, an optional
  positive duration; anything else is a 400 before anything happens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.core.jsonlimits import DuplicateKey, TooDeep, loads_limited
from gateway.core.model import Caller, Principal
from gateway.pki import AdminRefused

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64  # nesting of admin bodies (gateway.core.jsonlimits)
MAX_SECONDS = 100 * 365 * 86400.0  # any duration beyond is a typo (and overflows timedelta)
# The resolved caller of an admin request (set by the guarded wrapper).
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)
# Named fields a handler adds to its audit event (D6: both actors of a decision).
AUDIT_EXTRA: web.RequestKey[dict[str, str]] = web.RequestKey("audit_extra", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = dict[str, Any]
Action = Callable[[web.Request, Body], Awaitable[Any]]
Guard = Callable[..., Handler]  # guarded(action, roles, target, fn, *, write=True)
RouteSet = Callable[[web.UrlDispatcher, Guard], None]


def person_of(caller: Any) -> Principal:
    p = caller.principal
    return Principal(caller.tenant.id, p.kind, p.name, p.roles, p.team)


async def read_body(request: web.Request) -> Body:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise AdminRefused(413, "body-too-large", "request body over 64 KiB")
    try:
        raw = await request.read()
    except ConnectionError as exc:
        # The admin hung up mid-body: nothing is done, and the attempt is a
        # refusal (audited, D10), not a failure with a traceback.
        raise AdminRefused(400, "client-gone",
                           "the connection closed before the body arrived") from exc
    try:
        doc = loads_limited(raw or b"{}", MAX_JSON_DEPTH)
    except TooDeep as exc:
        raise AdminRefused(400, "body-too-deep",
                           f"JSON nested deeper than {MAX_JSON_DEPTH}") from exc
    except DuplicateKey as exc:
        raise AdminRefused(400, "body-duplicate-key", str(exc)) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise AdminRefused(400, "body-malformed-json", "the body must be a JSON object") from exc
    if not isinstance(doc, dict):
        raise AdminRefused(400, "body-not-object", "the body must be a JSON object")
    _check_encodable(doc)
    return doc


def _check_encodable(value: Any) -> None:
    """Every text of the body must be valid Unicode (a JSON ``\\ud800`` escape
    is not): checked before anything happens, so no action can run whose
    audit event cannot be written (D10)."""
    texts: list[str] = []
    stack = [value]
    while stack:  # iterative: the depth is bounded already, but no recursion needed
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AdminRefused(400, "field-not-utf8",
                               "a text field is not valid Unicode (lone surrogate)") from exc


def _text(doc: Body, key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise AdminRefused(400, "field-missing",
                           f"field {key!r} (a non-empty string) is required")
    return value


def _seconds(doc: Body, key: str, unit: float = 1.0) -> timedelta | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
            or not float(value) * unit <= MAX_SECONDS:  # also NaN and infinity
        raise AdminRefused(400, "field-invalid",
                           f"field {key!r} must be a positive number (at most 100 years)")
    return timedelta(seconds=float(value) * unit)
