"""Request-target strictness, applied before any routing.

The gateway judges one canonical target and forwards exactly that target, so
the upstream cannot see a different resource than the one that was decided
on. Anything that could be read two ways is refused:

- only origin-form (``/path?query``); absolute-form and asterisk-form -> 400;
- no percent-encoding at all in the path (our ids never need it): this
  removes ``%2e``, ``%2f``, ``%5c``, ``%00`` and double encoding in one rule;
- no ``.``/``..`` segments, no empty segments (``//``), no backslash, no
  control characters;
- query parameters must be unique (parameter pollution: one reading judged,
  another one served) and decode to printable text.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

from gateway.core.rejected import Rejected

MAX_TARGET_BYTES = 4096

_PATH_CHARS = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9._~!$'()*+,;=:@/?%&-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# SECURITY: TRACE reflects headers (XST); CONNECT would open a tunnel.
FORBIDDEN_METHODS = frozenset({"TRACE", "CONNECT"})


class TargetRejected(Rejected):
    """The request target or method is refused before routing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason, status=status)


class Target(NamedTuple):  # built per request: a tuple is cheaper
    path: str
    query: tuple[tuple[str, str], ...]

    @property
    def query_map(self) -> dict[str, str]:
        return dict(self.query)

    def upstream_target(self) -> str:
        """The canonical target forwarded upstream: the one that was judged."""
        if not self.query:
            return self.path
        return self.path + "?" + urlencode(self.query)


def check_method(method: str) -> None:
    if method in FORBIDDEN_METHODS:
        raise TargetRejected(405, "method-forbidden")
    if method not in KNOWN_METHODS:
        raise TargetRejected(501, "method-unknown")


def parse_target(raw: str) -> Target:
    """Validate a raw request target and return its canonical form."""
    if len(raw) > MAX_TARGET_BYTES:
        raise TargetRejected(414, "target-too-long")
    if not raw.startswith("/"):
        # absolute-form ("http://host/x"), authority-form or asterisk-form
        raise TargetRejected(400, "target-not-origin-form")
    if "#" in raw:
        raise TargetRejected(400, "target-has-fragment")
    path, sep, query = raw.partition("?")
    if "%" in path:
        raise TargetRejected(400, "path-percent-encoded")
    if not _PATH_CHARS.fullmatch(path):
        raise TargetRejected(400, "path-bad-character")
    if path != "/":
        segments = path[1:].split("/")
        if path.endswith("/"):
            segments = segments[:-1]  # one trailing slash is tolerated
        for seg in segments:
            if seg == "":
                raise TargetRejected(400, "path-empty-segment")
            if seg in (".", ".."):
                raise TargetRejected(400, "path-dot-segment")
        path = "/" + "/".join(segments)
    pairs: tuple[tuple[str, str], ...] = ()
    if sep:
        if not _QUERY_CHARS.fullmatch(query):
            raise TargetRejected(400, "query-bad-character")
        try:
            decoded = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                                errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise TargetRejected(400, "query-malformed") from exc
        seen: set[str] = set()
        for key, value in decoded:
            if key in seen:
                raise TargetRejected(400, "query-duplicate-parameter")
            if _CONTROL.search(key) or _CONTROL.search(value):
                raise TargetRejected(400, "query-control-character")
            seen.add(key)
        pairs = tuple(decoded)
    return Target(path, pairs)
