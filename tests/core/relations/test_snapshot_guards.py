"""The relation snapshot's format and guards, each pinned by a deterministic
case (mutation testing of ``gateway/core/relations/snapshot.py``,
docs/mutation.md).

Every isolation decision reads this file (D1): a misread row gives a tenant
another tenant's relation, or refuses it its own. So the layout is pinned
byte for byte (the fleet names a published snapshot by its SHA-256: the same
feed must compile to the same bytes), every header field and section bound is
checked with a file that breaks exactly it, and a damaged, truncated or
foreign file is refused with a ``SnapshotError`` that names what is wrong,
never read as a wrong answer.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex
from gateway.core.relations.snapshot import (
    HEADER,
    ID_MAX,
    LONG_COUNT,
    MAGIC,
    OPEN_FROM,
    OPEN_TO,
    REC,
    VERSION,
    Record,
    Snapshot,
    SnapshotBuilder,
    SnapshotError,
    decode_id,
    encode_id,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
METER = "1SAG0000000001"
EAN = "541448860012075359"
OPEN = (OPEN_FROM, OPEN_TO)


def _aligned(n: int) -> int:
    return -(-n // 8) * 8


def _small_builder() -> SnapshotBuilder:
    """Two kinds, two tenants, three relation names, three records."""
    builder = SnapshotBuilder()
    builder.add("meter", METER, [("ores", "owner", *OPEN)])
    builder.add("ean", EAN, [("lumen", "supplier", 0, 10),
                             ("ores", "grid-operator", *OPEN)])
    return builder


def _small() -> bytes:
    return _small_builder().to_bytes()


def _refused(data: bytes, source: str = "relations.snap") -> str:
    with pytest.raises(SnapshotError) as caught:
        Snapshot.read(data, source)
    assert caught.value.reason == "snapshot-invalid"
    return str(caught.value)


# --- forging files that pass the checksums but break one field ---------------

def _seal(fields: list[Any], body: bytes) -> bytes:
    """A header over ``body`` with size and both checksums right."""
    fields = [*fields[:3], HEADER.size + len(body), *fields[4:6], zlib.crc32(body), 0]
    head = HEADER.pack(*fields)[:-4]
    return head + zlib.crc32(head).to_bytes(4, "little") + body


def _with_header(data: bytes, **changed: int) -> bytes:
    fields = list(HEADER.unpack_from(data))
    for name, value in changed.items():
        fields[("version", "flags", "size", "records", "meta_len").index(name) + 1] = value
    head = HEADER.pack(*fields)[:-4]
    return head + zlib.crc32(head).to_bytes(4, "little") + data[HEADER.size:]


def _with_meta(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The same file with its metadata changed in place (written compactly and
    padded with spaces to its length, so no section moves), the checksums
    recomputed."""
    fields = list(HEADER.unpack_from(data))
    meta_len = fields[5]
    meta = json.loads(data[HEADER.size:HEADER.size + meta_len])
    change(meta)
    raw = json.dumps(meta, separators=(",", ":")).encode()
    assert len(raw) <= meta_len, "the forged metadata must fit in the original's place"
    body = raw.ljust(meta_len) + data[HEADER.size + meta_len:]
    return _seal(fields, body)


def _meta(data: bytes) -> dict[str, Any]:
    meta_len = HEADER.unpack_from(data)[5]
    parsed: dict[str, Any] = json.loads(data[HEADER.size:HEADER.size + meta_len])
    return parsed


# --- the format, byte for byte -----------------------------------------------

def test_the_header_names_the_format_and_seals_the_file() -> None:
    data = _small()
    magic, version, flags, size, records, meta_len, body_crc, head_crc = HEADER.unpack_from(data)
    assert (magic, version, flags) == (MAGIC, VERSION, 0)  # no flag is defined in version 1
    assert size == len(data) and records == 3
    assert data[HEADER.size:HEADER.size + meta_len] == json.dumps(_meta(data)).encode()
    assert body_crc == zlib.crc32(data[HEADER.size:])
    assert head_crc == zlib.crc32(data[:HEADER.size - 4])
    # emit() writes those very bytes through any writer and returns the size.
    chunks: list[bytes] = []
    builder = _small_builder()
    assert builder.emit(lambda chunk: chunks.append(bytes(chunk))) == len(data)
    assert b"".join(chunks) == data and len(builder) == 3


