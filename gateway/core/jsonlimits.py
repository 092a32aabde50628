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
- :func:`loads_limited` parses after :func:`check_depth`, refusing a key
  that occurs twice in one object (:class:`DuplicateKey`). It parses with
  orjson (C), which has no duplicate-key check of its own (it keeps the last
  value), and proves the parse kept every member (below); anything it cannot
  prove, or orjson refuses, is parsed again by the standard library with a
  hook that sees every pair, which has the last word: the result and the
  errors are the standard library's, only faster when nothing is wrong.

Why counting members proves it: in a valid text, outside strings a colon
occurs only between a member's name and its value, so the colons outside
strings are the text's members (:func:`text_members`; a string runs from a
quote to the next quote no backslash escapes). orjson accepted the text, so
it is valid; its parse holds one entry per member but for those a later
equal name replaced (``\\u`` escapes decoded: ``"a"`` and ``"\\u0061"`` are
one name). So when the objects of the parse hold as many entries as the
text has members (:func:`json_members_reference`), no member was dropped. A
number of 19 digits or more sends the text to the exact path too: orjson
reads an integer past 64 bits as a float, the standard library as the exact
integer the text says. A number starts the text or follows ``[``, ``:``,
``,``, ``-`` or white space, so any run of 19 digits after one of those
(inside a string too: it only costs the exact path) is looked for.

A one-record answer whose check reads only some of its top-level strings
need not be made into objects at all: :func:`record_strings` (C,
``gateway/core/_native_record.c``; its specification
:func:`record_strings_reference`) proves in one pass that the text is JSON
the standard library reads as an object with every key once, no deeper than
the limit, and hands back just those strings; for anything outside a plain
subset (an escape, a byte order mark, NaN, an object of more than 64
members, ...) it answers None and the caller parses in full. A list answer
is proven the same way by :func:`records_strings` (its specification
:func:`records_strings_reference`): of each object in the top-level
object's list member, the named strings.

Both errors are ``ValueError`` subclasses, like ``json.JSONDecodeError``, so a
caller that maps ``ValueError`` to a 400 stays correct; a caller that wants a
distinct reason catches them first. Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import orjson

from gateway.core.native import native as _native
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
# Digits to "0", what a number may follow to "|", every other byte to a space:
# a long integer is "|" and a run of "0"s. int64 has at most 19 digits.
# A string as the member count reads it: from a quote to the next quote that
# no backslash escapes, or to the end of the text (a lone backslash last).
_MEMBER_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+\\?(?:"|\Z)', re.S)
_NUMBER_BYTES = bytes(0x30 if 0x30 <= b <= 0x39 else 0x7C if b in b"[:,- \t\n\r" else 0x20
                      for b in range(256))
_LONG_INTEGER = b"|" + b"0" * 19


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
    if _deepest(data) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth}")


def _deepest(data: bytes | bytearray) -> int:
    """The deepest running sum of the brackets outside strings (module
    comment above ``_ESCAPE``); 0 for a text without any."""
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    structure = _STRING.sub(b"", data.translate(None, _STRUCTURE).replace(b'""', b""))
    return max(accumulate(map(_STEP.__getitem__, structure)), default=0)


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
    json.loads's own (``json.JSONDecodeError``, ``UnicodeDecodeError``).
    For UTF-8 bytes, where gateway.core._native was built, what it needs to
    know of the text is read in one pass in C (``json_facts``, whose
    reference is :func:`json_facts_reference`)."""
    facts = None if _native is None or type(raw) is not bytes else _native.json_facts(raw)
    if facts is None:
        check_depth(raw, max_depth)
        return loads_unique(raw)
    depth, members, suspect = facts
    if depth > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth}")
    return _loads_counted(raw, members, suspect)


def json_facts_reference(data: bytes) -> tuple[int, int, bool] | None:
    """The specification of ``json_facts`` in gateway/core/_native_wire.c:
    None where ``data`` is not read as UTF-8, else its nesting depth as
    :func:`check_depth` measures it (0 for none), its members
    (:func:`text_members`), and whether a long number makes counting them
    prove nothing (:func:`has_long_number`)."""
    if json.detect_encoding(data) not in ("utf-8", "utf-8-sig"):
        return None
    return max(0, _deepest(data)), text_members(data), has_long_number(data)


def text_members(data: bytes | bytearray) -> int:
    """The colons outside strings: in a valid JSON text, its object members
    (module docstring)."""
    return _MEMBER_STRING.sub(b"", data).count(b":")


def json_members_reference(value: Any) -> int:
    """The entries of every object in a parsed JSON value, nested ones too
    (the specification of ``json_members`` in gateway/core/_native_wire.c);
    only ``dict`` and ``list``, exactly, are looked into."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            count += len(item)
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
    return count


_json_members = json_members_reference if _native is None else _native.json_members


def loads_unique(raw: bytes | bytearray | str) -> Any:
    """``json.loads(raw)`` refusing a key twice in one object
    (:class:`DuplicateKey`), for text whose depth is already checked:
    orjson's parse where it provably kept every member, else the standard
    library's with a hook on every pair (module docstring)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return _loads_counted(raw, text_members(data), has_long_number(data))


def _loads_counted(raw: bytes | bytearray | str, members: int, suspect: bool) -> Any:
    """orjson's parse of ``raw`` where it provably kept every member (the
    text has ``members`` members, the parse as many, and no long number
    makes the count unprovable), else the standard library's with a hook on
    every pair, which has the last word (module docstring)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # the standard library's verdict (and error) below
    else:
        if not suspect and members == _json_members(parsed):
            return parsed
    return json.loads(raw, object_pairs_hook=unique_object)


