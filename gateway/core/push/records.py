"""Per-record routing of pushed HES meter readings (D1, D5).

The HES posts a daily batch ``{"batch_id", "source", "records": [...]}``.
``route_batch()`` is pure: it splits the records per tenant that owns each
meter *at the reading's timestamp*, according to the relation feed only (an
upstream never vouches for itself; the HES's own ``operator`` label is
checked, never trusted), and quarantines every record it cannot route safely,
with one reason per record:

- ``invalid-record``      not an object, a field missing or of the wrong type,
                          a bad or offset-less timestamp, or one more than
                          ``FUTURE_SKEW`` ahead of ``now``, a value that is not a
                          finite number, an unknown unit or quality code, a
                          malformed OBIS code, a malformed ``via`` serial;
- ``unit-mismatch``       the unit is not the one of the OBIS code's quantity
                          (energy kWh, power kW, gas and water volumes m3);
- ``malformed-meter-id``  the meter serial is not a serial;
- ``unexpected-field``    a member the format does not define (a record carries
                          ``meter``, ``timestamp``, ``obis``, ``value``,
                          ``unit``, ``quality`` and optionally ``operator``,
                          ``via``, ``ean``; nothing else reaches a tenant, D1);
- ``bad-ean``             an ``ean`` is present but malformed or its GS1 check
                          digit fails;
- ``duplicate``           a second record with the same meter, instant and OBIS
                          code (``1-0:1.8.1`` and ``1-0:1.8.1*255`` are one);
- ``no-owner``            no single owner holds the meter at that instant;
- ``owner-mismatch``      the HES labelled the record for another tenant than
                          the true owner (misrouting: an isolation violation);
- ``airplane-mode``       the meter, or the electricity meter that carried it,
                          has communication disabled at that instant (D5);
- ``ean-mismatch``        the record's ``ean`` is not the access point the feed
                          pairs with that meter at that instant (a foreign EAN
                          would reach the meter's owner: an isolation violation).

A water meter read through an electricity meter (``via``) belongs to the
water company owning the water meter, never to the DSO owning the carrier.
Delivered records are passed through unchanged (the same objects, not
copies) except that ``operator`` and ``via`` are removed. A record missing a
required member is ``invalid-record`` whatever else it carries.

Complexity: O(n) in the number of records, one pass, no per-record datetime
parsing, regex or relation scan in the common case. Timestamps, serials, EANs
and OBIS codes are validated once per distinct string (a daily batch repeats
the same 96 quarter-hours for every meter); ownership is resolved once per
meter into the widest interval over which owner and airplane mode are
constant, and recomputed only when a record falls outside it (a meter that
changed owner at noon is resolved twice). Caches live for one call and hold
at most one entry per distinct value in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from gateway.core.identifiers import (
    is_plain_id,
    is_valid_ean,
    is_valid_meter_serial,
    obis_key,
    obis_units,
)
from gateway.core.meters import AIRPLANE_MODE
from gateway.core.rejected import Rejected
from gateway.core.relations.index import RelationIndex
from gateway.core.relations.snapshot import OPEN_FROM, OPEN_TO, REC, encode_id

QUARANTINE_REASONS = frozenset({
    "invalid-record", "malformed-meter-id", "unexpected-field", "bad-ean", "duplicate",
    "no-owner", "owner-mismatch", "airplane-mode", "ean-mismatch", "unit-mismatch",
})
# Counted in gateway_isolation_violations_total and raised as security events.
ISOLATION_REASONS_PUSH = frozenset({"owner-mismatch", "ean-mismatch"})

BATCH_REJECT_REASONS = frozenset({
    "batch-not-object", "bad-batch-id", "records-not-list", "batch-too-large",
    "meter-days-not-list", "unsupported-format",  # the columnar format (push.days)
})

UNITS = frozenset({"kWh", "kW", "m3"})
MAX_RECORDS = 2_000_000  # readings in one per-record batch (413 beyond)
QUALITY_CODES = frozenset({"01", "02", "99"})  # read, estimated, missing (DOMAIN, Readings)
FUTURE_SKEW = timedelta(minutes=5)
# The feed pairs a meter with its access point: Relation(METER_EAN,
# meter_ean_id(serial, ean), <grid operator>, ACCESS_POINT, from, to).
METER_EAN = "meter-ean"
ACCESS_POINT = "access-point"
_DROPPED = ("operator", "via")  # the HES's routing hints never reach a tenant
# The members a per-record reading may carry; the first six are required.
RECORD_MEMBERS = frozenset({"meter", "timestamp", "obis", "value", "unit", "quality",
                            "operator", "via", "ean"})
_REQUIRED_MEMBERS = 6

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Open interval ends, in microseconds. The snapshot's open bounds (OPEN_FROM,
# OPEN_TO) lie beyond them, so they never narrow a span.
_MIN, _MAX = -(1 << 62), 1 << 62
assert OPEN_FROM < _MIN and _MAX < OPEN_TO
MALFORMED = -1  # the id of a serial or OBIS code that is not one
# The OBIS shape the brief fixes, ASCII digits only; matched once per distinct code.
_NO_UNITS: frozenset[str] = frozenset()


def _obis(code: str, ids: dict[str, int]) -> tuple[int, frozenset[str]]:
    """(a small id of the code's one spelling, or MALFORMED; its units)."""
    key = obis_key(code)
    if key is None:
        return MALFORMED, _NO_UNITS
    return ids.setdefault(key, len(ids)), obis_units(key)
_record = REC.unpack_from  # (tenant, relation, valid_from us, valid_to us)
_REC_SIZE = REC.size


@dataclass(frozen=True, slots=True)
class Quarantined:
    index: int  # position in the batch's records (meter-days: in its meter_days)
    reason: str
    meter: str | None  # the serial if well formed (for the report back), never the value
    first: int = 0  # meter-days only: the first quarantined value of that meter-day
    count: int = 1  # how many readings: always 1 for a record, a run for a meter-day


@dataclass(frozen=True, slots=True)
class RoutedBatch:
    batch_id: str
    # tenant -> its records, batch order (dicts; from gateway.core.push.readings, Readings)
    parts: Mapping[str, tuple[Any, ...]]
    quarantined: tuple[Quarantined, ...]
    received: int
    # Routed run by run (gateway.core.push.readings.route_runs): (owner, first
    # reading, end, hints stripped) of each meter's run, batch order; None:
    # reading by reading.
    runs: tuple[tuple[str, int, int, bool], ...] | None = None

    def counts(self) -> dict[str, int]:
        queued = sum(len(records) for records in self.parts.values())
        return {"received": self.received, "queued": queued,
                "quarantined": sum(q.count for q in self.quarantined)}


class BatchRejected(Rejected):
    """The batch as a whole is unusable; the HES (the caller) is at fault."""

    def __init__(self, reason: str, message: str, *, status: int = 400) -> None:
        super().__init__(reason, message, status=status)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // _US


# (lo, hi, owner or None, airplane mode, the owner's part): constant on [lo, hi).
_Span = tuple[int, int, str | None, bool, list[Any]]


class _Resolver:
    """The slow paths behind the per-call caches of :func:`route_batch`."""

    __slots__ = ("_latest", "_parts", "_relations")

    def __init__(self, relations: RelationIndex, now: datetime,
                 parts: dict[str, list[Any]]) -> None:
        self._relations = relations
        self._latest = _micros(now + FUTURE_SKEW)
        self._parts = parts

    def instant(self, stamp: str) -> int | None:
        """Microseconds since the epoch, or None: unparsable, no offset, or future."""
        try:
            at = datetime.fromisoformat(stamp)
            if at.utcoffset() is None:  # ISO 8601 *with* an offset, or it means nothing
                return None
            micros = _micros(at)
        except (ValueError, OverflowError):
            return None
        return None if micros > self._latest else micros

    def span(self, serial: str, at: int) -> _Span:
        """Owner and airplane mode of ``serial`` at ``at``, and the widest
        interval around ``at`` over which both stay the same."""
        lo, hi, owner, airplane = owner_span(self._relations, serial, at)
        part = self._parts.setdefault(owner, []) if owner is not None else []
        return (lo, hi, owner, airplane, part)


def owner_span(relations: RelationIndex, serial: str, at: int
               ) -> tuple[int, int, str | None, bool]:
    """``(lo, hi, owner, airplane)``: the meter's single owner (None: no owner,
    several, or the wildcard) and whether it is in airplane mode at ``at``
    (microseconds since the epoch), constant over ``[lo, hi)`` around ``at``.
    In C where it was built (``RelationIndex.native_span``), else
    :func:`owner_span_reference`."""
    read = relations.native_span("meter", "owner", AIRPLANE_MODE, _MIN, _MAX)
    if read is None:
        return owner_span_reference(relations, serial, at)
    try:
        key = serial.encode()
    except UnicodeEncodeError:
        key = encode_id(serial)
    return read(key, at)


def owner_probe(relations: RelationIndex) -> tuple[Any, int, int, int, tuple[str, ...]] | None:
    """What the C routers (gateway/core/_native_days.c, _native_runs.c) read
    the owners with: ``Probe.span``'s arguments for a meter's owner and
    airplane mode (:meth:`RelationIndex.native_span_args`); None where
    :func:`owner_span` reads them in Python, and so must they."""
    if relations.native_span("meter", "owner", AIRPLANE_MODE, _MIN, _MAX) is None:
        return None
    return relations.native_span_args("meter", "owner", AIRPLANE_MODE)


def owner_span_reference(relations: RelationIndex, serial: str, at: int
                         ) -> tuple[int, int, str | None, bool]:
    """:func:`owner_span` read in Python: the snapshot's records in place (no
    Relation, no datetime is built: the bounds are stored in microseconds);
    the same answer as from ``relations.of("meter", serial)``."""
    lo, hi = _MIN, _MAX
    owners: set[str] = set()
    airplane = False
    snapshot = relations.snapshot
    try:
        key = serial.encode()
    except UnicodeEncodeError:
        key = encode_id(serial)
    row = snapshot.row("meter", key)
    if row != -1:
        buf, tenants, names = snapshot.buffer, snapshot.tenants, snapshot.names
        first, end = snapshot.records_at(row)
        for p in range(first, end, _REC_SIZE):
            t, r, start, stop = _record(buf, p)
            name = names[r]
            if name != "owner" and name != AIRPLANE_MODE:
                continue
            for bound in (start, stop):  # an open bound (OPEN_FROM, OPEN_TO) narrows nothing
                if bound <= at:
                    lo = max(lo, bound)
                else:
                    hi = min(hi, bound)
            if start <= at < stop:
                if name == "owner":
                    owners.add(tenants[t])
                else:  # D5: any airplane-mode tuple silences the meter, whoever set it
                    airplane = True
    # SECURITY: fail closed when the feed names no owner, several, or the wildcard.
    owner = next(iter(owners)) if len(owners) == 1 and "*" not in owners else None
    return (lo, hi, owner, airplane)


def meter_ean_id(serial: str, ean: str) -> str:
    """The resource id of a meter's pairing with an access point in the feed."""
    return f"{serial}/{ean}"


def ean_span(relations: RelationIndex, serial: str, ean: str, at: int
             ) -> tuple[int, int, bool]:
    """``(lo, hi, paired)``: whether the feed pairs meter ``serial`` with the
    access point ``ean`` at ``at`` (microseconds since the epoch), constant
    over ``[lo, hi)``. Reads the snapshot in place, as :func:`owner_span`."""
    lo, hi = _MIN, _MAX
    paired = False
    snapshot = relations.snapshot
    row = snapshot.row(METER_EAN, encode_id(meter_ean_id(serial, ean)))
    if row != -1:
        buf, names = snapshot.buffer, snapshot.names
        first, end = snapshot.records_at(row)
        for p in range(first, end, _REC_SIZE):
            _, r, start, stop = _record(buf, p)
            if names[r] != ACCESS_POINT:
                continue
            for bound in (start, stop):
                if bound <= at:
                    lo = max(lo, bound)
                else:
                    hi = min(hi, bound)
            if start <= at < stop:
                paired = True
    return (lo, hi, paired)


def paired(pairings: dict[str, tuple[int, int, bool]], relations: RelationIndex,
           serial: str, ean: str, at: int) -> bool:
    """Whether the feed pairs meter ``serial`` with ``ean`` at ``at``, through
    ``pairings`` (one batch's cache: "serial/ean" -> :func:`ean_span`)."""
    key = meter_ean_id(serial, ean)
    known = pairings.get(key)
    if known is None or not known[0] <= at < known[1]:
        known = pairings[key] = ean_span(relations, serial, ean, at)
    return known[2]


def batch_items(batch: Any, member: str, limit: int, *, unit: str,
                not_list: str) -> tuple[str, list[Any]]:
    """The batch id and the list under ``member`` of a pushed batch, checked
    (the per-record form's ``records``, the columnar form's ``meter_days``)."""
    if not isinstance(batch, Mapping):
        raise BatchRejected("batch-not-object", "the batch must be a JSON object")
    batch_id = check_batch_id(batch.get("batch_id"))
    items = batch.get(member)
    if not isinstance(items, list):
        raise BatchRejected(not_list, f"{member} must be a JSON array")
    check_batch_size(len(items), limit, unit)
    return batch_id, items


def check_batch_id(batch_id: Any) -> str:
    """A batch id as the source system's own namespace takes it, or :class:`BatchRejected`."""
    if not isinstance(batch_id, str) or not is_plain_id(batch_id):
        raise BatchRejected("bad-batch-id",
                            "batch_id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return batch_id


def check_batch_size(count: int, limit: int, unit: str) -> None:
    """At most ``limit`` items in one batch (413 otherwise)."""
    if count > limit:
        raise BatchRejected("batch-too-large", f"{count} {unit}, at most {limit} per batch",
                            status=413)


def _batch_records(batch: Any, max_records: int) -> tuple[str, list[Any]]:
    return batch_items(batch, "records", max_records, unit="records",
                       not_list="records-not-list")


def route_batch(batch: Any, relations: RelationIndex, now: datetime, *,
                max_records: int = MAX_RECORDS) -> RoutedBatch:
    """Split a parsed HES batch per owning tenant; quarantine what cannot go."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    batch_id, records = _batch_records(batch, max_records)
    parts: dict[str, list[Mapping[str, Any]]] = {}
    quarantined: list[Quarantined] = []
    resolver = _Resolver(relations, now, parts)
    # Per-call caches: serial and OBIS code -> a small id (-1: malformed),
    # timestamp -> microseconds (None: invalid), EAN -> valid.
    serials: dict[str, int] = {}
    # OBIS code as posted -> (id of its one spelling, the units it may be in)
    obis_codes: dict[str, tuple[int, frozenset[str]]] = {}
    obis_ids: dict[str, int] = {}
    instants: dict[str, int | None] = {}
    eans: dict[str, bool] = {}
    spans: dict[str, _Span] = {}
    # (instant, meter id, OBIS id): ints only, so the collector soon untracks them.
    seen: set[tuple[int, int, int]] = set()
    drop = quarantined.append

    def span_of(serial: str, at: int) -> _Span:
        span = spans.get(serial)
        if span is None or not span[0] <= at < span[1]:
            span = spans[serial] = resolver.span(serial, at)
        return span

    pairings: dict[str, tuple[int, int, bool]] = {}  # "serial/ean" -> ean_span

    for index, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            drop(Quarantined(index, "invalid-record", None))
            continue
        meter = rec.get("meter")
        if type(meter) is not str:
            drop(Quarantined(index, "invalid-record", None))
            continue
        meter_id = serials.get(meter)
        if meter_id is None:
            meter_id = serials[meter] = (len(serials) if is_valid_meter_serial(meter)
                                         else MALFORMED)
        if meter_id == MALFORMED:  # never echo a malformed id back
            drop(Quarantined(index, "malformed-meter-id", None))
            continue
        # SECURITY: D1, only the members the format defines reach a tenant (a name,
        # another serial...). Six are required: a record of six or fewer members
        # with an unknown one lacks a required one and is invalid below.
        if len(rec) > _REQUIRED_MEMBERS and not RECORD_MEMBERS.issuperset(rec):
            drop(Quarantined(index, "unexpected-field", meter))
            continue
        stamp: Any = rec.get("timestamp")
        obis: Any = rec.get("obis")
        value: Any = rec.get("value")
        unit, quality = rec.get("unit"), rec.get("quality")
        via, label = rec.get("via"), rec.get("operator")
        at = None
        if type(stamp) is str:
            at = instants.get(stamp)
            if at is None and stamp not in instants:
                at = instants[stamp] = resolver.instant(stamp)
        obis_id, fits = MALFORMED, _NO_UNITS
        if type(obis) is str:
            coded = obis_codes.get(obis)
            if coded is None:
                coded = obis_codes[obis] = _obis(obis, obis_ids)
            obis_id, fits = coded
        bad_via = via is not None
        if type(via) is str:
            known = serials.get(via)
            if known is None:
                known = serials[via] = len(serials) if is_valid_meter_serial(via) else MALFORMED
            bad_via = known == MALFORMED
        kind = type(value)
        if (at is None or obis_id == MALFORMED or bad_via
                or not (kind is int or (kind is float and value - value == 0.0))  # finite
                or type(unit) is not str or unit not in UNITS
                or type(quality) is not str or quality not in QUALITY_CODES
                or not (label is None or type(label) is str)):
            drop(Quarantined(index, "invalid-record", meter))
            continue
        if unit not in fits:
            # D5: a volume in kWh, an energy in m³ is no reading of that quantity.
            drop(Quarantined(index, "unit-mismatch", meter))
            continue
        ean = rec.get("ean")
        if ean is not None:
            ok = eans.get(ean) if type(ean) is str else False
            if ok is None:
                ok = eans[ean] = is_valid_ean(ean)
            if not ok:
                drop(Quarantined(index, "bad-ean", meter))
                continue
        # The instant, not its spelling: "Z" and "+00:00" are the same reading.
        size = len(seen)
        seen.add((at, meter_id, obis_id))
        if len(seen) == size:
            drop(Quarantined(index, "duplicate", meter))
            continue
        span = spans.get(meter)
        if span is None or not span[0] <= at < span[1]:
            span = spans[meter] = resolver.span(meter, at)
        _, _, owner, airplane, part = span
        if owner is None:
            drop(Quarantined(index, "no-owner", meter))
        elif label is not None and label != owner:
            # SECURITY: D1. The HES meant this for someone else: deliver to nobody.
            drop(Quarantined(index, "owner-mismatch", meter))
        elif airplane or (via is not None and span_of(via, at)[3]):
            # D5: communication disabled; data claiming to come from it is not delivered.
            drop(Quarantined(index, "airplane-mode", meter))
        elif ean is not None and not paired(pairings, relations, meter, ean, at):
            # SECURITY: D1. Another access point's EAN would reach this meter's owner.
            drop(Quarantined(index, "ean-mismatch", meter))
        elif "via" in rec or "operator" in rec:
            part.append({k: v for k, v in rec.items() if k not in _DROPPED})
        else:
            part.append(rec)
    return RoutedBatch(
        batch_id=batch_id,
        parts=MappingProxyType({tenant: tuple(recs) for tenant, recs in parts.items() if recs}),
        quarantined=tuple(quarantined),
        received=len(records),
    )
