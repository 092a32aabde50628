"""One parse of a pushed batch that also remembers where each meter-day sits.

``scan_batch(text)`` returns what ``json.loads(text)`` returns, plus, when the
top-level object has a ``"meter_days"`` array, the ``[start, end)`` offsets of
each of its elements in ``text``. The router of the columnar format
(:mod:`gateway.core.push.days`) uses them to hand a tenant the ``values``
array exactly as the HES wrote it, instead of re-encoding 96 floats per
meter-day (``repr`` of a float costs more than parsing it).

It uses the standard library's own C scanner for every value and its string
scanner for keys, so numbers, strings, ``NaN`` and errors behave as with
``json.loads``, with one exception for a ``meter-days/v1`` batch: a key
twice in one object raises :class:`~gateway.core.jsonlimits.DuplicateKey`
(D1: a meter-day is forwarded as the HES wrote it, so the router must never
read one ``"meter"`` while a receiver whose parser keeps the first occurrence
reads another; I-JSON, RFC 7493 §2.3). A per-record batch keeps json.loads's
rule (the last one wins): its records are re-encoded from the parsed values,
so a receiver reads exactly what was routed, and the check would cost half
again of its parse. Whatever it does not handle
(a top level that is not an object, a syntax error) is left to ``json.loads``
itself, so the result and the error are always the standard library's.

``scan_days(text)`` is the meter-day batch's fast path: it
does not convert the 96 numbers of each ``values`` array to floats (about
half the cost of the parse), it checks them. See its docstring.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from typing import Any, cast

import msgspec
import orjson

from gateway.core.jsonlimits import (
    MAX_DEPTH,
    DuplicateKey,
    TooDeep,
    check_depth,
    loads_limited,
    unique_object,
)
from gateway.core.native import native as _native
from gateway.core.push.days import FORMAT

Spans = list[tuple[int, int]]
# A meter-day's "values" as scan_days hands it over: (the array's text as posted,
# its number of values) when every value is a finite JSON number, or (the text,
# json.loads(text)) when the fast check could not tell.
Posted = tuple[str, int | list[Any]]

# JSON's whitespace, as json.decoder's; the pattern matches everywhere (never None).
_WS = cast(Callable[[str, int], re.Match[str]], re.compile(r"[ \t\n\r]*").match)
# The C scanner json.loads itself uses: (text, index) -> (value, end); one
# that refuses a repeated key (meter-days), one that keeps the last (records).
Scanner = Callable[[str, int], tuple[Any, int]]
_UNIQUE = cast(Scanner, json.JSONDecoder(object_pairs_hook=unique_object).scan_once)  # type: ignore[attr-defined]
_LAST = cast(Scanner, json.JSONDecoder().scan_once)  # type: ignore[attr-defined]
_KEY = cast(Callable[[str, int], tuple[str, int]], json.decoder.scanstring)  # type: ignore[attr-defined]
_DAYS = "meter_days"
_FORMAT = json.dumps(FORMAT)  # as it is spelled in a body (without escapes)

# scan_days: an array in a "values" member made only of the characters numbers,
# commas and whitespace are made of (no letter but e and E, no quote, no bracket
# inside) is cut out of the text and replaced by the string "~V~".
_CUT = re.compile(r'"values"[ \t\n\r]*:[ \t\n\r]*(\[[0-9.,eE+\- \t\n\r]*\])')
_MARK = "~V~"
_MARKED = f'"values":"{_MARK}"'
# One non-empty array of JSON numbers (RFC 8259's grammar, ASCII digits) that
# are all finite floats or exact ints: at most 16 integer digits and a 1-2
# digit exponent, so |x| < 1e115; for an array that _all_finite_numbers could
# not vouch for with the others. Anything else (longer numbers, "[]", a
# syntax error) goes to json.loads.
_EXPONENT = r"(?:[eE][+\-]?+[0-9]{1,2}+)?+"
_NUMBER = r"-?+(?:[1-9][0-9]{0,15}+|0)(?:\.[0-9]++)?+"
_SPACE = r"[ \t\n\r]*+"
_ONE = re.compile(rf"\[{_SPACE}{_NUMBER}{_EXPONENT}"
                  rf"(?:{_SPACE},{_SPACE}{_NUMBER}{_EXPONENT})*+{_SPACE}\]")


def _all_finite_numbers(arrays: list[str]) -> bool:
    """True if every array is a non-empty array of JSON numbers that are finite
    as floats. Sound because :data:`_CUT` admits no bracket, quote or letter
    but e and E inside an array: each array is one flat element of the whole,
    and what a JSON parser accepts there is numbers only.

    Without an exponent (the HES's own spelling), by msgspec validating the
    syntax of them all in one pass without making a float of any value
    (about a tenth of the cost of parsing them; bench/README), and finite
    because no number has more than 308 digits in a row (a larger one may
    overflow to infinity). With an exponent, or a longer run of digits, by
    one orjson parse of them all, which refuses a number that overflows.
    False sends each array to :data:`_ONE` and json.loads, as before."""
    joined = "[" + ",".join(arrays) + "]"
    if "e" in joined or "E" in joined or _LONG_DIGITS in joined.encode().translate(_DIGITS):
        try:
            parsed = orjson.loads(joined)
        except orjson.JSONDecodeError:
            return False
        return all(parsed)  # no empty array
    try:
        _FLAT_ARRAYS(joined)
    except msgspec.DecodeError:
        return False
    # Valid syntax: an array with anything but brackets and white space in it
    # holds a number.
    return all(array.strip(_BRACKETS) for array in arrays)


_FLAT_ARRAYS = msgspec.json.Decoder(list[msgspec.Raw]).decode  # checks, does not convert
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # digit -> "0"
_LONG_DIGITS = b"0" * 309  # |x| < 1e308 with at most 308 digits and no exponent
_BRACKETS = "[] \t\n\r"


def finite_number_counts_reference(arrays: list[str]) -> list[int] | None:
    """Each array's count of values when :func:`_all_finite_numbers` vouches
    for them all (an array of numbers has one comma fewer), else None."""
    if not _all_finite_numbers(arrays):
        return None
    return [array.count(",") + 1 for array in arrays]


# The cut and the check in C where they were built (gateway/core/_native.c;
# tests/core/test_native.py compares them with _CUT.split and
# finite_number_counts_reference, which stay the reference).
_cut_values: Callable[[str], list[str]] = _native.cut_values if _native else _CUT.split
_finite_counts: Callable[[list[str]], list[int] | None] = (
    _native.finite_number_counts if _native else finite_number_counts_reference)


def _strict(text: str, max_depth: int) -> tuple[Any, Spans | None]:
    check_depth(text, max_depth)
    return scan_batch(text)


class _Syntax(Exception):
    """Not something this scanner takes on: json.loads decides."""


def scan_batch(text: str, *, unique: bool = True) -> tuple[Any, Spans | None]:
    """``(json.loads(text), spans of the meter_days elements or None)``.
    Raises ``ValueError`` (``json.JSONDecodeError``) exactly when json.loads does,
    and, with ``unique``, :class:`DuplicateKey` for a key twice in one object."""
    try:
        return _object(text, _UNIQUE if unique else _LAST, unique)
    except DuplicateKey:
        raise
    except (_Syntax, StopIteration, ValueError):
        # the standard library's answer or error (duplicates refused alike)
        if unique:
            return json.loads(text, object_pairs_hook=unique_object), None
        return json.loads(text), None


def _object(text: str, scan: Scanner, unique: bool) -> tuple[dict[str, Any], Spans | None]:
    i = _WS(text, 0).end()
    if text[i:i + 1] != "{":
        raise _Syntax
    doc: dict[str, Any] = {}
    spans: Spans | None = None
    i = _WS(text, i + 1).end()
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise _Syntax
            key, i = _KEY(text, i + 1)
            if key in doc and unique:
                raise DuplicateKey(f"duplicate key {key!r}")
            i = _WS(text, i).end()
            if text[i:i + 1] != ":":
                raise _Syntax
            i = _WS(text, i + 1).end()
            if key == _DAYS and text[i:i + 1] == "[":
                value, spans, i = _array(text, i, scan)
            else:
                value, i = scan(text, i)
                if key == _DAYS:
                    spans = None  # a later repeated key wins, as in json.loads
            doc[key] = value
            i = _WS(text, i).end()
            c = text[i:i + 1]
            if c == ",":
                i = _WS(text, i + 1).end()
            elif c == "}":
                i += 1
                break
            else:
                raise _Syntax
    if _WS(text, i).end() != len(text):
        raise _Syntax  # extra data
    return doc, spans


def _array(text: str, i: int, scan: Scanner) -> tuple[list[Any], Spans, int]:
    values: list[Any] = []
    spans: Spans = []
    i = _WS(text, i + 1).end()
    if text[i:i + 1] == "]":
        return values, spans, i + 1
    append, mark = values.append, spans.append
    while True:
        value, end = scan(text, i)
        append(value)
        mark((i, end))
        c = text[end:end + 1]
        if c not in (",", "]"):
            end = _WS(text, end).end()
            c = text[end:end + 1]
        if c == ",":
            i = end + 1
            if text[i:i + 1] in (" ", "\n", "\t", "\r"):
                i = _WS(text, i).end()
        elif c == "]":
            return values, spans, end + 1
        else:
            raise _Syntax


def scan_days(text: str, max_depth: int = MAX_DEPTH) -> tuple[Any, Spans | None]:
    """``scan_batch(text)``, faster for a ``meter-days/v1`` batch, after the
    nesting check (:class:`~gateway.core.jsonlimits.TooDeep` beyond
    ``max_depth``, as :func:`~gateway.core.jsonlimits.check_depth` measures it).

    The result is what ``json.loads(text)`` returns except that the ``values``
    of a meter-day may be a :data:`Posted` pair instead of the list: ``(text,
    n)`` for ``n`` finite JSON numbers (not converted: a tenant gets the text
    as posted; the router parses it only when it must cut the day), or
    ``(text, list)``. Raises ``ValueError`` exactly when json.loads does.

    How: every array that may be a list of numbers (:data:`_CUT`) is replaced by
    the string ``"~V~"``, the rest is parsed by
    :func:`~gateway.core.jsonlimits.loads_limited` (json.loads's result, a
    repeated key refused, orjson where it provably kept every member), and
    the arrays are checked and counted in one pass (:data:`_finite_counts`), or
    json.loads each when that fails. The nesting of the text is that of the
    rest but for one level where each array was cut (quotes are added in
    pairs, so what lies inside a string does not change): the rest within
    ``max_depth - 1`` puts the text within ``max_depth``, and only a rest
    past it has the whole text measured.

    Sound because the body holds no backslash (every quote delimits a string)
    and ``"~V~"`` occurs exactly once per cut array: then a ``"~V~"`` that
    the parse returns is a cut array's place, the value of a "values" key,
    and the body is valid JSON exactly when the rest and each array are. Every
    cut array must turn up as a meter-day's values (a repeated key, a "values"
    elsewhere: not so); otherwise, or for another format, :func:`scan_batch`."""
    if _FORMAT not in text:
        check_depth(text, max_depth)
        # Records are re-encoded, never forwarded as posted: the last key wins.
        doc, spans = scan_batch(text, unique=False)
        if type(doc) is dict and "format" in doc:
            return scan_batch(text)  # a format spelt with escapes: the strict parse
        return doc, spans
    if "\\" in text:
        return _strict(text, max_depth)
    pieces = _cut_values(text)
    arrays = pieces[1::2]
    rest = _MARKED.join(pieces[::2])
    if not arrays or rest.count(f'"{_MARK}"') != len(arrays):
        return _strict(text, max_depth)
    try:
        # The rest's nesting is the text's but for each cut array, one level
        # inside the member it was cut from: under max_depth, the text's is
        # within max_depth. One pass in C measures it and counts the members
        # that prove orjson's parse kept them all (gateway.core.jsonlimits).
        doc = loads_limited(rest.encode("utf-8", "surrogatepass"), max(max_depth - 1, 0))
    except TooDeep:
        return _strict(text, max_depth)  # the verdict on the text as posted
    except ValueError:
        return scan_batch(text)  # the standard library's error on the body as posted
    days = doc.get(_DAYS) if type(doc) is dict and doc.get("format") == FORMAT else None
    if type(days) is not list:
        return scan_batch(text)
    counts = _finite_counts(arrays)
    one, k = _ONE.fullmatch, 0
    for day in days:
        if type(day) is dict and day.get("values") == _MARK:
            if k == len(arrays):
                return scan_batch(text)
            array = arrays[k]
            k += 1
            if counts is not None:
                day["values"] = (array, counts[k - 1])
            elif one(array):
                day["values"] = (array, array.count(",") + 1)
            else:
                try:
                    day["values"] = (array, json.loads(array))
                except ValueError:
                    return scan_batch(text)
    if k != len(arrays):
        return scan_batch(text)
    return doc, None
