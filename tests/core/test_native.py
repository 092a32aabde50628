"""The C accelerators (gateway/core/_native.c) against their Python references.

The references stay the specification: the GS1 and meter checks of
gateway/core/identifiers.py and the relation lookup of
gateway/core/relations/index.py (every test under tests/core/relations runs on
both lookups, see its conftest). Here: the module is built wherever a C
compiler is, the checks agree with their references on generated input, and the
lookup survives a snapshot that lies about itself (fail closed, D1).
"""

from __future__ import annotations

import mmap
import shutil
import struct
import sysconfig
import zlib
from array import array
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import identifiers
from gateway.core.meters import AIRPLANE_MODE
from gateway.core.push import scan
from gateway.core.push.records import owner_span, owner_span_reference
from gateway.core.relations import index as index_module
from gateway.core.relations.index import RelationIndex
from gateway.core.relations.snapshot import (
    OPEN_FROM,
    OPEN_TO,
    REC,
    Snapshot,
    SnapshotBuilder,
    micros,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


def test_the_module_is_built_wherever_a_compiler_is() -> None:
    """The install goes on without it (no compiler), so a missing build would
    only show as a slower gateway: here it fails instead."""
    if _compiler() is None:
        assert not index_module.native_available()
        assert identifiers.is_valid_ean is identifiers.ean_reference
        return
    assert index_module.native_available(), "gateway.core._native was not built"
    from gateway.core import _native
    assert identifiers.is_valid_ean is _native.is_valid_ean
    assert identifiers.is_valid_gsrn is _native.is_valid_gsrn
    assert identifiers.is_valid_meter_serial is _native.is_valid_meter_serial
    assert identifiers.id_syntax("meter") is _native.is_valid_meter_serial
    assert type(RelationIndex().holds) is _native.Holds


native: Any
try:
    from gateway.core import _native as native
except ImportError:  # test_the_module_is_built_wherever_a_compiler_is says if that is wrong
    native = None
needs_native = pytest.mark.skipif(native is None, reason="gateway.core._native is not built")

# Digits, upper and lower letters, other scripts' digits (U+0660..), a space.
_ID_CHARS = st.sampled_from("0123456789" "0123456789" "ABCZ" "az" "\u0660\u0669" " -")
_ids = st.text(_ID_CHARS, max_size=24)
_gsrns = st.text(st.sampled_from("0123456789"), min_size=17, max_size=17).map(
    identifiers.with_check_digit)


@needs_native
@settings(max_examples=600, deadline=None)
@given(value=_ids | _gsrns | _gsrns.map(lambda g: "54" + g[2:]) |
       _gsrns.map(lambda g: identifiers.with_check_digit("54" + g[2:17])))
def test_identifier_checks_equal_their_references(value: str) -> None:
    assert native.is_valid_gsrn(value) is identifiers.gsrn_reference(value)
    assert native.is_valid_ean(value) is identifiers.ean_reference(value)
    assert native.is_valid_meter_serial(value) is identifiers.meter_reference(value)


@needs_native
def test_identifier_checks_at_their_edges() -> None:
    ean = "541448860012075359"  # DOMAIN.md's example
    cases = [ean, ean[:-1] + "8", "55" + ean[2:], ean + "0", ean[:-1],
             "A" * 6, "A" * 5, "Z9" * 10, "Z9" * 10 + "A", "1SAG1100042062", "1sag1100042062",
             "1SAG\u0661100042062", "", "54"]
    for value in cases:
        assert native.is_valid_gsrn(value) is identifiers.gsrn_reference(value), value
        assert native.is_valid_ean(value) is identifiers.ean_reference(value), value
        assert native.is_valid_meter_serial(value) is identifiers.meter_reference(value), value
    for check in (native.is_valid_gsrn, native.is_valid_ean, native.is_valid_meter_serial):
        with pytest.raises(TypeError):
            check(b"541448860012075359")


def _row(rid: bytes, records: list[tuple[int, int, int, int]], count: int | None = None) -> bytes:
    """A snapshot row (kind 0), padded to 8 bytes: the builder's layout, with a
    count that may lie."""
    n = len(records) if count is None else count
    head = bytes([0, len(rid)]) + rid
    head += bytes([n]) if n < 255 else b"\xff" + struct.pack("<I", n)
    body = head + b"".join(REC.pack(*r) for r in records)
    return body + bytes(-len(body) % 8)


def _probe(rows: bytes, slots: list[int]) -> object:
    return native.Probe(rows, memoryview(array("I", slots)), 0)


OPEN = (OPEN_FROM, OPEN_TO)


@needs_native
def test_a_probe_answers_a_well_formed_row() -> None:
    rows = _row(b"M1", [(1, 0, *OPEN), (2, 1, 10, 20), (2, 3, *OPEN)])
    slots = [0] * 8
    slots[zlib.crc32(b"M1") & 7] = 1
    probe = _probe(rows, slots)
    assert probe.find(b"M1", 1, 0b1, 0) == 0
    assert probe.find(b"M1", 2, 0b10, 10) == 1
    assert probe.find(b"M1", 2, 0b10, 20) == -1  # the end is not in the window
    assert probe.find(b"M1", 2, 0b1010, 20) == 3
    assert probe.find(b"M1", 3, 0b1111, 0) == -1
    assert probe.find(b"M2", 1, 0b1, 0) == -1
    assert probe.find(b"M", 1, 0b1, 0) == -1  # a prefix is another id


@needs_native
def test_a_forged_snapshot_answers_no_relation() -> None:
    """Slots, counts and rows that point past the buffer answer -1, never a
    read out of bounds; a table without an empty slot ends its probe."""
    row = _row(b"M1", [(1, 0, *OPEN)])
    assert _probe(row, [99] * 8).find(b"M1", 1, 1, 0) == -1  # every slot past the end
    assert _probe(row, [1] * 8).find(b"M2", 1, 1, 0) == -1  # no empty slot, id absent
    assert _probe(row, [1] * 8).find(b"M1", 1, 1, 0) == 0
    # A count of 3 where one record is there; of 2**32-1 (the long form).
    short = _row(b"M1", [(2, 0, *OPEN)], count=3)
    assert _probe(short, [1] * 8).find(b"M1", 1, 1, 0) == -1
    assert _probe(short, [1] * 8).find(b"M1", 2, 1, 0) == 0
    huge = _row(b"M1", [(2, 0, *OPEN)], count=2**32 - 1)
    assert _probe(huge, [1] * 8).find(b"M1", 1, 1, 0) == -1
    # A long count of one, whose record the buffer cuts off.
    cut = bytes([0, 2]) + b"M1" + b"\xff\x01"
    assert _probe(cut + bytes(21), [1] * 8).find(b"M1", 1, 1, 0) == -1
    # A relation index the bit set cannot hold is never taken.
    far = _row(b"M1", [(1, 64, *OPEN), (1, 65, *OPEN)])
    assert _probe(far, [1] * 8).find(b"M1", 1, 2**64 - 1, 0) == -1


@needs_native
def test_a_probe_refuses_what_is_not_a_table() -> None:
    with pytest.raises(ValueError, match="power of two"):
        native.Probe(bytes(64), memoryview(array("I", [0] * 6)), 0)
    with pytest.raises(ValueError, match="rows_start"):
        native.Probe(bytes(64), memoryview(array("I", [0] * 8)), 65)
    probe = native.Probe(bytes(64), memoryview(array("I", [0] * 8)), 0)
    with pytest.raises(TypeError):
        probe.__init__(bytes(64), memoryview(array("I", [0] * 8)), 0)
    with pytest.raises(TypeError):
        probe.find("M1", 1, 1, 0)
    with pytest.raises(TypeError):
        native.Holds({"meter": object()}, {}, (), micros, "tenant", "self")
    with pytest.raises(ValueError, match="64"):
        native.Holds({}, {}, tuple(f"n{i}" for i in range(65)), micros, "tenant", "self")


@needs_native
def test_a_probe_holds_its_buffer() -> None:
    """The mapping a snapshot lives in cannot go while a lookup can read it."""
    pages = mmap.mmap(-1, 64)
    probe = native.Probe(pages, memoryview(array("I", [0] * 8)), 0)
    with pytest.raises(BufferError):
        pages.close()
    del probe
    pages.close()


@needs_native
def test_holds_takes_any_set_of_names_and_each_instant() -> None:
    builder = SnapshotBuilder()
    builder.add("ean", "E1", [("ores", "owner", OPEN_FROM, micros(T0)),
                              ("ores", "supplier", micros(T0), OPEN_TO)])
    index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
    assert type(index.holds) is native.Holds
    before, after = datetime(2025, 1, 1, tzinfo=UTC), T0
    both = {"owner", "supplier"}
    assert index.holds("ean", "E1", "ores", both, before) == "owner"  # a set, not frozen
    assert index.holds("ean", "E1", "ores", frozenset(both), after) == "supplier"
    assert index.holds("ean", "E1", "ores", frozenset(both), before) == "owner"
    assert index.holds("ean", "E1", "ores", frozenset({"owner"}), after) is None
    with pytest.raises(TypeError):
        index.holds("ean", "E1", "ores", frozenset(both))  # type: ignore[call-arg]


# --- owner_span (gateway.core.push.records): a meter's owner over time --------

_SPAN_TENANTS = ("ores", "fluvius", "*")
_SPAN_NAMES = ("owner", AIRPLANE_MODE, "supplier")
_span_records = st.lists(st.tuples(st.sampled_from(_SPAN_TENANTS), st.sampled_from(_SPAN_NAMES),
                                   st.sampled_from((OPEN_FROM, -5, 0, 5, 10)),
                                   st.sampled_from((OPEN_TO, -5, 0, 5, 10, 20))), max_size=7)


@needs_native
@settings(max_examples=300, deadline=None)
@given(rows=st.dictionaries(st.sampled_from(("M1", "M2", "M10", "\ud800", "a" * 255)),
                            _span_records, max_size=5),
       long_row=st.booleans(), at=st.sampled_from((-6, -5, 0, 4, 5, 9, 10, 19, 20, 21)))
def test_owner_span_equals_its_reference(
        rows: dict[str, list[tuple[str, str, int, int]]], long_row: bool, at: int) -> None:
    if long_row:  # over 255 records: the count is a u32 after a 255 byte
        rows["M-long"] = [("fluvius", "supplier", OPEN_FROM, OPEN_TO)] * 300 + [
            ("ores", "owner", 0, 10)]
    builder = SnapshotBuilder()
    for rid, records in rows.items():
        builder.add("meter", rid, records)
    builder.add("meter", "M-base", [("ores", "owner", OPEN_FROM, OPEN_TO)])
    builder.add("ean", "E1", [("ores", "owner", OPEN_FROM, OPEN_TO)])
    index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
    assert index.native_span("meter", "owner", AIRPLANE_MODE, 0, 1) is not None
    for rid in (*rows, "M-long", "M3", "E1", ""):
        assert owner_span(index, rid, at) == owner_span_reference(index, rid, at), rid


@needs_native
def test_a_forged_row_has_no_owner() -> None:
    """A count past the buffer's end: nothing known, no owner, never a read
    out of bounds."""
    short = _row(b"M1", [(1, 0, 0, 10)], count=3)
    span = _probe(short, [1] * 8).span
    assert span(b"M1", 5, 0, 1, -1, -100, 100) == (-100, 100, -1, False)
    whole = _row(b"M1", [(1, 0, 0, 10), (2, 1, 5, 20)])
    span = _probe(whole, [1] * 8).span
    assert span(b"M1", 5, 0, 1, -1, -100, 100) == (5, 10, 1, True)
    assert span(b"M1", 5, 0, 1, 1, -100, 100) == (5, 10, -1, True)  # tenant 1 is "*"
    assert span(b"M1", 12, 0, 1, -1, -100, 100) == (10, 20, -1, True)
    assert span(b"M2", 5, 0, 1, -1, -100, 100) == (-100, 100, -1, False)


# --- the columnar push's values arrays (gateway.core.push.scan) ---------------

_FRAGMENTS = st.sampled_from(('"values"', '"values', 'values"', ":", " ", "\n", "\t", "[", "]",
                              "1", "-2.5", ",", "e", "E+3", "x", '"', "{", "}", "é", "\u20ac",
                              "\U0001f600"))


@needs_native
@settings(max_examples=500, deadline=None)
@given(text=st.lists(_FRAGMENTS, max_size=30).map("".join))
def test_cut_values_equals_the_regular_expression(text: str) -> None:
    assert native.cut_values(text) == scan._CUT.split(text)


@needs_native
def test_cut_values_takes_exactly_the_characters_of_the_pattern_s_class() -> None:
    """Every one-byte character (the table of cut_values' one-byte path) and
    a few wider ones, inside an array and after a number, and before an
    array of numbers (a text of two or four bytes a character): cut where
    the regular expression cuts, and nowhere else."""
    for code in (*range(256), 0x100, 0x20AC, 0x1F600):
        c = chr(code)
        for text in (f'{{"values":[{c}]}}', f'{{"values":[1{c}2]}}', f'{{"values":[{c}',
                     f'{c}{{"values":[1, 2.5e3]}}'):  # the text as wide as c
            assert native.cut_values(text) == scan._CUT.split(text), (code, text)


def test_cut_values_on_a_batch() -> None:
    text = ('{"meter_days":[{"values":[1,2.5]},{"values" :\n[ 3e2 ]},{"values":[1,"x"]},'
            '{"values":[]}],"values":[4]}')
    assert scan._CUT.split(text) == [
        '{"meter_days":[{', "[1,2.5]", '},{', "[ 3e2 ]", '},{"values":[1,"x"]},{', "[]",
        '}],', "[4]", "}"]
    if native is not None:
        assert native.cut_values(text) == scan._CUT.split(text)


_numbers = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,5})?([eE][+\-]?[0-9]{1,3})?",
                  fullmatch=True),
    st.sampled_from(("9" * 308, "9" * 309, "1" + "0" * 308, "2" + "0" * 308, "1e308", "2e308",
                     "1.7976931348623157e308", "1.7976931348623159e308", "-1E400", "1e-400",
                     "01", "1.", ".5", "+1", "-", "1e", "1e+", "1..2", "--1", "", "0x1")))
