"""The compact relation snapshot answers exactly like the plain tuple scan it
replaced, and refuses a damaged file (fail closed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zlib import crc32

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex, relation_record
from gateway.core.relations.snapshot import (
    HEADER,
    OPEN_FROM,
    OPEN_TO,
    Snapshot,
    SnapshotBuilder,
    SnapshotError,
    instant,
    micros,
)
from gateway.files import compile_feed, load_relations, write_atomically

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ("meter", "ean", "ticket")
IDS = ("1SAG01", "1SAG02", "541448000000000017", "INC1", "é-1", "a" * 255)
TENANTS = ("ores", "fluvius", "lumen-energie", "*")
NAMES = ("owner", "supplier", "grid-operator", "mandate")


class Reference:
    """The semantics of the former dict index: a scan of the tuples in feed order."""

    def __init__(self, relations: list[Relation]) -> None:
        self.relations = relations

    def of(self, kind: str, rid: str) -> tuple[Relation, ...]:
        return tuple(r for r in self.relations if (r.kind, r.resource_id) == (kind, rid))

    def find(self, kind: str, rid: str, tenant: str, names: frozenset[str],
             at: datetime) -> Relation | None:
        return next((r for r in self.of(kind, rid)
                     if r.tenant == tenant and r.relation in names and r.holds_at(at)), None)

    def find_during(self, kind: str, rid: str, tenant: str, names: frozenset[str],
                    start: datetime, end: datetime) -> Relation | None:
        return next((r for r in self.of(kind, rid)
                     if r.tenant == tenant and r.relation in names
                     and (r.valid_from is None or r.valid_from < end)
                     and (r.valid_to is None or r.valid_to > start)), None)

    def holders(self, kind: str, rid: str, name: str, at: datetime) -> set[str]:
        return {r.tenant for r in self.of(kind, rid) if r.relation == name and r.holds_at(at)}


# Bounds on a coarse grid (hours around T0) so that probes hit them exactly.
instants = st.integers(-6, 6).map(lambda h: T0 + timedelta(hours=h))
bounds = st.none() | instants
relations = st.builds(Relation, st.sampled_from(KINDS), st.sampled_from(IDS),
                      st.sampled_from(TENANTS), st.sampled_from(NAMES), bounds, bounds)
name_sets = st.frozensets(st.sampled_from(NAMES))


@settings(max_examples=200, deadline=None)
@given(rels=st.lists(relations, max_size=30), kind=st.sampled_from(KINDS),
       rid=st.sampled_from((*IDS, "unknown")), tenant=st.sampled_from((*TENANTS, "nobody")),
       names=name_sets, at=instants, span=st.integers(1, 4))
def test_answers_equal_the_tuple_scan(rels: list[Relation], kind: str, rid: str, tenant: str,
                                      names: frozenset[str], at: datetime, span: int) -> None:
    index, ref = RelationIndex(rels), Reference(rels)
    assert len(index) == len(rels)
    assert list(index) == sorted(rels, key=lambda r: _first_seen(rels, r))
    assert index.of(kind, rid) == ref.of(kind, rid)
    found = ref.find(kind, rid, tenant, names, at)
    assert index.find(kind, rid, tenant, names, at) == found
    # holds() is find() without building the answer (decide() and the checks).
    assert index.holds(kind, rid, tenant, names, at) == (found.relation if found else None)
    # ...also when asked again with the very same instant (its cached micros).
    assert index.holds(kind, rid, tenant, names, at) == (found.relation if found else None)
    end = at + timedelta(hours=span)
    assert (index.find_during(kind, rid, tenant, names, at, end)
            == ref.find_during(kind, rid, tenant, names, at, end))
    for name in NAMES:
        assert index.holders(kind, rid, name, at) == ref.holders(kind, rid, name, at)


def _first_seen(rels: list[Relation], rel: Relation) -> int:
    """Iteration order: resources by first appearance, then feed order."""
    key = (rel.kind, rel.resource_id)
    return next(i for i, r in enumerate(rels) if (r.kind, r.resource_id) == key)


def test_validity_window_edges() -> None:
    """valid_from is inclusive, valid_to exclusive, to the microsecond."""
    start, end = T0, T0 + timedelta(days=30)
    index = RelationIndex([Relation("ean", "E1", "lumen", "supplier", start, end)])
    us = timedelta(microseconds=1)
    names = frozenset({"supplier"})
    assert index.find("ean", "E1", "lumen", names, start - us) is None
    assert index.find("ean", "E1", "lumen", names, start) is not None
    assert index.find("ean", "E1", "lumen", names, end - us) is not None
    assert index.find("ean", "E1", "lumen", names, end) is None
    assert index.holders("ean", "E1", "supplier", end) == set()
    # holds(), on a row of one record and on a row of several.
    several = RelationIndex([Relation("ean", "E2", "ores", "grid-operator"),
                             Relation("ean", "E2", "lumen", "supplier", start, end)])
    for idx, rid in ((index, "E1"), (several, "E2")):
        assert idx.holds("ean", rid, "lumen", names, start - us) is None
        assert idx.holds("ean", rid, "lumen", names, start) == "supplier"
        assert idx.holds("ean", rid, "lumen", names, end - us) == "supplier"
        assert idx.holds("ean", rid, "lumen", names, end) is None
    # A window [s, e) overlaps when s < valid_to and e > valid_from.
    assert index.find_during("ean", "E1", "lumen", names, end - us, end + us) is not None
    assert index.find_during("ean", "E1", "lumen", names, end, end + us) is None
    assert index.find_during("ean", "E1", "lumen", names, start - us, start) is None
    # Another time zone is the same instant.
    brussels = start.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Brussels"))
    assert index.find("ean", "E1", "lumen", names, brussels) is not None


_US = timedelta(microseconds=1)
_FIRST = datetime(1, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.sampled_from([_FIRST + _US, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                     datetime(1970, 1, 1, tzinfo=UTC), datetime(1600, 2, 29, 12, tzinfo=UTC),
                     datetime(2000, 2, 29, tzinfo=UTC), datetime(2100, 3, 1, tzinfo=UTC),
                     datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), _LAST - _US]),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC))))
def test_an_instant_is_read_to_the_microsecond_in_any_year(at: datetime) -> None:
    """A relation of one microsecond holds at that instant and not one
    microsecond either side, whichever year, and whether the instant is
    given in UTC (which the C lookup counts itself) or in another zone."""
    index = RelationIndex([Relation("meter", "M1", "ores", "owner", at, at + _US)])
    owner = frozenset({"owner"})
    assert index.holds("meter", "M1", "ores", owner, at - _US) is None
    assert index.holds("meter", "M1", "ores", owner, at) == "owner"
    assert index.holds("meter", "M1", "ores", owner, at + _US) is None
    if datetime(2, 1, 1, tzinfo=UTC) < at < datetime(9999, 1, 1, tzinfo=UTC):
        east = timezone(timedelta(hours=5, minutes=30))
        assert index.holds("meter", "M1", "ores", owner, at.astimezone(east)) == "owner"
        assert index.holds("meter", "M1", "ores", owner,
                           (at + _US).astimezone(east)) is None


def test_found_relation_is_a_plain_relation() -> None:
    """find() builds its answer without __init__: it must still equal, hash and
    compare like one built the ordinary way."""
    rel = Relation("ean", "E1", "lumen", "supplier", T0, T0 + timedelta(days=1))
    found = RelationIndex([rel]).find("ean", "E1", "lumen", frozenset({"supplier"}), T0)
    assert found == rel and hash(found) == hash(rel) and type(found) is Relation
    assert found is not None and found.valid_from == T0 and found.valid_from.tzinfo == UTC
    assert repr(found) == repr(rel)


def test_tenant_pseudo_kind_and_unknown_names() -> None:
    index = RelationIndex([])
    assert index.find("tenant", "ores", "ores", frozenset({"self"}), T0) == Relation(
        "tenant", "ores", "ores", "self")
    assert index.find("tenant", "ores", "fluvius", frozenset({"self"}), T0) is None
    assert index.of("meter", "X") == () and index.holders("meter", "X", "owner", T0) == set()
    assert index.find("meter", "\ud800", "ores", frozenset({"owner"}), T0) is None


def test_lone_surrogate_ids_round_trip() -> None:
    rel = Relation("ticket", "a\ud800b", "ores", "owner")
    index = RelationIndex([rel])
    assert index.of("ticket", "a\ud800b") == (rel,)
    assert index.of("ticket", "ab") == ()


def test_micros_round_trip_is_exact() -> None:
    for at in (T0, T0 + timedelta(microseconds=1), datetime(1, 1, 1, tzinfo=UTC),
               datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)):
        assert instant(micros(at)) == at
    assert micros(datetime(1, 1, 1, tzinfo=UTC)) > OPEN_FROM
    assert micros(datetime(9999, 12, 31, tzinfo=UTC)) < OPEN_TO


def test_many_records_on_one_resource_and_collisions() -> None:
    """Over 255 records on a resource (the long count form) and many ids."""
    rels = [Relation("ean", "E", f"t{i}", "supplier") for i in range(300)]
    rels += [Relation("meter", f"M{i}", "ores", "owner") for i in range(5000)]
    index = RelationIndex(rels)
    assert len(index.of("ean", "E")) == 300
    assert index.holders("ean", "E", "supplier", T0) == {f"t{i}" for i in range(300)}
    assert all(index.find("meter", f"M{i}", "ores", frozenset({"owner"}), T0) is not None
               for i in range(5000))
    assert index.find("meter", "M5000", "ores", frozenset({"owner"}), T0) is None


def test_builder_refuses_a_resource_added_twice_and_oversized_ids() -> None:
    builder = SnapshotBuilder()
    builder.add("meter", "M1", [("ores", "owner", OPEN_FROM, OPEN_TO)])
    builder.add("meter", "M1", [("fluvius", "owner", OPEN_FROM, OPEN_TO)])
    with pytest.raises(SnapshotError, match="added twice"):
        builder.to_bytes()
    with pytest.raises(SnapshotError, match="resource id"):
        SnapshotBuilder().add("meter", "x" * 256, [])


def _feed(tmp_path: Path) -> tuple[Path, list[Relation]]:
    rels = [
        Relation("meter", "1SAG01", "fluvius", "owner", None, T0),
        Relation("meter", "1SAG01", "sibelga", "owner", T0, None),
        Relation("ean", "541448000000000017", "ores", "grid-operator"),
        Relation("ean", "541448000000000017", "lumen", "supplier", T0,
                 T0 + timedelta(days=90, microseconds=5)),
    ]
    feed = tmp_path / "relations.json"
    feed.write_text(json.dumps({"relations": [relation_record(r) for r in rels]}))
    return feed, rels


def test_json_feed_and_compiled_snapshot_answer_alike(tmp_path: Path) -> None:
    feed, rels = _feed(tmp_path)
    snap = tmp_path / "relations.snap"
    assert compile_feed(feed, snap) == len(rels)
    from_json, from_snap = load_relations(feed), load_relations(snap)
    assert list(from_json) == list(from_snap) == rels
    for at in (T0 - timedelta(seconds=1), T0, T0 + timedelta(days=90, microseconds=5)):
        for tenant in ("fluvius", "sibelga", "lumen", "ores"):
            for kind, rid in (("meter", "1SAG01"), ("ean", "541448000000000017")):
                names = frozenset({"owner", "supplier", "grid-operator"})
                assert (from_json.find(kind, rid, tenant, names, at)
                        == from_snap.find(kind, rid, tenant, names, at))
    # A snapshot compiled from a snapshot is the same file.
    again = tmp_path / "again.snap"
    compile_feed(snap, again)
    assert again.read_bytes() == snap.read_bytes()


def test_damaged_snapshots_are_refused(tmp_path: Path) -> None:
    feed, _ = _feed(tmp_path)
    snap = tmp_path / "relations.snap"
    compile_feed(feed, snap)
    good = snap.read_bytes()
    damaged = {
        "truncated": good[:-8],
        "header only": good[:HEADER.size],
        "too short for a header": good[:20],
        "appended": good + b"\0" * 8,
        "body bit flip": good[:-30] + bytes([good[-30] ^ 1]) + good[-29:],
        "header bit flip": good[:12] + bytes([good[12] ^ 1]) + good[13:],
    }
    for what, data in damaged.items():
        snap.write_bytes(data)
        with pytest.raises(SnapshotError):
            load_relations(snap)
        assert isinstance(SnapshotError(what), ValueError)  # server.py: a ConfigError
    snap.write_bytes(b"")
    with pytest.raises((SnapshotError, json.JSONDecodeError)):
        load_relations(snap)
    with pytest.raises(SnapshotError, match="version"):
        head = bytearray(good[:HEADER.size])
        fields = list(HEADER.unpack(bytes(head)))
        fields[1] = 99
        import zlib
        packed = HEADER.pack(*fields[:-1], 0)
        Snapshot(HEADER.pack(*fields[:-1], zlib.crc32(packed[:-4])) + good[HEADER.size:],
                 "v99")


def test_write_is_atomic(tmp_path: Path) -> None:
    """A failure while writing leaves the previous file and no temporary."""
    target = tmp_path / "relations.snap"
    target.write_bytes(b"previous")

    def failing(write: object) -> int:
        assert callable(write)
        write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, failing)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["relations.snap"]
    builder = SnapshotBuilder()
    builder.add("meter", "M1", [("ores", "owner", OPEN_FROM, OPEN_TO)])
    size = write_atomically(target, builder.emit)
    assert target.stat().st_size == size
    assert list(load_relations(target)) == [Relation("meter", "M1", "ores", "owner")]
    assert [p.name for p in tmp_path.iterdir()] == ["relations.snap"]


def test_cli_compiles_a_feed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    feed, rels = _feed(tmp_path)
    snap = tmp_path / "out.snap"
    assert main(["relations", "compile", "--feed", str(feed), "--out", str(snap)]) == 0
    assert f"{len(rels)} relations" in capsys.readouterr().out
    assert list(load_relations(snap)) == rels
    feed.write_text("{not json")
    assert main(["relations", "compile", "--feed", str(feed), "--out", str(snap)]) == 2
    assert list(load_relations(snap)) == rels  # the previous snapshot is intact


# holds() reads rows its own way (one struct call for the id, count and first
# record; a short row at the end of the buffer; the long count form): compare
# it with a plain scan of the rows given to the builder, ids of every length.
_ROW_IDS = st.sampled_from(("M1", "M2", "M10", "1SAG0000000001", "1SAG0000000002", "é",
                            "a" * 254, "a" * 255, "b" * 255, "\ud800"))
_STAMPS = st.sampled_from((OPEN_FROM, OPEN_TO, -5, 0, 5, 10))
_records = st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(NAMES), _STAMPS, _STAMPS),
                    max_size=6)


@settings(max_examples=300, deadline=None)
@given(rows=st.dictionaries(st.tuples(st.sampled_from((*KINDS, "tenant")), _ROW_IDS), _records,
                            max_size=12),
       long_row=st.booleans(), kind=st.sampled_from((*KINDS, "tenant", "other")),
       rid=st.one_of(_ROW_IDS, st.sampled_from(("", "M", "a" * 256, "1SAG000000000"))),
       tenant=st.sampled_from((*TENANTS, "nobody")), names=name_sets,
       at_us=st.sampled_from((-6, -5, 0, 4, 5, 9, 10, 11)))
def test_holds_equals_a_scan_of_the_rows(
        rows: dict[tuple[str, str], list[tuple[str, str, int, int]]], long_row: bool, kind: str,
        rid: str, tenant: str, names: frozenset[str], at_us: int) -> None:
    if long_row:  # over 255 records: the count is a u32 after a 255 byte
        rows[("ean", "E-long")] = [(f"t{i}", "supplier", OPEN_FROM, OPEN_TO) for i in range(300)]
        rows[("ean", "E-long")].append((TENANTS[0], "owner", 0, 10))
    builder = SnapshotBuilder()
    for (k, i), records in rows.items():
        builder.add(k, i, records)
    index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
    at = instant(at_us)
    for k, i in (*rows, (kind, rid), ("ean", "E-long")):
        expected = next((name for t, name, start, end in rows.get((k, i), ())
                         if t == tenant and name in names and start <= at_us < end), None)
        if k == "tenant":
            expected = "self" if i == tenant and "self" in names else None
        assert index.holds(k, i, tenant, names, at) == expected, (k, i)
        found = index.find(k, i, tenant, names, at)
        assert (found.relation if found else None) == expected


def test_holds_on_a_row_without_records_last_in_the_buffer() -> None:
    """The one struct call that reads a row would run past the buffer's end."""
    for ids in (["M1"], ["M1", "M2"], ["a" * 255], ["M10", "M2"]):
        builder = SnapshotBuilder()
        builder.add("meter", "M0", [("ores", "owner", OPEN_FROM, OPEN_TO)])
        for rid in ids:
            builder.add("meter", rid, [])
        index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
        for rid in (*ids, "M0", "M3", "b" * 255):
            expected = "owner" if rid == "M0" else None
            assert index.holds("meter", rid, "ores", frozenset({"owner"}), T0) == expected


def test_holds_never_takes_a_longer_id_for_its_prefix() -> None:
    """An id whose bytes start another id's, in the same probe chain: the
    length decides too (the row is read n bytes at a time)."""
    for i in range(1000):  # a pair that collides in a table of 8 slots
        short, long = f"L{i}", f"L{i}0"
        if crc32(short.encode()) & 7 == crc32(long.encode()) & 7:
            break
    index = RelationIndex([Relation("meter", long, "ores", "owner")])
    assert index.holds("meter", short, "ores", frozenset({"owner"}), T0) is None
    assert index.find("meter", short, "ores", frozenset({"owner"}), T0) is None
    both = RelationIndex([Relation("meter", long, "ores", "owner"),
                          Relation("meter", short, "fluvius", "owner")])
    assert both.holds("meter", short, "ores", frozenset({"owner"}), T0) is None
    assert both.holds("meter", short, "fluvius", frozenset({"owner"}), T0) == "owner"
    assert both.holds("meter", long, "ores", frozenset({"owner"}), T0) == "owner"
