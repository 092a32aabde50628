"""RFC 9457 problem documents: every refusal the gateway gives.

The caller gets a type, a title, the status, a short detail and an
``incident`` id; the precise reason code stays in the audit event and the
metrics (opaque to the caller, detailed in the log).
"""

from __future__ import annotations

import json
import os
import time

PROBLEM_TYPE_BASE = "urn:shared-grid-gateway:problem:"
CONTENT_TYPE = "application/problem+json"

# slug -> (title, detail shown to the caller)
PROBLEMS: dict[str, tuple[str, str]] = {
    "bad-request": ("Bad request", "The request is malformed or ambiguous and was not forwarded."),
    "unauthenticated": ("Unknown client", "The client certificate does not name a known "
                        "principal of a declared tenant."),
    "forbidden": ("Forbidden", "The caller may not perform this request."),
    "not-found": ("Not found", "No such route or resource."),
    "method-not-allowed": ("Method not allowed", "This method is not allowed on this route."),
    "payload-too-large": ("Payload too large", "The request body exceeds the route's limit."),
    "uri-too-long": ("URI too long", "The request target exceeds the limit."),
    "headers-too-large": ("Request header fields too large",
                          "A header, the header block or the number of headers exceeds the "
                          "limit."),
    "request-timeout": ("Request timeout", "The request body did not arrive in time."),
    "too-many-requests": ("Too many requests", "The tenant's rate or concurrency limit is "
                          "reached; retry later."),
    "unavailable": ("Service unavailable", "The gateway cannot serve this request now."),
    "unsupported-media-type": ("Unsupported media type", "Request bodies must be JSON objects."),
    "not-implemented": ("Not implemented", "The method is not supported by the gateway."),
    "upstream-refused": ("Refused by the shared system",
                         "The shared system refused the request."),
    "upstream-error": ("Bad gateway", "The shared system failed to answer correctly."),
    "upstream-timeout": ("Gateway timeout", "The shared system did not answer in time."),
    "isolation-violation": ("Response withheld",
                            "The shared system's answer failed the routing check and was "
                            "withheld. The incident has been recorded."),
    "internal-error": ("Internal error", "The gateway failed to handle the request."),
    "conflict": ("Conflict", "The request conflicts with the current state of the resource."),
    "unprocessable-content": ("Unprocessable content",
                              "The request is well-formed but its content cannot be used."),
    "refused": ("Refused", "The gateway refused the request."),
}

_STATUS_SLUG = {400: "bad-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
                405: "method-not-allowed", 408: "request-timeout", 413: "payload-too-large",
                414: "uri-too-long", 429: "too-many-requests", 431: "headers-too-large",
                503: "unavailable",
                415: "unsupported-media-type", 501: "not-implemented", 502: "upstream-error",
                504: "upstream-timeout"}


# The gateway's own refusals (admin plane, push intake): never one of the
# shared systems' slugs below, whatever the status.
_OWN_SLUG = {**{status: slug for status, slug in _STATUS_SLUG.items()
                if not slug.startswith("upstream-")},
             409: "conflict", 422: "unprocessable-content", 500: "internal-error"}

# The statuses each problem type may carry: a type and its status never
# disagree (a 409 is never a "bad-request"). The shared systems' refusals
# carry the 4xx the gateway relays (gateway.dataplane: 400, 404, 409, 422);
# "refused" is the gateway's own 4xx without a type of its own, and
# "internal-error" its own failure under a 5xx without one.
PROBLEM_STATUSES: dict[str, frozenset[int]] = {
    **{slug: frozenset({status}) for status, slug in _STATUS_SLUG.items()},
    "conflict": frozenset({409}),
    "unprocessable-content": frozenset({422}),
    # the gateway's own failure, under any 5xx without a type of its own
    "internal-error": frozenset(range(500, 600)) - {501, 503},
    "isolation-violation": frozenset({502}),
    "upstream-refused": frozenset({400, 404, 409, 422}),
    "refused": frozenset(range(400, 500)),
}


def consistent(slug: str, status: int) -> bool:
    """Whether a problem document of type ``slug`` may carry ``status``."""
    return status in PROBLEM_STATUSES.get(slug, frozenset())


class _RandomHalves:
    """The random halves of incident ids, 16 hex digits each, from
    ``os.urandom`` fetched 4 KiB (512 ids) at a time: the same randomness
    with one ``getrandom(2)`` per 512 ids instead of one per id (it showed in
    the request profile). Thread-safe without a lock: ``list.pop`` is atomic,
    and two threads that find the list empty at once each fetch their own
    (one list is then dropped, no half given twice). Emptied in a forked
    child so two processes never hand out the same ones."""

    PER_FETCH = 512

    def __init__(self) -> None:
        self._halves: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._halves = []

    def take(self) -> str:
        try:
            return self._halves.pop()
        except IndexError:
            pass
        digits = os.urandom(8 * self.PER_FETCH).hex()
        fresh = [digits[i:i + 16] for i in range(0, len(digits), 16)]
        self._halves = fresh
        return fresh.pop()


_random = _RandomHalves()


def new_incident_id() -> str:
    """Time-ordered, unguessable: 12 hex digits of ms since the epoch + 64 random
    bits (never a counter: ids are shown to every tenant, and a sequence would
    tell one tenant how much traffic the others send)."""
    return f"{int(time.time() * 1000):012x}-{_random.take()}"


def slug_for(status: int) -> str:
    if status in _STATUS_SLUG:
        return _STATUS_SLUG[status]
    return "upstream-refused" if 400 <= status < 500 else "internal-error"


def own_slug_for(status: int) -> str:
    """The type of a refusal the gateway itself decided (the admin plane's,
    a push intake's): consistent with ``status``, never a shared system's."""
    if status in _OWN_SLUG:
        return _OWN_SLUG[status]
    return "refused" if 400 <= status < 500 else "internal-error"


def problem_body(status: int, incident: str, slug: str | None = None,
                 detail: str | None = None) -> bytes:
    slug = slug or slug_for(status)
    title, default_detail = PROBLEMS.get(slug, PROBLEMS["internal-error"])
    doc = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail or default_detail,
        "incident": incident,
    }
    return json.dumps(doc).encode()
