"""A columnar batch (``meter-days/v1``) read and routed from its posted bytes
in one pass (D1, D5).

:func:`route_posted_days` hands the body to ``route_posted`` of
gateway/core/_native_days.c, which reads it once, without decoding,
cutting or parsing it into objects, and routes each meter-day in its turn
with the state of :mod:`gateway.core.push.days`' router: the common one
whole to its owner (the C's ``route_fields``, shared with ``route_days``),
any other one parsed alone and given to that router's ``_route_day``. Its
specification is the general path (decode, ``scan_days``,
``route_meter_days``), which the intake takes for any body this one does
not take.
"""

from __future__ import annotations

import json
from datetime import datetime

from gateway.core.identifiers import is_plain_id
from gateway.core.jsonlimits import MAX_DEPTH, unique_object
from gateway.core.native import native as _native
from gateway.core.push import days as _days
from gateway.core.push.days import RoutedDays
from gateway.core.relations.index import RelationIndex


def route_posted_days(raw: bytes, relations: RelationIndex, now: datetime, *,
                      max_meter_days: int = 200_000,
                      max_depth: int = MAX_DEPTH) -> RoutedDays | None:
    """:func:`~gateway.core.push.days.route_meter_days` of ``scan_days(raw.decode(), max_depth)``,
    read and routed in one pass in C (``route_posted``,
    gateway/core/_native_days.c): the batch's text is not decoded, cut or
    parsed into objects; each meter-day in the common form goes whole to its
    owner from the posted bytes, and every other one is parsed alone and
    routed by ``_route_day`` of days.py, in its turn, as the general path would.

    None when the C does not take the body (it takes the common spelling
    only: ASCII strings without escapes or control characters, flat meter-days, a
    top level of string members and ``meter_days``; see the C) or the batch
    would be refused (its id, its size): the caller parses and routes it as
    before, so every error and every outcome is that path's.
    tests/core/push/test_days_posted.py holds the two to each other."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if type(raw) is not bytes:
        return None
    st = _days._Days(relations, now, None, None)
    context = _days._native_context(st)
    if context is None or _native is None:
        return None

    def leave(index: int, start: int, end: int, values_start: int, values_end: int,
              count: int) -> int | None:
        try:
            day = json.loads(raw[start:end], object_pairs_hook=unique_object)
            if values_start >= 0:  # scan_days' pair: the values as posted, and checked
                array = raw[values_start:values_end].decode("ascii")
                day["values"] = (array, count if count > 0 else json.loads(array))
        except ValueError:  # a repeated member, a values array that is no JSON
            return None
        return _days._route_day(st, index, day)

    got = _native.route_posted(context, raw, max_depth, max_meter_days, leave)
    if got is None:
        return None
    batch_id, days, received = got
    if not is_plain_id(batch_id):
        return None  # refused by the general path (bad-batch-id)
    return st.routed(batch_id, received, days)