_spaces = st.sampled_from(("", " ", "\t", "\n\r "))


@st.composite
def _arrays(draw: st.DrawFn) -> str:
    if draw(st.booleans()):  # anything _CUT could cut
        return "[" + draw(st.text(st.sampled_from("0123456789.,eE+- \t\n\r"), max_size=12)) + "]"
    numbers = draw(st.lists(_numbers, max_size=4))
    sep = draw(_spaces) + "," + draw(_spaces)
    return "[" + draw(_spaces) + sep.join(numbers) + draw(_spaces) + "]"


@needs_native
@settings(max_examples=1500, deadline=None)
@given(arrays=st.lists(_arrays(), min_size=1, max_size=4))
def test_finite_number_counts_equals_its_reference(arrays: list[str]) -> None:
    assert native.finite_number_counts(arrays) == scan.finite_number_counts_reference(arrays), \
        arrays


@needs_native
def test_finite_number_counts_at_the_edges() -> None:
    finite = {"[1]": 1, "[-0]": 1, "[0.5e-3, 1E+2]": 2, "[ 1 , 2 ,3]": 3,
              "[" + "9" * 308 + "]": 1, "[1.7976931348623157e308]": 1, "[1e-400, 0]": 2,
              "[123456789012345678901234567890]": 1}
    not_finite = ["[]", "[ ]", "[1,]", "[,1]", "[1 2]", "[01]", "[1.]", "[.5]", "[+1]",
                  "[1e999]", "[-1E400]", "[2" + "0" * 308 + "]", "[1.7976931348623159e308]",
                  "[1", "1]", "[1]]", "[\u00b9]", "[1x", "[1, 2}", "[0 ", "[1]\n"]
    for text, count in finite.items():
        assert native.finite_number_counts([text]) == [count], text
        assert scan.finite_number_counts_reference([text]) == [count], text
    assert native.finite_number_counts(list(finite)) == list(finite.values())
    for text in not_finite:
        assert native.finite_number_counts(["[1]", text]) is None, text
        assert native.finite_number_counts([text, "[1]"]) is None, text
    assert native.finite_number_counts([]) == []
    with pytest.raises(TypeError):
        native.finite_number_counts(("[1]",))


