"""One parse of a pushed batch that also remembers where each meter-day sits.

``scan_batch(text)`` returns what ``json.loads(text)`` returns, plus, when the
top-level object has a ``"meter_days"`` array, the ``[start, end)`` offsets of
each of its elements in ``text``. The router of the columnar format
(:mod:`gateway.core.push_days`) uses them to hand a tenant the ``values``
array exactly as the HES wrote it, instead of re-encoding 96 floats per
meter-day (``repr`` of a float costs more than parsing it).

It uses the standard library's own C scanner for every value and its string
scanner for keys, so numbers, strings, ``NaN``, duplicate keys (the last one
wins) and errors behave as with ``json.loads``. Whatever it does not handle
(a top level that is not an object, a syntax error) is left to ``json.loads``
itself, so the result and the error are always the standard library's.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from typing import Any, cast

Spans = list[tuple[int, int]]

# JSON's whitespace, as json.decoder's; the pattern matches everywhere (never None).
_WS = cast(Callable[[str, int], re.Match[str]], re.compile(r"[ \t\n\r]*").match)
_DECODER = json.JSONDecoder()
# The C scanner json.loads itself uses: (text, index) -> (value, end).
_VALUE = cast(Callable[[str, int], tuple[Any, int]], _DECODER.scan_once)  # type: ignore[attr-defined]
_KEY = cast(Callable[[str, int], tuple[str, int]], json.decoder.scanstring)  # type: ignore[attr-defined]
_DAYS = "meter_days"


class _Syntax(Exception):
    """Not something this scanner takes on: json.loads decides."""


def scan_batch(text: str) -> tuple[Any, Spans | None]:
    """``(json.loads(text), spans of the meter_days elements or None)``.
    Raises ``ValueError`` (``json.JSONDecodeError``) exactly when json.loads does."""
    try:
        return _object(text)
    except (_Syntax, StopIteration, ValueError):
        return json.loads(text), None  # the standard library's answer or error


def _object(text: str) -> tuple[dict[str, Any], Spans | None]:
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
            i = _WS(text, i).end()
            if text[i:i + 1] != ":":
                raise _Syntax
            i = _WS(text, i + 1).end()
            if key == _DAYS and text[i:i + 1] == "[":
                value, spans, i = _array(text, i)
            else:
                value, i = _VALUE(text, i)
                if key == _DAYS:
                    spans = None  # a later duplicate key wins, as in json.loads
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


def _array(text: str, i: int) -> tuple[list[Any], Spans, int]:
    values: list[Any] = []
    spans: Spans = []
    i = _WS(text, i + 1).end()
    if text[i:i + 1] == "]":
        return values, spans, i + 1
    append, mark = values.append, spans.append
    while True:
        value, end = _VALUE(text, i)
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
