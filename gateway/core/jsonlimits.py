"""JSON with limits: a nesting depth, and one value per key.

The standard library's parser recurses once per nested array or object, so
a few kilobytes of ``[[[[...`` raise ``RecursionError`` (a 500 where a 400 is
due), and it keeps the last of two equal keys silently, where another parser
may keep the first: a gateway that checks a parsed copy and forwards the
bytes could then check one value while the receiver reads another (RFC 8259
§4 leaves duplicates to the parser; I-JSON, RFC 7493 §2.3, forbids them).

- :func:`check_depth` measures the nesting without recursing or parsing
  (strings skipped, so a bracket inside a string does not count; a 16 MB
  batch takes about a twentieth of its parse) and raises
  :class:`TooDeep` beyond ``max_depth``; the top-level array or object is
  depth 1.
- :func:`loads_limited` is ``json.loads`` after :func:`check_depth`, refusing
  a key that occurs twice in one object (:class:`DuplicateKey`).

Both errors are ``ValueError`` subclasses, like ``json.JSONDecodeError``, so a
caller that maps ``ValueError`` to a 400 stays correct; a caller that wants a
distinct reason catches them first. Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from gateway.core.rejected import Rejected

# Arrays and objects inside each other in any JSON the data plane parses (a
# client's body, a push, an upstream's answer); documented in gateway.edge._limits.
MAX_DEPTH = 64

# The depth is measured on the bytes that matter: brackets and quotes (every
# other byte dropped at C speed; in UTF-8 none of them occurs inside a
# multi-byte character). Escapes go first (``\\.``), then strings (an
# adjacent pair of quotes is an empty string or the gap between two strings:
# dropping it leaves the same brackets outside strings), then the brackets are
# summed. An unterminated string leaves a quote that is ignored; json.loads
# refuses the text afterwards.
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STEP = [0] * 256
for _b in b"[{":
    _STEP[_b] = 1
for _b in b"]}":
    _STEP[_b] = -1


class TooDeep(Rejected, ValueError):
    """Arrays and objects nested deeper than the limit. Where it is refused
    names the reason (a request body, a push, an upstream's answer)."""

    def __init__(self, detail: str) -> None:
        super().__init__("too-deep", detail)


class DuplicateKey(Rejected, ValueError):
    """A key twice in one object."""

    def __init__(self, detail: str) -> None:
        super().__init__("duplicate-key", detail)


def _text(raw: bytes | bytearray | str) -> str:
    if isinstance(raw, str):
        return raw
    # As json.loads does for bytes: UTF-8, -16 or -32, found from the first bytes.
    return bytes(raw).decode(json.detect_encoding(raw), "surrogatepass")


def _utf8(raw: bytes | bytearray | str) -> bytes:
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return _text(raw).encode("utf-8", "surrogatepass")
    return bytes(raw)


def check_depth(raw: bytes | bytearray | str, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`TooDeep` if arrays and objects nest deeper than ``max_depth``
    (outside strings). Malformed text is not judged here (json.loads will)."""
    data = _utf8(raw)
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return  # cannot be deeper: most bodies, without a scan
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    structure = _STRING.sub(b"", data.translate(None, _STRUCTURE).replace(b'""', b""))
    if max(accumulate(map(_STEP.__getitem__, structure)), default=0) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth}")


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook``: the object, or :class:`DuplicateKey`."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKey(f"duplicate key {key!r}")
    return out


def loads_limited(raw: bytes | bytearray | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(raw)`` with the nesting capped at ``max_depth`` (:class:`TooDeep`)
    and every key once per object (:class:`DuplicateKey`). Other errors are
    json.loads's own (``json.JSONDecodeError``, ``UnicodeDecodeError``)."""
    check_depth(raw, max_depth)
    return json.loads(raw, object_pairs_hook=unique_object)
