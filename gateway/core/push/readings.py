"""The per-record batch's fast path (D1, D5): one typed parse, the same routing.

A per-record batch (:mod:`.records`) is a list of small objects, and the
general path pays for a Python dict per reading three times: json.loads
builds it, :func:`~gateway.core.push.records.route_batch` looks its members
up one by one, and the fingerprint and the tenants' parts encode it again.
Here a batch whose every record is well typed is decoded by msgspec straight
into :class:`Reading` structs (C, no dict), routed by :func:`route_readings`
and encoded from the structs.

What takes this path, and what does not:

- :func:`decode_readings` accepts only a UTF-8 body json.loads accepts and
  reads alike (the last of a repeated key wins in both): ``batch_id`` a
  string, ``records``, optionally ``source`` (a string), no other member (no
  ``format``: a meter-days batch is not this path's), and every record an
  object of the format's members only (``meter``, ``timestamp``, ``obis``,
  ``value``, ``unit``, ``quality``; ``operator``, ``via``, ``ean``
  optional), the strings strings, the unit and quality code known ones and
  the value a JSON number within range. Anything else (an unknown member, a
  missing one, a value of another type, NaN, a number past a double's
  range, a lone surrogate) returns None, and the batch takes the general
  path, which quarantines record by record. So a malformed record costs its
  batch this path's speed, never its outcome.
- :func:`route_readings` gives every record the outcome ``route_batch``
  gives it, in the same order of checks; ``tests/core/push/test_readings.py``
  compares the two on generated batches. A delivered reading is the record
  without ``operator`` and ``via``. A clean batch, meter after meter, is
  routed a meter's run of readings at a time (:func:`route_runs`: in C where
  it was built, gateway/core/_native_runs.c, else
  :func:`route_runs_reference`); any other, reading by reading
  (:func:`route_each`).
- The fingerprint (:func:`readings_fingerprint`) is the general path's
  canonical JSON, keys sorted, and a tenant's part (:func:`encode_readings`)
  the standard library's compact JSON of its records, members in name order.
  msgspec writes both where its bytes are provably those of ``json.dumps``
  (ASCII, no DEL, every value a number both spell alike); elsewhere the
  standard library writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from itertools import compress, islice, pairwise
from operator import attrgetter, ne
from types import MappingProxyType
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from gateway.core.identifiers import is_valid_ean, is_valid_meter_serial
from gateway.core.native import native as _native
from gateway.core.push.canonical import fingerprint_digest
from gateway.core.push.records import (
    _MAX,
    _MIN,
    MALFORMED,
    MAX_RECORDS,
    Quarantined,
    RoutedBatch,
    _obis,
    _Resolver,
    _Span,
    check_batch_id,
    check_batch_size,
    owner_probe,
    paired,
)
from gateway.core.relations.index import RelationIndex

_Optional = str | None | UnsetType
# records.UNITS and records.QUALITY_CODES, checked by the parse (tests/core/push/test_readings.py)
Unit = Literal["kWh", "kW", "m3"]
Quality = Literal["01", "02", "99"]


class Reading(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One per-record reading as posted. The members are declared in name
    order: encoded, they come out sorted, as the canonical form has them; an
    absent optional member stays absent (``UNSET``), a ``null`` one is None."""

    ean: _Optional = UNSET
    meter: str
    obis: str
    operator: _Optional = UNSET
    quality: Quality
    timestamp: str
    unit: Unit
    value: int | float
    via: _Optional = UNSET


class ReadingsBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The batch: these members only, so a document this path takes nests
    three deep at most (the batch, its records, a record) and needs no
    nesting check before its parse."""

    batch_id: str
    records: list[Reading]
    source: _Optional = UNSET
    format: UnsetType = UNSET  # any ``format`` member, even null: not this path's


_DECODER = msgspec.json.Decoder(ReadingsBatch)
_ENCODE = msgspec.json.Encoder().encode
# json.dumps writes a float of magnitude under 1e-4 or from 1e16 on with an
# exponent ("1e-05", "1e+16"), msgspec otherwise ("0.00001", "1e16"); between
# the two they write the same shortest digits, and integers alike.
_FIXED_FROM, _FIXED_BELOW = 1e-4, 1e16
_VALUE = attrgetter("value")
_STRIP_HINTS = partial(msgspec.structs.replace, via=UNSET, operator=UNSET)
_METER, _STAMP = attrgetter("meter"), attrgetter("timestamp")
_OBIS_OF, _UNIT = attrgetter("obis"), attrgetter("unit")
_VIA, _OPERATOR, _EAN = attrgetter("via"), attrgetter("operator"), attrgetter("ean")
_ABSENT = {UNSET}
_NO_EAN = {UNSET, None}
# A meter's readings: its owner, the first one's index, the end, and whether
# they are delivered without their routing hints.
Run = tuple[str, int, int, bool]


def decode_readings(raw: bytes) -> ReadingsBatch | None:
    """The batch as :class:`Reading` structs, or None where it is not this
    path's (module docstring): not UTF-8 (msgspec checks every string), a
    meter-days batch (its ``format`` or ``meter_days`` member stops the
    parse at once), any other member or type."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