@needs_native
def test_owner_span_where_the_snapshot_has_no_owner_relation_at_all() -> None:
    """A feed with no ownership (or no airplane-mode) tuple has no such name in
    its table: no record is taken for one, and nothing fails."""
    builder = SnapshotBuilder()
    builder.add("meter", "M1", [("ores", "supplier", OPEN_FROM, OPEN_TO),
                                ("fluvius", "grid-operator", OPEN_FROM, OPEN_TO)])
    index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
    assert index.snapshot.names[1:2] == ["grid-operator"]  # what a -1 must not turn into
    expected = (-(1 << 62), 1 << 62, None, False)
    assert owner_span_reference(index, "M1", 5) == expected
    assert owner_span(index, "M1", 5) == expected
    read = index.native_span("meter", "grid-operator", AIRPLANE_MODE, 0, 100)
    assert read is not None and read(b"M1", 5) == (0, 100, "fluvius", False)


@needs_native
def test_the_routers_read_owners_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the module is built, owner_span never falls back to the reference
    (the same answers, at twice the cost per meter)."""
    from gateway.core.push import records

    def reference(*_: object) -> None:
        raise AssertionError("owner_span_reference called with the C module built")

    monkeypatch.setattr(records, "owner_span_reference", reference)
    builder = SnapshotBuilder()
    builder.add("meter", "M1", [("ores", "owner", OPEN_FROM, OPEN_TO)])
    index = RelationIndex.from_snapshot(Snapshot(builder.to_bytes(), "test"))
    assert owner_span(index, "M1", 5) == (-(1 << 62), 1 << 62, "ores", False)
