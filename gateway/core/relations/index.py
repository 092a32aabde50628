"""Time-bounded relation tuples and their in-memory index (DESIGN.md §4).

The index is built once from the authoritative feed (access register, HES
inventory; in the demo a generated dataset) and swapped as a whole on reload,
so a request always sees one consistent snapshot. The tuples sit in a
compact snapshot (gateway.core.relations.snapshot): a hash probe and a few array reads
per lookup, ~35 bytes per tuple, a compiled file is mapped rather than parsed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from zlib import crc32

from gateway.core.model import Relation
from gateway.core.native import native as _native
from gateway.core.relations.snapshot import (
    ID_MAX,
    LONG_COUNT,
    OPEN_FROM,
    OPEN_TO,
    REC,
    U32,
    Record,
    Snapshot,
    SnapshotBuilder,
    encode_id,
    instant,
    is_snapshot,
    micros,
)

_NONE = range(0)
_unpack = REC.unpack_from
_SIZE = REC.size
# For holds(): a row read from its id length on, with its count and first
# record, per id length; a record as (tenant, relation, bounds bytes); the
# bounds as integers.
_HEADS = tuple(struct.Struct(f"<B{n}sBHH16s").unpack_from for n in range(ID_MAX + 1))
_RECORD = struct.Struct("<HH16s").unpack_from
_BOUNDS = struct.Struct("<qq").unpack
_OPEN = struct.pack("<qq", OPEN_FROM, OPEN_TO)  # a record's bounds when both are open

# Pseudo resource kind: ("tenant", id) has relation "self" for tenant == id.
TENANT_KIND = "tenant"

# The lookup in C (gateway/core/_native.c), where it was built: the editable
# install compiles it when a C compiler is there, and goes on without it when
# not. _holds_function below is the reference and runs otherwise; every test
# under tests/core/relations runs on both (its conftest).
# The relation names a native lookup's bit set can hold.
_NATIVE_NAMES = 64


def parse_instant(value: str | None) -> datetime | None:
    """Parse an ISO 8601 date or date-time into an aware UTC datetime."""
    if value is None:
        return None
    if len(value) == 10:  # a plain date means its midnight UTC
        value = value + "T00:00:00+00:00"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


Holds = Callable[[str, str, str, frozenset[str], datetime], str | None]
Span = Callable[[bytes, int], tuple[int, int, str | None, bool]]


class RelationIndex:
    """An immutable snapshot of relation tuples keyed by ``(kind, resource id)``.

    The tuples live in a compact :class:`~gateway.core.relations.snapshot.Snapshot`
    (flat columns, in memory or a mapped file), not as objects: ``find``,
    ``find_during`` and ``holders`` read the columns directly and build one
    :class:`Relation` only for the answer; ``of`` and iteration build them on
    demand. Within a resource, records keep the feed's order.
    """

    __slots__ = ("_base", "_buf", "_names", "_probes", "_snapshot", "_spans", "_tables",
                 "_tenant_of", "_tenants", "holds")

    # holds(kind, resource_id, tenant, names, at): the name of the relation
    # :meth:`find` would return, without building it (``decide()`` and the
    # response check need only the name: the per-request budget, bench/README.md).
    # A closure over the snapshot's buffers (see :func:`_holds_function`), bound
    # per snapshot.
    holds: Holds

    def __init__(self, relations: Iterable[Relation] = ()) -> None:
        grouped: dict[tuple[str, str], list[Record]] = {}
        for rel in relations:
            grouped.setdefault((rel.kind, rel.resource_id), []).append(
                (rel.tenant, rel.relation, _bound(rel.valid_from, OPEN_FROM),
                 _bound(rel.valid_to, OPEN_TO)))
        builder = SnapshotBuilder()
        for (kind, rid), records in grouped.items():
            builder.add(kind, rid, records)
        self._bind(Snapshot(builder.to_bytes(), "<memory>"))

    def _bind(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._buf = snapshot.buffer
        self._base = snapshot.rows_start
        self._tables = snapshot.tables
        self._tenants = snapshot.tenants
        self._names = snapshot.names
        self._tenant_of = {t: i for i, t in enumerate(snapshot.tenants)}
        self._probes = _native_probes(snapshot)
        self._spans: dict[tuple[str, str, str, int, int], Span] = {}
        self.holds = (_native_holds(snapshot, self._tenant_of, self._probes)
                      or _holds_function(snapshot, self._tenant_of))

    def native_span(self, kind: str, owner: str, flag: str, lo: int, hi: int) -> Span | None:
        """``read(key, at) -> (lo, hi, tenant, flagged)`` over the records of a
        resource of ``kind`` whose relation is ``owner`` or ``flag``: the
        single ``owner`` tenant at ``at`` (None for none, several or "*"),
        whether a ``flag`` record holds then, and the span around ``at``
        (within the open ends ``lo``, ``hi``) over which neither changes. In
        C; None where the C module was not built, and the caller reads the
        records itself (``owner_span`` in gateway.core.push.records is the
        reference)."""
        key = (kind, owner, flag, lo, hi)
        known = self._spans.get(key)
        if known is not None:
            return known
        args = self.native_span_args(kind, owner, flag)
        if args is None:
            return None
        probe, o, f, wildcard, tenants = args
        span = probe.span

        def read(rid: bytes, at: int) -> tuple[int, int, str | None, bool]:
            start, end, t, flagged = span(rid, at, o, f, wildcard, lo, hi)
            return (start, end, None if t < 0 else tenants[t], flagged)

        self._spans[key] = read
        return read

    def native_span_args(self, kind: str, owner: str, flag: str
                         ) -> tuple[Any, int, int, int, tuple[str, ...]] | None:
        """What ``Probe.span`` of gateway/core/_native.c takes besides the key,
        the instant and the open ends, for :meth:`native_span`'s question:
        ``(probe, owner's index, flag's index, the wildcard's, the tenants)``
        (an index -1 where the name is not in the snapshot); None without C."""
        probe = self._probes.get(kind)
        if probe is None:
            return None
        names = self._names
        o = names.index(owner) if owner in names else -1
        f = names.index(flag) if flag in names else -1
        return (probe, o, f, self._tenant_of.get("*", -1), tuple(self._tenants))

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> RelationIndex:
        index = cls.__new__(cls)
        index._bind(snapshot)
        return index

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def __len__(self) -> int:
        return self._snapshot.records

    def __iter__(self) -> Iterator[Relation]:
        for kind, rid, records in self._snapshot:
            for tenant, name, start, end in records:
                yield _relation(kind, rid, tenant, name, start, end)

    def _records(self, kind: str, resource_id: str) -> range:
        """Positions of the resource's records in the buffer (empty if unknown).
        Snapshot.row and records_at, inlined."""
        table = self._tables.get(kind)
        if table is None:
            return _NONE
        try:
            key = resource_id.encode()
        except UnicodeEncodeError:
            key = encode_id(resource_id)
        slots, mask = table
        buf, base, n = self._buf, self._base, len(key)
        h = crc32(key) & mask
        while (s := slots[h]) != 0:
            off = base + ((s - 1) << 3)
            # SECURITY: the full id decides, never the hash alone.
            if buf[off + 1] == n and buf[off + 2:off + 2 + n] == key:
                pos = off + 2 + n
                count = buf[pos]
                if count == LONG_COUNT:
                    count = U32.unpack_from(buf, pos + 1)[0]
                    pos += 4
                return range(pos + 1, pos + 1 + REC.size * count, REC.size)
            h = (h + 1) & mask
        return _NONE

    def of(self, kind: str, resource_id: str) -> tuple[Relation, ...]:
        buf, tenants, names = self._buf, self._tenants, self._names
        return tuple(_relation(kind, resource_id, tenants[t], names[r], start, end)
                     for t, r, start, end in (_unpack(buf, p)
                                              for p in self._records(kind, resource_id)))

    def find(
        self,
        kind: str,
        resource_id: str,
        tenant: str,
        names: frozenset[str],
        at: datetime,
    ) -> Relation | None:
        """The first relation of ``tenant`` on the resource, named in ``names``,
        that holds at instant ``at``; ``None`` when there is none."""
        if kind == TENANT_KIND:
            if resource_id == tenant and "self" in names:
                return Relation(TENANT_KIND, resource_id, tenant, "self")
            return None
        found = self._match(kind, resource_id, tenant, names, at)
        if found is None:
            return None
        name, start, end = found
        if start == OPEN_FROM and end == OPEN_TO:
            return _open_relation(kind, resource_id, tenant, name)
        return _relation(kind, resource_id, tenant, name, start, end)

    def _match(self, kind: str, resource_id: str, tenant: str, names: frozenset[str],
               at: datetime) -> tuple[str, int, int] | None:
        """(name, start, end) of the first matching record (``holds`` is the
        request path's version of this)."""
        t = self._tenant_of.get(tenant)
        if t is None:
            return None
        buf, rel_names = self._buf, self._names
        us: int | None = None
        for p in self._records(kind, resource_id):
            rt, rn, start, end = _unpack(buf, p)
            if rt != t or (name := rel_names[rn]) not in names:
                continue
            if start == OPEN_FROM and end == OPEN_TO:
                return name, start, end
            if us is None:
                us = micros(at)  # only when a bound needs it: most tuples are open
            if start <= us < end:
                return name, start, end
        return None

    def find_during(
        self,
        kind: str,
        resource_id: str,
        tenant: str,
        names: frozenset[str],
        start: datetime,
        end: datetime,
    ) -> Relation | None:
        """The first matching relation that holds at some instant of ``[start, end)``
        (a meter that changed owner during the day belongs to both owners that
        day, each for its own part: the records are checked one by one)."""
        t = self._tenant_of.get(tenant)
        if t is None:
            return None
        buf, rel_names = self._buf, self._names
        window: tuple[int, int] | None = None
        for p in self._records(kind, resource_id):
            rt, rn, valid_from, valid_to = _unpack(buf, p)
            if rt != t or (name := rel_names[rn]) not in names:
                continue
            if valid_from != OPEN_FROM or valid_to != OPEN_TO:
                if window is None:
                    window = (micros(start), micros(end))
                if not (valid_from < window[1] and valid_to > window[0]):
                    continue
            return _relation(kind, resource_id, tenant, name, valid_from, valid_to)
        return None

    def holders(self, kind: str, resource_id: str, relation: str, at: datetime) -> set[str]:
        """Tenants holding ``relation`` on the resource at ``at``."""
        found: set[str] = set()
        buf, rel_names, tenants = self._buf, self._names, self._tenants
        us: int | None = None
        for p in self._records(kind, resource_id):
            rt, rn, start, end = _unpack(buf, p)
            if rel_names[rn] != relation:
                continue
            if start != OPEN_FROM or end != OPEN_TO:
                if us is None:
                    us = micros(at)
                if not start <= us < end:
                    continue
            found.add(tenants[rt])
        return found

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> RelationIndex:
        return cls(
            Relation(
                kind=str(rec["kind"]),
                resource_id=str(rec["id"]),
                tenant=str(rec["tenant"]),
                relation=str(rec["relation"]),
                valid_from=parse_instant(rec.get("valid_from")),
                valid_to=parse_instant(rec.get("valid_to")),
            )
            for rec in records
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> RelationIndex:
        """The index in a compiled snapshot or in the JSON feed ``{"relations":
        [...]}`` written by the feed or the demo dataset; the first bytes tell
        which. A damaged snapshot raises SnapshotError (``source`` names the
        file; ``gateway.files.load_relations`` reads it)."""
        if is_snapshot(data):
            return cls.from_snapshot(Snapshot.read(data, source))
        doc = json.loads(data)
        return cls.from_records(doc["relations"])


def _holds_function(snapshot: Snapshot, tenant_of: Mapping[str, int]) -> Holds:
    """``RelationIndex.holds`` for one snapshot, as a closure over its buffers
    and tables: no attribute load on the hot path, and one ``struct`` call
    reads a row's id, count and first record together (most resources have
    one record); a record's bounds become integers only when they are not
    both open. Same answers as ``find`` (tests/core/relations/test_snapshot.py checks)."""
    buf = snapshot.buffer
    base = snapshot.rows_start - 8  # slot s addresses the row at rows_start + 8 (s - 1)
    get_table = {k: v for k, v in snapshot.tables.items() if k != TENANT_KIND}.get
    get_tenant = tenant_of.get
    names_of = tuple(snapshot.names)
    heads, record, bounds_of, u32, open_, size = _HEADS, _RECORD, _BOUNDS, U32, _OPEN, _SIZE
    last: tuple[datetime | None, int] = (None, 0)  # micros of the last instant asked about

    def holds(kind: str, resource_id: str, tenant: str, names: frozenset[str],
              at: datetime) -> str | None:
        nonlocal last
        rn: int  # the records' fields, read by struct
        table = get_table(kind)
        if table is None:
            if kind == TENANT_KIND:
                return "self" if resource_id == tenant and "self" in names else None
            return None
        t = get_tenant(tenant)
        if t is None:
            return None
        try:
            key = resource_id.encode()
        except UnicodeEncodeError:
            key = encode_id(resource_id)
        n = len(key)
        if n > ID_MAX:
            return None
        head = heads[n]
        slots, mask = table
        h = crc32(key) & mask
        while True:
            s = slots[h]
            if not s:
                return None
            off = base + (s << 3)
            try:
                length, row_id, count, rt, rn, bounds = head(buf, off + 1)
            except struct.error:
                # A row without records, last in the buffer: whether it is this
                # id or another, no record of it can hold; probe on (to None).
                length, row_id, count, rt, rn, bounds = buf[off + 1], b"", 0, -1, 0, b""
            # SECURITY: the full id decides, never the hash alone.
            if length == n and row_id == key:
                break
            h = (h + 1) & mask
        if count == 1:  # the common case: the only record came with the id
            if rt == t and (name := names_of[rn]) in names:
                if bounds == open_:
                    return name
                start, stop = bounds_of(bounds)
                seen, us = last
                if seen is not at:
                    us = micros(at)
                    last = (at, us)
                if start <= us < stop:
                    return name
            return None
        if count == 0:
            return None
        p = off + 3 + n
        if count == LONG_COUNT:  # the first record follows a u32 count
            count = u32.unpack_from(buf, p)[0]
            p += 4
            rt, rn, bounds = record(buf, p)
        end = p + size * count
        while True:  # rt, rn, bounds: the record at p (the first one came with the id)
            if rt == t and (name := names_of[rn]) in names:
                if bounds == open_:
                    return name  # most tuples are open: no bounds, no instant
                start, stop = bounds_of(bounds)
                seen, us = last
                if seen is not at:  # every check of one request asks with the same now
                    us = micros(at)
                    last = (at, us)
                if start <= us < stop:
                    return name
            p += size
            if p >= end:
                return None
            rt, rn, bounds = record(buf, p)

    return holds


def native_available() -> bool:
    """Whether the C lookup was built on this machine."""
    return _native is not None


def _native_probes(snapshot: Snapshot) -> dict[str, Any]:
    """Each kind's C probe of the snapshot (gateway/core/_native.c); none
    where the C module was not built."""
    if _native is None:
        return {}
    return {kind: _native.Probe(snapshot.buffer, slots, snapshot.rows_start)
            for kind, (slots, _) in snapshot.tables.items() if kind != TENANT_KIND}


def _native_holds(snapshot: Snapshot, tenant_of: Mapping[str, int],
                  probes: dict[str, Any]) -> Holds | None:
    """``holds`` in C (gateway/core/_native.c): the same answers as
    :func:`_holds_function`, the reference. None where the C module was not
    built, or the snapshot has more relation names than its bit set holds."""
    if _native is None or len(snapshot.names) > _NATIVE_NAMES:
        return None
    holds: Holds = _native.Holds(probes, dict(tenant_of), tuple(snapshot.names), micros,
                                 TENANT_KIND, "self")
    return holds


def _bound(value: datetime | None, open_value: int) -> int:
    if value is None:
        return open_value
    if value.tzinfo is None:
        raise ValueError(f"relation bound without a time zone: {value.isoformat()}")
    return micros(value)


# The answer of find() is built by setting Relation's slots directly: the
# frozen dataclass's __init__ pays an object.__setattr__ call per field, half
# the cost of a lookup. Relation has no __post_init__ to skip
# (tests/core/relations/test_snapshot.py checks that the result equals the one
# __init__ builds).
_new = object.__new__
_set_kind, _set_id, _set_tenant, _set_name, _set_from, _set_to = (
    vars(Relation)[f].__set__
    for f in ("kind", "resource_id", "tenant", "relation", "valid_from", "valid_to"))


def _relation(kind: str, resource_id: str, tenant: str, name: str, start: int,
              end: int) -> Relation:
    rel: Relation = _new(Relation)
    _set_kind(rel, kind)
    _set_id(rel, resource_id)
    _set_tenant(rel, tenant)
    _set_name(rel, name)
    _set_from(rel, None if start == OPEN_FROM else instant(start))
    _set_to(rel, None if end == OPEN_TO else instant(end))
    return rel


def _open_relation(kind: str, resource_id: str, tenant: str, name: str) -> Relation:
    rel: Relation = _new(Relation)
    _set_kind(rel, kind)
    _set_id(rel, resource_id)
    _set_tenant(rel, tenant)
    _set_name(rel, name)
    _set_from(rel, None)
    _set_to(rel, None)
    return rel


def relation_record(rel: Relation) -> dict[str, Any]:
    """The JSON form of a relation, the inverse of :meth:`RelationIndex.from_records`."""
    return {
        "kind": rel.kind,
        "id": rel.resource_id,
        "tenant": rel.tenant,
        "relation": rel.relation,
        "valid_from": rel.valid_from.isoformat() if rel.valid_from else None,
        "valid_to": rel.valid_to.isoformat() if rel.valid_to else None,
    }