# Members of one object record_strings compares pairwise; more: not proven there.
RECORD_MAX_KEYS = 64
# Names record_strings reads at most (a route's record fields).
RECORD_MAX_NAMES = 8


class _Unproven(Exception):
    """What record_strings_reference does not prove (it answers None)."""


def _refuse_constant(name: str) -> Any:
    raise _Unproven(name)


def _unique_small_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """:func:`unique_object` (a key twice: :class:`DuplicateKey`), and no more
    members than record_strings compares."""
    if len(pairs) > RECORD_MAX_KEYS:
        raise _Unproven("too many members to compare")
    return unique_object(pairs)


def _proven_object(data: bytes, max_depth: int) -> dict[str, Any] | None:
    """``data`` read as the standard library reads it, where it is strict
    UTF-8 without a byte order mark or a backslash, an object with every key
    once per object (none of more than :data:`RECORD_MAX_KEYS` members), no
    NaN or Infinity, nested no deeper than ``max_depth``; else None."""
    if b"\\" in data or data.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        text = data.decode("utf-8")  # strict: no surrogate, no overlong form
    except UnicodeDecodeError:
        return None
    if _deepest(data) > max_depth:
        return None
    try:
        body = json.loads(text, object_pairs_hook=_unique_small_object,
                          parse_constant=_refuse_constant)
    except (ValueError, _Unproven, RecursionError):
        return None
    return body if type(body) is dict else None


def _named_strings(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, str] | None:
    """The members of ``record`` named in ``names``; None if one is no string."""
    found: dict[str, str] = {}
    for name in names:
        if name in record:
            if type(record[name]) is not str:
                return None
            found[name] = record[name]
    return found


def record_strings_reference(data: bytes, names: tuple[str, ...],
                             max_depth: int = MAX_DEPTH) -> dict[str, str] | None:
    """The specification of ``record_strings`` in gateway/core/_native_record.c:
    the members of ``data``'s top-level object named in ``names`` whose
    values are strings, where ``data`` is strict UTF-8 without a byte order
    mark or a backslash, and the standard library reads it as an object with
    every key once per object (none of more than :data:`RECORD_MAX_KEYS`
    members), no NaN or Infinity, nested no deeper than ``max_depth``, and
    every member named in ``names`` a string; else None."""
    body = _proven_object(data, max_depth)
    return None if body is None else _named_strings(body, names)


def records_strings_reference(data: bytes, items: str, names: tuple[str, ...],
                              max_depth: int = MAX_DEPTH
                              ) -> dict[str, list[dict[str, str]]] | None:
    """The specification of ``records_strings`` in gateway/core/_native_record.c:
    ``{items: [...]}``, of each object in the list that is the top-level
    object's member ``items`` the members named in ``names`` (as
    :func:`record_strings_reference` reads a record's), in the list's
    order; ``{}`` when there is no member ``items``. None where the text is
    not proven as for :func:`record_strings_reference`, ``items`` is no
    list, one of its elements is no object or one of their named members is
    no string."""
    body = _proven_object(data, max_depth)
    if body is None:
        return None
    if items not in body:
        return {}
    if type(body[items]) is not list:
        return None
    out: list[dict[str, str]] = []
    for record in body[items]:
        found = _named_strings(record, names) if type(record) is dict else None
        if found is None:
            return None
        out.append(found)
    return {items: out}


record_strings = None if _native is None else _native.record_strings
records_strings = None if _native is None else _native.records_strings


def has_long_number(data: bytes | bytearray) -> bool:
    """True if a run of 19 or more digits starts the text or follows ``[``,
    ``:``, ``,``, ``-`` or white space (inside a string too): a number orjson
    may read otherwise than the standard library (an integer past 64 bits)."""
    numbers = data.translate(_NUMBER_BYTES)
    return _LONG_INTEGER in numbers or numbers.startswith(_LONG_INTEGER[1:])