def route_readings(batch: ReadingsBatch, relations: RelationIndex, now: datetime, *,
                   max_records: int = MAX_RECORDS) -> RoutedBatch:
    """:func:`~gateway.core.push.records.route_batch` for a decoded batch:
    the same parts and quarantine, record for record."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    batch_id = check_batch_id(batch.batch_id)
    records = batch.records
    check_batch_size(len(records), max_records, "records")
    routed = route_runs(records, relations, now)
    if routed is None:
        return route_each(batch_id, records, relations, now)
    runs, parts = routed
    return RoutedBatch(
        batch_id=batch_id,
        parts=MappingProxyType({tenant: tuple(recs) for tenant, recs in parts.items() if recs}),
        quarantined=(),
        received=len(records),
        runs=tuple(runs),
    )


# The members the C reads of a Reading, in _native_runs.c's order (its slots).
_SLOTS = tuple(Reading.__dict__[name] for name in
               ("ean", "meter", "obis", "operator", "timestamp", "unit", "via"))


def _native_context(relations: RelationIndex, now: datetime) -> tuple[Any, ...] | None:
    """What ``route_runs`` of gateway/core/_native_runs.c reads: the Reading
    type and its slots, the router's instant and OBIS readers, the owner
    relation's probe of the snapshot. None where the C module was not built
    or the owners are read in Python."""
    args = None if _native is None else owner_probe(relations)
    if args is None:
        return None
    probe, o, f, wildcard, tenants = args
    instant = _Resolver(relations, now, {}).instant
    return (Reading, UNSET, _SLOTS, instant, _obis, MALFORMED, _STRIP_HINTS, probe, o, f,
            wildcard, _MIN, _MAX, tenants)


def route_runs(records: Sequence[Reading], relations: RelationIndex, now: datetime
               ) -> tuple[list[Run], dict[str, list[Reading]]] | None:
    """:func:`route_runs_reference`'s answer, in C where it was built
    (gateway/core/_native_runs.c) and the batch is a list."""
    if type(records) is list:
        context = _native_context(relations, now)
        if context is not None and _native is not None:
            routed: tuple[list[Run], dict[str, list[Reading]]] | None = \
                _native.route_runs(context, records)
            return routed
    return route_runs_reference(records, relations, now)


def route_runs_reference(records: Sequence[Reading], relations: RelationIndex, now: datetime
                         ) -> tuple[list[Run], dict[str, list[Reading]]] | None:
    """A batch that is meter after meter and quarantines nothing, worked out
    column by column and meter by meter rather than reading by reading: each
    meter's run ``(owner, first, end, stripped)`` in batch order, and the
    parts (tenant -> its readings as delivered, in the order the loop makes
    them; a carrier's owner may have none). None where the batch is anything
    else (an EAN, a meter's readings apart, hints that differ within a
    meter's readings, a reading some check would quarantine, an owner or a
    carrier's state that changes within a meter's readings), and
    :func:`route_each` decides.

    The same outcome as :func:`route_each` for every batch it takes: every
    check of the loop is here, on the distinct values or on a meter's run.
    A reading is a duplicate when its instant, meter and OBIS code are
    another's; with each distinct timestamp a distinct instant and each
    distinct code spelling a distinct code (both checked), that is when its
    three strings are, and a meter's readings all lie in its run. A run
    whose readings carry routing hints (``via``, ``operator``, even null) is
    delivered without them (``stripped``), as by the loop."""
    count = len(records)
    if not count or not set(map(_EAN, records)) <= _NO_EAN:
        return None
    meters = list(map(_METER, records))
    cuts = [0, *compress(range(1, count), map(ne, meters, islice(meters, 1, None))), count]
    if len(cuts) - 1 != len({meters[start] for start in islice(cuts, len(cuts) - 1)}):
        return None  # a meter's readings are not all together
    hinted = set(map(_VIA, records)) != _ABSENT or set(map(_OPERATOR, records)) != _ABSENT
    vias = list(map(_VIA, records)) if hinted else []
    labels = list(map(_OPERATOR, records)) if hinted else []
    parts: dict[str, list[Reading]] = {}
    resolver = _Resolver(relations, now, parts)  # the owners' parts, in the loop's order
    stamps = list(map(_STAMP, records))
    instants: dict[str, int] = {}
    for stamp in set(stamps):
        at = resolver.instant(stamp)
        if at is None:
            return None
        instants[stamp] = at
    if len(set(instants.values())) != len(instants):
        return None  # two spellings of one instant
    codes = list(map(_OBIS_OF, records))
    fits: dict[str, frozenset[str]] = {}
    obis_ids: dict[str, int] = {}
    for code in set(codes):
        obis_id, units = _obis(code, obis_ids)
        if obis_id == MALFORMED:
            return None
        fits[code] = units
    if len(obis_ids) != len(fits):
        return None  # two spellings of one code
    units_of = list(map(_UNIT, records))
    ats = list(map(instants.__getitem__, stamps))
    runs: list[Run] = []
    for start, end in pairwise(cuts):
        meter = meters[start]
        if not is_valid_meter_serial(meter):
            return None
        run = ats[start:end]
        first, earliest, latest = run[0], min(run), max(run)
        lo, hi, owner, silent, part = resolver.span(meter, first)
        if owner is None or silent or earliest < lo or latest >= hi:
            return None
        size = end - start
        code, unit = codes[start], units_of[start]
        if codes[start:end].count(code) == size and units_of[start:end].count(unit) == size:
            # One register of the meter: D5, a volume in kWh or an energy in
            # m³ is no reading of that quantity; a duplicate repeats an instant.
            if unit not in fits[code] or len(set(stamps[start:end])) != size:
                return None
        elif (any(unit not in fits[code]
                  for code, unit in set(zip(codes[start:end], units_of[start:end], strict=True)))
              or len(set(zip(stamps[start:end], codes[start:end], strict=True))) != size):
            return None
        stripped = False
        if hinted:
            via, label = vias[start], labels[start]
            if vias[start:end].count(via) != size or labels[start:end].count(label) != size:
                return None  # hints that differ within a meter's readings
            if type(label) is str and label != owner:
                return None  # SECURITY: D1, the HES meant it for someone else
            if type(via) is str:
                if not is_valid_meter_serial(via):
                    return None
                carrier_lo, carrier_hi, _, carrier_silent, _ = resolver.span(via, first)
                # D5: what a carrier in airplane mode carries is not delivered.
                if carrier_silent or earliest < carrier_lo or latest >= carrier_hi:
                    return None
            stripped = via is not UNSET or label is not UNSET
        if stripped:  # the HES's routing hints never reach a tenant, not even as null
            part.extend(map(_STRIP_HINTS, records[start:end]))
        else:
            part.extend(records[start:end])
        runs.append((owner, start, end, stripped))
    return runs, parts


def route_each(batch_id: str, records: Sequence[Reading], relations: RelationIndex,
               now: datetime) -> RoutedBatch:
    """The batch reading by reading, in ``route_batch``'s order of checks."""
    parts: dict[str, list[Reading]] = {}
    quarantined: list[Quarantined] = []
    resolver = _Resolver(relations, now, parts)
    serials: dict[str, int] = {}
    obis_codes: dict[str, tuple[int, frozenset[str]]] = {}
    obis_ids: dict[str, int] = {}
    instants: dict[str, int | None] = {}
    eans: dict[str, bool] = {}
    spans: dict[str, _Span] = {}
    pairings: dict[str, tuple[int, int, bool]] = {}
    seen: set[tuple[int, int, int]] = set()  # (instant, meter id, OBIS code id)
    drop = quarantined.append
    strip = msgspec.structs.replace

    def serial_id(serial: str) -> int:
        found = serials.get(serial)
        if found is None:
            found = serials[serial] = len(serials) if is_valid_meter_serial(serial) \
                else MALFORMED
        return found

    # A daily batch is meter after meter: a record of the meter before it
    # reuses that meter's id (its span is still checked for the instant).
    last_meter: str | None = None
    for index, rec in enumerate(records):
        meter = rec.meter
        if meter != last_meter:
            last_meter, meter_id = meter, serial_id(meter)
        if meter_id == MALFORMED:  # never echo a malformed id back
            drop(Quarantined(index, "malformed-meter-id", None))
            continue
        stamp = rec.timestamp
        at = instants.get(stamp)
        if at is None and stamp not in instants:
            at = instants[stamp] = resolver.instant(stamp)
        obis = rec.obis
        coded = obis_codes.get(obis)
        if coded is None:
            coded = obis_codes[obis] = _obis(obis, obis_ids)
        obis_id, fits = coded
        via, ean, label = rec.via, rec.ean, rec.operator
        hinted = via is not UNSET or label is not UNSET
        if type(via) is not str:
            via = None
        # The parse took only a known unit and quality code, and a number
        # within a double's range: finite.
        if (at is None or obis_id == MALFORMED
                or (via is not None and serial_id(via) == MALFORMED)):
            drop(Quarantined(index, "invalid-record", meter))
            continue
        if rec.unit not in fits:
            # D5: a volume in kWh, an energy in m³ is no reading of that quantity.
            drop(Quarantined(index, "unit-mismatch", meter))
            continue
        if type(ean) is str:
            ok = eans.get(ean)
            if ok is None:
                ok = eans[ean] = is_valid_ean(ean)
            if not ok:
                drop(Quarantined(index, "bad-ean", meter))
                continue
        else:
            ean = None
        size = len(seen)
        seen.add((at, meter_id, obis_id))  # ints only: the collector soon untracks them
        if len(seen) == size:
            drop(Quarantined(index, "duplicate", meter))
            continue
        span = spans.get(meter)
        if span is None or not span[0] <= at < span[1]:
            span = spans[meter] = resolver.span(meter, at)
        owner = span[2]
        if owner is None:
            drop(Quarantined(index, "no-owner", meter))
            continue
        if type(label) is str and label != owner:
            # SECURITY: D1. The HES meant this for someone else: deliver to nobody.
            drop(Quarantined(index, "owner-mismatch", meter))
            continue
        silent = span[3]
        if not silent and via is not None:
            carrier = spans.get(via)
            if carrier is None or not carrier[0] <= at < carrier[1]:
                carrier = spans[via] = resolver.span(via, at)
            silent = carrier[3]
        if silent:
            # D5: communication disabled; data claiming to come from it is not delivered.
            drop(Quarantined(index, "airplane-mode", meter))
        elif ean is not None and not paired(pairings, relations, meter, ean, at):
            # SECURITY: D1. Another access point's EAN would reach this meter's owner.
            drop(Quarantined(index, "ean-mismatch", meter))
        elif hinted:
            # The HES's routing hints never reach a tenant, not even as null.
            span[4].append(strip(rec, via=UNSET, operator=UNSET))
        else:
            span[4].append(rec)
    return RoutedBatch(
        batch_id=batch_id,
        parts=MappingProxyType({tenant: tuple(recs) for tenant, recs in parts.items() if recs}),
        quarantined=tuple(quarantined),
        received=len(records),
    )


def plain_numbers(records: Sequence[Reading]) -> bool:
    """Every value is a number json.dumps and msgspec spell alike: an integer
    or a float of magnitude 0 or from 1e-4 to under 1e16 (a larger integer
    is taken for a float: that only costs the fast encoding). True for the
    batch is true for every part of it."""
    sizes = list(map(abs, map(_VALUE, records)))
    return not sizes or (max(sizes) < _FIXED_BELOW
                         and min(filter(None, sizes), default=_FIXED_FROM) >= _FIXED_FROM)


def _as_json(out: bytes, plain: bool) -> bool:
    """msgspec's bytes ``out`` are json.dumps's (ensure_ascii, compact): its
    records' numbers ``plain``, and ``out`` ASCII without DEL (which
    json.dumps escapes)."""
    return plain and out.isascii() and b"\x7f" not in out


def _standard(records: Sequence[Reading]) -> bytes:
    """json.dumps's compact bytes of the records, members in name order (the
    structs' order: tests/core/push/test_readings.py)."""
    plain = msgspec.to_builtins(list(records))  # UNSET members left out
    return json.dumps(plain, separators=(",", ":")).encode()


def encode_readings(records: Sequence[Reading], *, plain: bool) -> bytes:
    """A tenant's part: the bytes of ``json.dumps(records, separators=(",", ":"))``
    with each record's members in name order. ``plain``: :func:`plain_numbers`
    of these records or of the batch they are part of."""
    out = _ENCODE(records)
    return out if _as_json(out, plain) else _standard(records)


def readings_fingerprint(batch_id: str, records: Sequence[Reading], *, plain: bool) -> str:
    """:func:`~gateway.core.push.canonical.batch_fingerprint` of the batch: the
    same SHA-256 of the canonical JSON (keys sorted, which the structs' name
    order gives), from the structs. ``plain``: :func:`plain_numbers` of them."""
    out = _ENCODE(records)
    if not _as_json(out, plain):
        out = _standard(records)
    digest = fingerprint_digest(batch_id)
    digest.update(memoryview(out)[1:-1])  # the records without their brackets, not copied
    digest.update(b"]}")
    return digest.hexdigest()


def encode_runs(batch_id: str, records: Sequence[Reading], runs: Sequence[Run],
                parts: Mapping[str, Sequence[Reading]], *,
                plain: bool) -> tuple[str, dict[str, list[memoryview]]] | None:
    """:func:`readings_fingerprint` of the batch and each tenant's part's
    runs, encoded (:func:`join_part` makes them :func:`encode_readings`'s
    bytes), from one encoding of each run instead of two of the batch (two
    of a run delivered without its hints: the fingerprint is of what was
    posted); None where msgspec's bytes are not json.dumps's (those two then
    write them). ``runs`` and ``parts``: the batch's ``RoutedBatch``;
    ``plain``: as for those two."""
    if not plain:
        return None
    digest = fingerprint_digest(batch_id)
    pieces: dict[str, list[memoryview]] = {}
    taken = dict.fromkeys(parts, 0)  # how many of each part's readings are encoded
    separator = b""
    for owner, start, end, stripped in runs:
        posted = _ENCODE(records[start:end])
        if not _as_json(posted, plain):
            return None
        delivered = posted  # without hints, its members are some of those: json.dumps's too
        if stripped:
            done = taken[owner]
            delivered = _ENCODE(parts[owner][done:done + end - start])
        taken[owner] += end - start
        digest.update(separator)
        digest.update(memoryview(posted)[1:-1])  # the run's records without their brackets
        separator = b","
        pieces.setdefault(owner, []).append(memoryview(delivered))
    digest.update(b"]}")
    return digest.hexdigest(), pieces


def join_part(pieces: Sequence[memoryview]) -> bytes:
    """A tenant's part from its runs' encodings (:func:`encode_runs`): one
    array of their records, copied once."""
    if len(pieces) == 1:
        return bytes(pieces[0])
    inner = [pieces[k][1:-1] for k in range(1, len(pieces) - 1)]
    return b",".join([pieces[0][:-1], *inner, pieces[-1][1:]])


def batch_encoders(routed: RoutedBatch, records: Sequence[Reading]
                   ) -> tuple[str, dict[str, Callable[[], bytes]]]:
    """The batch's fingerprint, and for each tenant the encoder of its part
    (called when the part is stored): from each run's one encoding where
    the batch was routed run by run and :func:`encode_runs` can, else
    :func:`readings_fingerprint` and :func:`encode_readings`. ``records``:
    the batch's, as routed into ``routed``."""
    plain = plain_numbers(records)  # once for the batch and its parts
    encoded = None if routed.runs is None else \
        encode_runs(routed.batch_id, records, routed.runs, routed.parts, plain=plain)
    if encoded is None:
        return (readings_fingerprint(routed.batch_id, records, plain=plain),
                {tenant: partial(encode_readings, part, plain=plain)
                 for tenant, part in routed.parts.items()})
    fingerprint, pieces = encoded
    return fingerprint, {tenant: partial(join_part, pieces[tenant]) for tenant in routed.parts}
