"""Routing of pushed meter-days, the HES's columnar format (D1, D5).

One object per meter, register and day instead of one per reading, on the same
endpoint (``POST /push/hes/batches``), chosen by the batch's ``format``::

    {"format": "meter-days/v1", "batch_id": "HES-2026-06-14", "source": "hes",
     "meter_days": [{"meter": "1SAG1100042062", "start": "2026-06-14T00:00:00+02:00",
                     "interval": 900, "obis": "1-0:1.8.1", "unit": "kWh",
                     "values": [0.112, 0.098, ...], "quality": "0101...01",
                     "operator": "ores", "via": "...", "ean": "..."}]}

Value ``i`` is the reading at ``start + i * interval`` (seconds, 1..86400;
900 for quarter-hours), so a meter-day means exactly the readings
``{"meter", "timestamp": start + i * interval, "obis", "value": values[i],
"unit", "quality": code i, "operator", "via", "ean"}`` of the per-record
format, and ``route_meter_days`` gives each of them the outcome
:func:`gateway.core.push.route_batch` would give it: the owner at the
reading's instant (a meter that changed owner at 12:00 is cut exactly there),
water via electricity, airplane mode, duplicates (the same meter, OBIS code
and instant again), owner mismatch, EAN mismatch, unit mismatch, no owner, unexpected
member, invalid. ``quality`` is a string
of two-character codes (``01`` read, ``02`` estimated, ``99`` missing), one
per value, or a list of them. ``operator`` (the HES's label), ``via`` and
``ean`` are optional; no other member is allowed (an unknown member puts the
whole meter-day in quarantine as ``unexpected-field``: the format is versioned,
not open). An ``ean`` the feed does not pair with the meter at a reading's
instant puts that reading in quarantine as ``ean-mismatch``, as in the
per-record format.

What a tenant receives: its runs of each meter-day, ``{"meter", "start",
"interval", "obis", "unit", "quality", "values", "ean"?}`` with ``quality``
always a string and without ``operator`` and ``via`` (the HES's routing
hints never reach a tenant). A meter-day that goes whole to one tenant keeps
its ``values`` text exactly as posted (sliced from the body, no re-encoding);
a cut one is re-encoded. Quarantine is reported per run: meter-day index,
first value, count, reason. Accounting is in readings (a meter-day whose
``values`` is not a non-empty list counts as one).

Cost: per meter-day, not per reading, in the common case (the whole day valid,
one owner all day, a meter and register not seen before in the batch); a
meter-day that is cut, has invalid values or overlaps another is resolved
reading by reading. From :func:`gateway.core.push.scan.scan_days` a meter-day's
``values`` usually arrive as their posted text and count, checked to be finite
numbers but not converted: only a day that is cut parses them. Where the C
module was built, the common meter-day is routed by ``route_days``
(gateway/core/_native_days.c), whose specification is :func:`_route_day`:
everything else, and each start, OBIS code and quality string met for the
first time, is left to it. The intake first offers the batch as posted to
:mod:`gateway.core.push.posted`, which reads and routes it in one pass
with this module's router state and ``_route_day``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from types import MappingProxyType
from typing import Any

from gateway.core.identifiers import is_valid_ean, is_valid_meter_serial, obis_key, obis_units
from gateway.core.native import native as _native
from gateway.core.push.records import (
    _MAX,
    _MIN,
    FUTURE_SKEW,
    QUALITY_CODES,
    UNITS,
    BatchRejected,
    Quarantined,
    _micros,
    batch_items,
    ean_span,
    meter_ean_id,
    owner_probe,
    owner_span,
)
from gateway.core.relations.index import RelationIndex

FORMAT = "meter-days/v1"
KIND = "hes-meter-days"  # the outbox part kind the receivers see
MAX_VALUES = 1440  # one a minute for a day
MAX_INTERVAL_S = 86_400
_MEMBERS = frozenset({"meter", "start", "interval", "obis", "unit", "values", "quality",
                      "operator", "via", "ean"})
_NUMBERS = frozenset({int, float})
_QUALITIES = re.compile(r"(?:0[12]|99)*")  # QUALITY_CODES, two characters each
# After a key "values" only; a string without a backslash cannot contain '"'.
_VALUES_KEY = re.compile(r'"values"[ \t\n\r]*:[ \t\n\r]*')
_INVALID, _BAD_EAN, _DUPLICATE = "invalid-record", "bad-ean", "duplicate"
_UNIT_MISMATCH = "unit-mismatch"
_NO_OWNER, _MISMATCH, _AIRPLANE = "no-owner", "owner-mismatch", "airplane-mode"
_UNEXPECTED, _EAN_MISMATCH = "unexpected-field", "ean-mismatch"


@dataclass(frozen=True, slots=True)
class DaysPart:
    meter_days: tuple[str, ...]  # each one meter-day's JSON text, batch order
    readings: int


@dataclass(frozen=True, slots=True)
class RoutedDays:
    batch_id: str
    parts: Mapping[str, DaysPart]  # tenant -> its meter-days
    quarantined: tuple[Quarantined, ...]  # runs: index, first, count, reason
    received: int  # readings
    meter_days: int

    def counts(self) -> dict[str, int]:
        return {"received": self.received,
                "queued": sum(p.readings for p in self.parts.values()),
                "quarantined": sum(q.count for q in self.quarantined),
                "meter_days": self.meter_days}


def batch_days(batch: Any, max_meter_days: int) -> tuple[str, list[Any]]:
    if isinstance(batch, Mapping) and batch.get("format") != FORMAT:
        raise BatchRejected("unsupported-format", f"format must be {FORMAT!r} or absent")
    return batch_items(batch, "meter_days", max_meter_days, unit="meter-days",
                       not_list="meter-days-not-list")


def _bad_values(values: list[Any]) -> frozenset[int] | tuple[()]:
    """Positions that are not finite numbers (bool is not a number here)."""
    kinds = set(map(type, values))
    if kinds <= _NUMBERS:
        if float not in kinds:
            return ()
        try:
            if math.isfinite(sum(values)):
                return ()
        except OverflowError:  # a huge int beside a float: look one by one
            pass
    return frozenset(i for i, v in enumerate(values)
                     if not (type(v) is int or (type(v) is float and v - v == 0.0)))


def _quality(quality: Any, n: int) -> tuple[str, frozenset[int] | tuple[()]] | None:
    """``(codes as one string, positions with a bad code)``, None: unusable."""
    if type(quality) is str:
        if len(quality) != 2 * n:
            return None
        if _QUALITIES.fullmatch(quality):
            return quality, ()
        return quality, frozenset(i for i in range(n)
                                  if quality[2 * i:2 * i + 2] not in QUALITY_CODES)
    if type(quality) is not list or len(quality) != n:
        return None
    ok = [type(q) is str and q in QUALITY_CODES for q in quality]
    codes = "".join(q if good else "??" for q, good in zip(quality, ok, strict=True))
    return codes, frozenset(i for i, good in enumerate(ok) if not good)


class _Days:
    """Per-call state: caches (one entry per distinct value in the batch) and
    the output. Kept in one object so the per-reading slow path can share it."""

    def __init__(self, relations: RelationIndex, now: datetime, text: str | None,
                 spans: Sequence[tuple[int, int]] | None) -> None:
        self.relations = relations
        self.latest = _micros(now + FUTURE_SKEW)
        self.text, self.spans = text, spans
        self.parts: dict[str, list[str]] = {}
        self.readings: dict[str, int] = {}
        self.quarantined: list[Quarantined] = []
        self.serials: dict[str, bool] = {}
        # OBIS code as posted -> (its one spelling, the units it may be in), or None
        self.obis: dict[str, tuple[str, frozenset[str]] | None] = {}
        self.eans: dict[str, bool] = {}
        self.starts: dict[str, tuple[int, datetime, str] | None] = {}
        self.qualities: dict[str, tuple[str, frozenset[int] | tuple[()]] | None] = {}
        self.owners: dict[str, tuple[int, int, str | None, bool]] = {}
        self.pairings: dict[str, tuple[int, int, bool]] = {}  # "serial/ean" -> ean_span
        # meter + " " + OBIS -> (first instant, step, n) of the one meter-day seen,
        # or the set of instants seen once a second one overlaps the key.
        self.seen: dict[str, tuple[int, int, int] | set[int]] = {}

    def routed(self, batch_id: str, received: int, meter_days: int) -> RoutedDays:
        """What was routed: the parts, the quarantine, the accounting."""
        parts = {tenant: DaysPart(tuple(texts), self.readings[tenant])
                 for tenant, texts in self.parts.items()}
        return RoutedDays(batch_id, MappingProxyType(parts), tuple(self.quarantined), received,
                          meter_days)

    def serial(self, value: str) -> bool:
        ok = self.serials.get(value)
        if ok is None:
            ok = self.serials[value] = is_valid_meter_serial(value)
        return ok

    def start(self, stamp: str) -> tuple[int, datetime, str] | None:
        """Parse ``stamp`` and keep it (the router reads ``starts`` first)."""
        parsed: tuple[int, datetime, str] | None = None
        try:
            at = datetime.fromisoformat(stamp)
            if at.utcoffset() is not None:  # an instant needs its offset
                parsed = (_micros(at), at, json.dumps(stamp))
        except (ValueError, OverflowError):
            pass
        self.starts[stamp] = parsed
        return parsed

    def span(self, serial: str, at: int) -> tuple[int, int, str | None, bool]:
        span = self.owners.get(serial)
        if span is None or not span[0] <= at < span[1]:
            span = self.owners[serial] = owner_span(self.relations, serial, at)
        return span

    def pairing(self, serial: str, ean: str, at: int) -> tuple[int, int, bool]:
        key = meter_ean_id(serial, ean)
        known = self.pairings.get(key)
        if known is None or not known[0] <= at < known[1]:
            known = self.pairings[key] = ean_span(self.relations, serial, ean, at)
        return known

    def seen_set(self, key: str) -> set[int]:
        known = self.seen.get(key)
        if known is None:
            out: set[int] = set()
        elif type(known) is tuple:
            first, step, n = known
            out = set(range(first, first + n * step, step))
        else:
            assert isinstance(known, set)
            out = known
        self.seen[key] = out
        return out

    def raw_values(self, index: int) -> str | None:
        """The meter-day's ``values`` array as posted, when it can be cut out
        unambiguously: no escape in the object (so every '"values"' followed by
        ':' is a key, spelled plainly) and that key exactly once."""
        if self.spans is None or self.text is None:
            return None
        text = self.text
        start, end = self.spans[index]
        if text.find("\\", start, end) != -1:
            return None
        found = _VALUES_KEY.search(text, start, end)
        if found is None or _VALUES_KEY.search(text, found.end(), end) is not None:
            return None
        open_at = found.end()
        close_at = text.find("]", open_at, end)  # flat numbers: the first ']' closes
        if text[open_at:open_at + 1] != "[" or close_at < 0:
            return None
        return text[open_at:close_at + 1]


def _native_context(st: _Days) -> tuple[Any, ...] | None:
    """What the C router reads and fills of ``st`` (gateway/core/_native_days.c:
    its caches but the owners' spans, which the C reads from the probe
    itself; its parts; the owner relation's probe of the snapshot). None
    where the C module was not built or the owners are read in Python."""
    args = None if _native is None else owner_probe(st.relations)
    if args is None:
        return None
    probe, o, f, wildcard, tenants = args
    return (_MEMBERS, st.starts, st.obis, st.qualities, st.seen, st.parts, st.readings,
            st.latest, MAX_VALUES, MAX_INTERVAL_S, probe, o, f, wildcard, _MIN, _MAX, tenants)


def _native_days(st: _Days) -> Callable[[list[Any], int], tuple[int, int]] | None:
    """``route_days`` of gateway/core/_native_days.c over ``st``: from a
    meter-day index on, the meter-days :func:`_route_day` would send whole
    to their owner, with the same effects on ``st``, up to the first it
    leaves to it (which then fills the caches the C reads: a start, an OBIS
    code, a quality string met for the first time). None where the C module
    was not built or the owners are read in Python."""
    context = _native_context(st)
    if context is None or _native is None:
        return None
    return partial(_native.route_days, context)


def route_meter_days(batch: Any, relations: RelationIndex, now: datetime, *,
                     text: str | None = None, spans: Sequence[tuple[int, int]] | None = None,
                     max_meter_days: int = 200_000) -> RoutedDays:
    """Split a parsed meter-day batch per owning tenant; quarantine what cannot go.
    ``batch`` is what ``json.loads`` or :func:`gateway.core.push.scan.scan_days`
    returns (a meter-day's ``values`` may then be a ``Posted`` pair: its text as
    posted and its count of finite numbers, or its text and its list). ``text``
    and ``spans`` (from :func:`gateway.core.push.scan.scan_batch`) let a whole
    meter-day keep its posted ``values`` text; without any, it is re-encoded."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    batch_id, days = batch_days(batch, max_meter_days)
    if spans is not None and len(spans) != len(days):
        spans = None
    st = _Days(relations, now, text, spans)
    fast = _native_days(st)
    received, index, count = 0, 0, len(days)
    while index < count:
        if fast is not None:
            # The common meter-days in C, up to the first it leaves to Python.
            index, taken = fast(days, index)
            received += taken
            if index == count:
                break
        received += _route_day(st, index, days[index])
        index += 1
    return st.routed(batch_id, received, len(days))


def _route_day(st: _Days, index: int, day: Any) -> int:
    """Route meter-day ``index``: its readings go to their owners or to
    quarantine (``st`` collects both). Returns the readings it counts (one
    for a meter-day whose ``values`` is not a non-empty list)."""
    drop = st.quarantined.append
    if type(day) is not dict:
        drop(Quarantined(index, _INVALID, None))
        return 1
    values = day.get("values")
    raw: str | None = None
    parsed: list[Any] | None = None
    n = 0
    if type(values) is tuple:  # only from scan_days: JSON has no tuples
        raw, values = values
        if type(values) is int:  # that many finite numbers, not parsed
            n = values
    # SECURITY: a number is a count only inside scan_days' pair ("values": 5 is
    # no list, and invalid).
    if type(values) is list and values:
        n, parsed = len(values), values
    meter = day.get("meter")
    if type(meter) is not str:
        drop(Quarantined(index, _INVALID, None, 0, n or 1))
        return n or 1
    if not st.serial(meter):  # never echo a malformed id back
        drop(Quarantined(index, "malformed-meter-id", None, 0, n or 1))
        return n or 1
    if not _MEMBERS.issuperset(day):
        # SECURITY: D1, only the members the format defines reach a tenant.
        drop(Quarantined(index, _UNEXPECTED, meter, 0, n or 1))
        return n or 1
    stamp, interval, obis = day.get("start"), day.get("interval"), day.get("obis")
    unit, label, via = day.get("unit"), day.get("operator"), day.get("via")
    start = None
    if type(stamp) is str:
        start = st.starts.get(stamp)
        if start is None and stamp not in st.starts:
            start = st.start(stamp)
    coded_obis = None
    if type(obis) is str:
        if obis in st.obis:
            coded_obis = st.obis[obis]
        else:
            key = obis_key(obis)
            coded_obis = st.obis[obis] = None if key is None else (key, obis_units(key))
    quality = day.get("quality")
    if type(quality) is str and len(quality) == 2 * n:  # one check per distinct string
        coded = st.qualities.get(quality)
        if coded is None:
            coded = st.qualities[quality] = _quality(quality, n)
    else:
        coded = _quality(quality, n or 1)
    if (start is None or coded is None or coded_obis is None
            or not 0 < n <= MAX_VALUES
            or type(interval) is not int or not 0 < interval <= MAX_INTERVAL_S
            or type(unit) is not str or unit not in UNITS
            or not (label is None or type(label) is str)
            or not (via is None or (type(via) is str and st.serial(via)))):
        drop(Quarantined(index, _INVALID, meter, 0, n or 1))
        return n or 1
    # D5: a unit that is not the one of the code's quantity (a volume in kWh).
    unit_fits = unit in coded_obis[1]
    codes, bad_codes = coded
    bad_values = () if parsed is None else _bad_values(parsed)
    ean = day.get("ean")
    ean_ok: bool | None = True
    if ean is not None:
        ean_ok = st.eans.get(ean) if type(ean) is str else False
        if ean_ok is None:
            ean_ok = st.eans[ean] = is_valid_ean(ean)
    first, step = start[0], interval * 1_000_000
    last = first + (n - 1) * step
    key = f"{meter} {coded_obis[0]}"
    if (not bad_values and not bad_codes and last <= st.latest and unit_fits and ean_ok
            and key not in st.seen):
        span = st.owners.get(meter)
        if span is None or not span[0] <= first < span[1]:
            span = st.owners[meter] = owner_span(st.relations, meter, first)
        if (span[1] > last and (via is None or st.span(via, first)[1] > last)
                and (ean is None or st.pairing(meter, ean, first)[1] > last)):
            # The common case: one outcome for the whole day.
            st.seen[key] = (first, step, n)
            _emit(st, index, day, start, codes, 0, n,
                  _outcome(st, span, label, via, first, meter, ean), raw, parsed)
            return n or 1
    # Reading by reading, in route_batch's order of checks.
    if parsed is None:
        assert raw is not None
        parsed = json.loads(raw)  # a cut day: its values are needed one by one
    known = None if not ean_ok else st.seen_set(key)
    outcomes: list[tuple[bool, str]] = []
    for i in range(n):
        at = first + i * step
        if i in bad_values or i in bad_codes or at > st.latest:
            outcomes.append((False, _INVALID))
        elif not unit_fits:
            outcomes.append((False, _UNIT_MISMATCH))
        elif known is None:
            outcomes.append((False, _BAD_EAN))
        else:
            size = len(known)
            known.add(at)
            if len(known) == size:
                outcomes.append((False, _DUPLICATE))
            else:
                outcomes.append(_outcome(st, st.span(meter, at), label, via, at, meter, ean))
    run = 0
    for i in range(1, n + 1):
        if i == n or outcomes[i] != outcomes[run]:
            _emit(st, index, day, start, codes, run, i, outcomes[run], raw, parsed)
            run = i
    return n


def _outcome(st: _Days, span: tuple[int, int, str | None, bool], label: Any, via: Any,
             at: int, meter: str, ean: Any) -> tuple[bool, str]:
    """(deliver?, tenant or quarantine reason) of a valid, new reading."""
    owner = span[2]
    if owner is None:
        return (False, _NO_OWNER)
    if label is not None and label != owner:
        return (False, _MISMATCH)  # SECURITY: D1, the HES meant it for someone else
    if span[3] or (via is not None and st.span(via, at)[3]):
        return (False, _AIRPLANE)  # D5: communication disabled
    if ean is not None and not st.pairing(meter, ean, at)[2]:
        return (False, _EAN_MISMATCH)  # SECURITY: D1, another access point's EAN
    return (True, owner)


def _emit(st: _Days, index: int, day: dict[str, Any], start: tuple[int, datetime, str],
          codes: str, a: int, b: int, outcome: tuple[bool, str], raw: str | None,
          parsed: list[Any] | None) -> None:
    """Values ``[a, b)`` of meter-day ``index`` go to a tenant or to quarantine.
    ``raw``: the ``values`` text as posted, if known; ``parsed``: the values
    (None only when the whole day goes and ``raw`` is known)."""
    deliver, name = outcome
    meter = day["meter"]
    if not deliver:
        st.quarantined.append(Quarantined(index, name, meter, a, b - a))
        return
    interval = day["interval"]
    stamp = start[2]
    if a == 0 and (parsed is None or b == len(parsed)):  # the whole day
        values = raw if raw is not None else st.raw_values(index)
        if values is None:
            assert parsed is not None
            values = json.dumps(parsed)
    else:
        assert parsed is not None
        values = json.dumps(parsed[a:b])
        if a:  # cut where the owner changed: the run's own first instant, same offset
            stamp = json.dumps((start[1] + timedelta(seconds=a * interval)).isoformat())
    ean = day.get("ean")
    # Meter, OBIS, unit and codes are validated (no character needs escaping).
    text = (f'{{"meter":"{meter}","start":{stamp},"interval":{interval},'
            f'"obis":"{day["obis"]}","unit":"{day["unit"]}","quality":"{codes[2 * a:2 * b]}",'
            f'"values":{values}' + (f',"ean":"{ean}"}}' if ean is not None else "}"))
    part = st.parts.get(name)
    if part is None:
        part = st.parts[name] = []
        st.readings[name] = 0
    part.append(text)
    st.readings[name] += b - a