def test_the_layout_is_exactly_the_documented_one() -> None:
    """Metadata, then one 8-slot table per kind, then the rows, each section
    8-aligned right after the previous one, the file padded to 8 after the
    last row; a row is kind, id length, id, count, then the records."""
    data = _small()
    meta = _meta(data)
    assert {k: v for k, v in meta.items() if k != "sections"} == {
        "kinds": ["meter", "ean"], "tenants": ["ores", "lumen"],
        "relations": ["owner", "supplier", "grid-operator"], "resources": 2, "records": 3}
    meter_row = bytes((0, len(METER))) + METER.encode() + bytes((1,)) + REC.pack(0, 0, *OPEN)
    ean_row = (bytes((1, len(EAN))) + EAN.encode() + bytes((2,))
               + REC.pack(1, 1, 0, 10) + REC.pack(0, 2, *OPEN))
    rows = meter_row.ljust(_aligned(len(meter_row)), b"\0") + ean_row
    sections = meta["sections"]
    assert list(sections) == ["slots/meter", "slots/ean", "rows"]
    at = _aligned(HEADER.size + HEADER.unpack_from(data)[5])
    for name, length in (("slots/meter", 32), ("slots/ean", 32), ("rows", len(rows))):
        assert sections[name] == [at, length], name
        at = _aligned(at + length)
    assert len(data) == at
    assert data[sections["rows"][0]:sections["rows"][0] + len(rows)] == rows
    # A slot holds (row offset / 8) + 1 at CRC-32(id) mod 8; 0 is empty.
    for name, rid, value in (("slots/meter", METER, 1), ("slots/ean", EAN, 40 // 8 + 1)):
        slots = [0] * 8
        slots[zlib.crc32(rid.encode()) & 7] = value
        start = sections[name][0]
        assert data[start:start + 32] == b"".join(s.to_bytes(4, "little") for s in slots)


def test_the_snapshot_read_back_names_its_parts() -> None:
    snap = Snapshot.read(_small(), "relations.snap")
    assert snap.source == "relations.snap"
    assert (snap.kinds, snap.tenants) == (["meter", "ean"], ["ores", "lumen"])
    assert snap.names == ["owner", "supplier", "grid-operator"]
    assert (snap.resources, snap.records) == (2, 3)
    assert list(snap) == [("meter", METER, [("ores", "owner", *OPEN)]),
                          ("ean", EAN, [("lumen", "supplier", 0, 10),
                                        ("ores", "grid-operator", *OPEN)])]


# --- hash tables: size and collisions ----------------------------------------

@pytest.mark.parametrize(("resources", "slots"), [
    (0, 8), (1, 8), (5, 8), (6, 16), (10, 16), (11, 16), (12, 32), (21, 32), (22, 64)])
def test_a_kinds_table_has_at_least_one_and_a_half_slots_a_resource(resources: int,
                                                                   slots: int) -> None:
    """The smallest power of 2 (8 at least) that is >= n + n // 2."""
    builder = SnapshotBuilder()
    builder.add("ticket", "T", [])  # another kind, sized on its own
    for i in range(resources):
        builder.add("meter", f"M{i}", [("ores", "owner", *OPEN)])
    snap = Snapshot.read(builder.to_bytes(), "t")
    table, mask = snap.tables["meter"] if resources else (None, 7)
    assert mask + 1 == slots and snap.tables["ticket"][1] == 7
    if table is not None:
        assert len(table) == slots
        assert sum(1 for s in table if s) == resources


def _colliding(count: int, bucket: int) -> list[str]:
    """``count`` ids whose CRC-32 falls in ``bucket`` of an 8-slot table."""
    found = [f"C{i}" for i in range(10_000) if zlib.crc32(f"C{i}".encode()) & 7 == bucket]
    return found[:count]


def test_ids_colliding_in_one_chain_each_find_their_own_row() -> None:
    """D1: five ids in one slot chain (wrapping from the last slot to the
    first), each found with its own tenant; an absent id of the same hash ends
    at the empty slot; the full id decides, never the hash."""
    ids = _colliding(6, 7)
    present, absent = ids[:5], ids[5]
    builder = SnapshotBuilder()
    for i, rid in enumerate(present):
        builder.add("meter", rid, [(f"t{i}", "owner", *OPEN)])
    snap = Snapshot.read(builder.to_bytes(), "t")
    assert snap.tables["meter"][1] == 7
    index = RelationIndex.from_snapshot(snap)
    for i, rid in enumerate(present):
        pos = snap.row("meter", encode_id(rid))
        assert pos > 0 and snap.buffer[pos - len(rid):pos] == rid.encode()
        assert index.holders("meter", rid, "owner", NOW) == {f"t{i}"}
    assert snap.row("meter", encode_id(absent)) == -1
    assert index.of("meter", absent) == ()


def test_a_resource_added_twice_is_found_along_its_chain() -> None:
    first, second = _colliding(2, 3)
    builder = SnapshotBuilder()
    for rid in (first, second, second):
        builder.add("meter", rid, [("ores", "owner", *OPEN)])
    with pytest.raises(SnapshotError, match=f"^resource added twice: meter {second}$"):
        builder.to_bytes()
    # The same id under another kind is another resource.
    builder = SnapshotBuilder()
    builder.add("meter", first, [("ores", "owner", *OPEN)])
    builder.add("ean", first, [("lumen", "supplier", *OPEN)])
    assert [(k, i) for k, i, _ in Snapshot.read(builder.to_bytes(), "t")] == [
        ("meter", first), ("ean", first)]


def test_an_unknown_kind_or_id_has_no_row() -> None:
    snap = Snapshot.read(_small(), "t")
    assert snap.row("ticket", METER.encode()) == -1
    assert snap.row("meter", EAN.encode()) == -1
    assert snap.row("meter", METER.encode()) > 0


# --- rows: ids of every length, counts around the long form -------------------

def test_rows_of_every_id_length_are_read_back_in_feed_order() -> None:
    """Whatever an id's length, the next row starts at the next multiple of 8
    (a row may end exactly on one)."""
    expected = []
    builder = SnapshotBuilder()
    for n in range(1, ID_MAX + 1):
        rid = "x" * n
        records: list[Record] = [("ores", "owner", n, n + 1)] * (n % 3)
        builder.add("meter", rid, records)
        expected.append(("meter", rid, records))
    assert list(Snapshot.read(builder.to_bytes(), "t")) == expected


@pytest.mark.parametrize("count", [0, 1, 254, 255, 256, 300])
def test_records_at_spans_exactly_the_rows_records(count: int) -> None:
    """A count byte up to 254; from 255 on, a 255 byte then the count as a u32."""
    records: list[Record] = [(f"t{i}", "owner", i, OPEN_TO) for i in range(count)]
    builder = SnapshotBuilder()
    builder.add("meter", METER, records)
    builder.add("meter", "after", [("ores", "owner", *OPEN)])
    snap = Snapshot.read(builder.to_bytes(), "t")
    pos = snap.row("meter", METER.encode())
    header = 1 if count < LONG_COUNT else 5
    assert snap.records_at(pos) == (pos + header, pos + header + REC.size * count)
    if count >= LONG_COUNT:
        assert snap.buffer[pos + 1:pos + 5] == count.to_bytes(4, "little")
    assert list(snap) == [("meter", METER, records), ("meter", "after", [("ores", "owner", *OPEN)])]
    assert len(RelationIndex.from_snapshot(snap).of("meter", METER)) == count


# --- ids -----------------------------------------------------------------------

def test_ids_with_a_lone_surrogate_round_trip_and_stay_distinct() -> None:
    """An id read from JSON may hold a lone surrogate: it is stored and read
    back as itself, never as another id."""
    odd = "a\ud800b"
    assert decode_id(encode_id(odd)) == odd and encode_id(odd) == b"a\xed\xa0\x80b"
    assert decode_id(encode_id("é")) == "é" and encode_id("é") == b"\xc3\xa9"
    builder = SnapshotBuilder()
    builder.add("ticket", odd, [("ores", "owner", *OPEN)])
    builder.add("ticket", "ab", [("fluvius", "owner", *OPEN)])
    snap = Snapshot.read(builder.to_bytes(), "t")
    assert [(rid, recs[0][0]) for _, rid, recs in snap] == [(odd, "ores"), ("ab", "fluvius")]
    twice = SnapshotBuilder()
    twice.add("ticket", odd, [])
    twice.add("ticket", odd, [])
    with pytest.raises(SnapshotError, match=f"^resource added twice: ticket {re.escape(odd)}$"):
        twice.to_bytes()


@pytest.mark.parametrize("rid", ["", "x" * (ID_MAX + 1), "é" * 128])
def test_an_id_of_no_bytes_or_over_255_is_refused_by_name(rid: str) -> None:
    size = len(encode_id(rid))
    with pytest.raises(SnapshotError) as caught:
        SnapshotBuilder().add("meter", rid, [])
    assert str(caught.value) == f"resource id of {size} bytes (1 to 255): {rid[:80]!r}"


def test_ids_of_one_and_of_255_bytes_are_kept() -> None:
    builder = SnapshotBuilder()
    for rid in ("x", "y" * ID_MAX, "é" * 127 + "z"):
        builder.add("meter", rid, [("ores", "owner", *OPEN)])
    assert [rid for _, rid, _ in Snapshot.read(builder.to_bytes(), "t")] == [
        "x", "y" * ID_MAX, "é" * 127 + "z"]


# --- string tables: the limits of their u8 and u16 indexes ---------------------

def test_256_kinds_fit_and_the_257th_is_refused() -> None:
    builder = SnapshotBuilder()
    for k in range(256):
        builder.add(f"k{k}", "R", [("ores", "owner", *OPEN)])
    with pytest.raises(SnapshotError) as caught:
        builder.add("k256", "R", [])
    assert str(caught.value) == "more than 256 distinct resource kinds"
    snap = Snapshot.read(builder.to_bytes(), "t")
    assert [k for k, _, _ in snap][-2:] == ["k254", "k255"]
    assert RelationIndex.from_snapshot(snap).holders("k255", "R", "owner", NOW) == {"ores"}


@pytest.mark.parametrize(("position", "what"), [(0, "tenants"), (1, "relation names")])
def test_65536_tenants_or_names_fit_and_one_more_is_refused(position: int, what: str) -> None:
    def record(i: int) -> Record:
        fields = ["ores", "owner"]
        fields[position] = f"s{i}"
        return (fields[0], fields[1], *OPEN)

    builder = SnapshotBuilder()
    builder.add("meter", METER, [record(i) for i in range(0x10000)])
    with pytest.raises(SnapshotError) as caught:
        builder.add("meter", "M2", [record(0), record(0x10000)])
    assert str(caught.value) == f"more than 65536 distinct {what}"
    index = RelationIndex.from_snapshot(Snapshot.read(builder.to_bytes(), "t"))
    last = index.of("meter", METER)[-1]
    assert (last.tenant, last.relation)[position] == "s65535"


# --- refusals: what is wrong, named --------------------------------------------

def test_a_refusal_is_a_rejection_with_a_stable_reason() -> None:
    exc = SnapshotError("what is wrong")
    assert (exc.reason, exc.detail, exc.status, str(exc)) == (
        "snapshot-invalid", "what is wrong", 400, "what is wrong")
    assert isinstance(exc, ValueError)  # server.py: a ConfigError at start-up


def test_a_foreign_or_truncated_file_is_refused_by_name() -> None:
    good = _small()
    feed = json.dumps({"relations": [{"kind": "meter"}] * 4}).encode()
    assert len(feed) > HEADER.size
    assert _refused(feed) == "relations.snap: not a relation snapshot (or truncated header)"
    # Shorter than a header: refused before the header is read.
    assert _refused(good[:HEADER.size - 1]) == "relations.snap: truncated relation snapshot"
    with pytest.raises(SnapshotError) as caught:
        Snapshot(good[:HEADER.size - 1], "relations.snap")
    assert str(caught.value) == "relations.snap: not a relation snapshot (or truncated header)"
    # A whole header and nothing after it: its size field tells.
    assert _refused(good[:HEADER.size]) == (
        f"relations.snap: snapshot is {HEADER.size} bytes, its header says {len(good)}: "
        "truncated or appended to")
    assert _refused(good + bytes(8)) == (
        f"relations.snap: snapshot is {len(good) + 8} bytes, its header says {len(good)}: "
        "truncated or appended to")


def test_a_corrupt_header_or_body_is_refused_by_name() -> None:
    good = _small()
    flipped = good[:20] + bytes((good[20] ^ 1,)) + good[21:]  # the size field
    assert _refused(flipped) == "relations.snap: snapshot header is corrupt"
    body = good[:-9] + bytes((good[-9] ^ 0x80,)) + good[-8:]
    assert _refused(body) == "relations.snap: snapshot checksum mismatch: corrupt"
    assert _refused(_with_header(good, version=2)) == (
        f"relations.snap: snapshot version 2, expected {VERSION}")
    assert _refused(_with_header(good, records=4)) == (
        "relations.snap: header and metadata disagree on the count")
    # A flag of a later writer is refused, not ignored (none is defined in version 1).
    assert _refused(_with_header(good, flags=1)) == (
        f"relations.snap: snapshot flags 0x1: none is defined in version {VERSION}")
    assert _refused(_with_header(good, flags=0x8000)) == (
        f"relations.snap: snapshot flags 0x8000: none is defined in version {VERSION}")


def test_inconsistent_metadata_is_refused_by_name() -> None:
    good = _small()
    meta_len = HEADER.unpack_from(good)[5]
    not_json = _seal(list(HEADER.unpack_from(good)),
                     b"{" * meta_len + good[HEADER.size + meta_len:])
    assert _refused(not_json).startswith(
        "relations.snap: snapshot metadata is inconsistent: JSONDecodeError(")
    no_rows = _with_meta(good, lambda m: m["sections"].pop("rows"))
    assert _refused(no_rows) == (
        "relations.snap: snapshot metadata is inconsistent: KeyError('rows')")


def _move(name: str, offset: int | None = None, length: int | None = None
          ) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        at, size = meta["sections"][name]
        meta["sections"][name] = [at if offset is None else offset,
                                  size if length is None else length]
    return change


@pytest.mark.parametrize(("name", "offset", "length"), [
    ("rows", None, 10_000),        # runs past the end of the file
    ("slots/ean", None, 10_000),
    ("rows", 40, None),            # inside the header (8-aligned)
    ("slots/meter", 40, 8 * 4),
    ("rows", 60, None),            # not 8-aligned, after the header
    ("slots/meter", 60, 8 * 4),
    ("rows", None, -8),
])
def test_a_section_out_of_bounds_is_refused_by_name(name: str, offset: int | None,
                                                    length: int | None) -> None:
    forged = _with_meta(_small(), _move(name, offset, length))
    assert _refused(forged) == f"relations.snap: section {name} out of bounds"


def test_a_section_may_end_at_the_end_of_the_file_and_start_after_the_header() -> None:
    good = _small()
    rows_at = _meta(good)["sections"]["rows"][0]
    to_the_end = _with_meta(good, _move("rows", length=len(good) - rows_at))
    assert Snapshot.read(to_the_end, "t").rows_end == len(good)
    # An empty rows section right after the header (it may overlap nothing).
    builder = SnapshotBuilder()
    empty = _with_meta(builder.to_bytes(), _move("rows", HEADER.size, 0))
    snap = Snapshot.read(empty, "t")
    assert (snap.rows_start, snap.rows_end, list(snap)) == (HEADER.size, HEADER.size, [])


@pytest.mark.parametrize("slots", [4, 12, 24])
def test_a_hash_table_not_a_power_of_2_of_8_slots_or_more_is_refused(slots: int) -> None:
    """A table of 4 slots is a power of 2 but under the minimum; 12 and 24 are
    not powers of 2 (the probe's mask would skip slots)."""
    forged = _with_meta(_small(), _move("slots/meter", length=4 * slots))
    assert _refused(forged) == "relations.snap: hash table of meter is not a power of 2"


def test_a_hash_table_without_an_empty_slot_is_refused_by_name() -> None:
    """Every slot taken: a probe for an id that is not there would never end."""
    good = _small()
    start, length = _meta(good)["sections"]["slots/meter"]
    data = bytearray(good)
    taken = array("I", data[start:start + length])
    data[start:start + length] = array("I", [s or max(taken) for s in taken]).tobytes()
    forged = _seal(list(HEADER.unpack_from(good)), bytes(data[HEADER.size:]))
    assert _refused(forged) == "relations.snap: hash table of meter has no empty slot"
    # One empty slot is enough.
    data[start:start + 4] = bytes(4)
    Snapshot.read(_seal(list(HEADER.unpack_from(good)), bytes(data[HEADER.size:])), "t")


def test_a_big_endian_host_neither_writes_nor_reads_a_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slots are read as native u32: on a big-endian host they would
    address the wrong rows, so both sides refuse instead."""
    good = _small()
    monkeypatch.setattr(sys, "byteorder", "big")
    expected = "^relation snapshots are little-endian; this host is not$"
    with pytest.raises(SnapshotError, match=expected):
        SnapshotBuilder().to_bytes()
    with pytest.raises(SnapshotError, match=expected):
        Snapshot.read(good, "t")


class _Rows(bytearray):
    """Rows as long as the slots can address (32 GiB), without holding them."""

    def __len__(self) -> int:
        return 8 * (2**32 - 1)


def test_rows_past_what_a_u32_slot_addresses_are_refused_by_name() -> None:
    """A slot holds (row offset / 8) + 1 in a u32: 32 GiB of rows is the
    limit; the builder refuses it with a SnapshotError rather than fail
    while filling a table. (A test cannot hold 32 GiB: the rows' length is
    faked.)"""
    builder = SnapshotBuilder()
    builder._rows = _Rows()
    with pytest.raises(SnapshotError, match=r"^more than 32 GiB of rows$"):
        builder.to_bytes()


def test_a_relation_read_from_the_snapshot_equals_the_feeds() -> None:
    """The bounds, the tenant and the relation come back as they went in."""
    rels = [Relation("meter", METER, "ores", "owner", None, NOW),
            Relation("meter", METER, "fluvius", "owner", NOW, None)]
    index = RelationIndex(rels)
    again = RelationIndex.from_snapshot(Snapshot.read(bytes(index.snapshot.buffer), "t"))
    assert list(again) == rels
