"""The compact relation snapshot: one immutable binary file, read whole.

A national feed holds ~10 million tuples; as Python objects that is ~9 GB. A
snapshot keeps them in flat columns instead, so loading is one read, a header
check and a checksum, and a lookup is a hash probe plus a few array reads.

An operator's file (``gateway.relations``) is read into the process's own
memory (``gateway.files`` reads it; this module only decodes and encodes
bytes), not ``mmap``-ed: a mapping would see an operator's in-place rewrite
(``cp new old``) of the live file, half old and half new, or die of SIGBUS
on a truncation. A private copy cannot change under a running decision.
The one exception is the fleet's published snapshot: the gateway writes it
itself, once, named by its SHA-256 and never rewritten
(``gateway.files.load_mapped``), so the workers of one host map the same
file and share its pages instead of holding a copy each. Everything here
reads a buffer by indexing, slicing, ``struct`` and ``zlib``, which an
``mmap`` serves like ``bytes``.

Layout, little-endian::

    header      48 bytes   magic, version, file size, record count, metadata
                           length, CRC-32 of all that follows, CRC-32 of the header
    metadata    JSON       string tables (kinds, tenants, relation names), counts,
                           offset and length of each section below (8-aligned)
    slots/KIND  u32[2^k]   open addressing by CRC-32 of the id, linear probing;
                           0 is empty, else (row offset / 8) + 1
    rows        one per resource, in feed order, each 8-aligned:
                  kind u8, id length u8, id (UTF-8, surrogatepass),
                  count u8 (255: a u32 count follows), count records of
                  tenant u16, relation u16, valid_from i64, valid_to i64
                  (microseconds since the epoch; INT64_MIN / INT64_MAX: open)

A row keeps everything a lookup reads within a cache line or two: a cold
lookup costs two memory misses (slot, row), not one per column.

The file is trusted like the JSON feed it is compiled from (the operator's
own disk); the checksums catch truncation and corruption, not forgery. A
probe always compares the full id bytes, so a hash collision can never
stand in for another resource. Replace a snapshot by rename (what
``gateway.files.write_atomically`` does): a reload that read a file while it was being
rewritten in place fails its checksum and keeps the running snapshot.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.core.rejected import Rejected

MAGIC = b"\x89GWRELS\n"  # not JSON, not text: a feed is never mistaken for a snapshot
VERSION = 1
HEADER = struct.Struct("<8sIIQQQII")  # magic version flags size records meta_len body hdr
OPEN_FROM = -(2**63)
OPEN_TO = 2**63 - 1
_U32 = 2**32 - 1
REC = struct.Struct("<HHqq")  # tenant, relation, valid_from us, valid_to us
U32 = struct.Struct("<I")
ID_MAX = 255  # bytes; meter serials, EANs and plain ids are at most 64
LONG_COUNT = 0xFF  # a count byte of 255: the real count follows as a u32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# The hash table has at least n + n // 2 slots (and 8): a load factor of
# about 2/3 at most (11 resources in 16 slots at worst).
_MIN_SLOTS = 8

for _code, _size in (("B", 1), ("I", 4), ("q", 8)):
    assert array(_code).itemsize == _size, f"array {_code!r} is not {_size} bytes here"


class SnapshotError(Rejected, ValueError):
    """A snapshot file is truncated, corrupt, of another version, or not one."""

    def __init__(self, detail: str) -> None:
        super().__init__("snapshot-invalid", detail)


Record = tuple[str, str, int, int]  # tenant, relation, valid_from us, valid_to us


def micros(at: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (no float)."""
    d = at - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def instant(us: int) -> datetime:
    """The inverse of :func:`micros`, in UTC."""
    return _EPOCH + us * _MICRO


def encode_id(resource_id: str) -> bytes:
    # surrogatepass: an id read from JSON may hold a lone surrogate; it still
    # maps to one byte string, distinct from every valid UTF-8 id.
    return resource_id.encode("utf-8", "surrogatepass")


def decode_id(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def is_snapshot(data: bytes) -> bool:
    """The first bytes tell a snapshot from a JSON feed."""
    return data[:len(MAGIC)] == MAGIC


def _table_size(count: int) -> int:
    size = _MIN_SLOTS
    while size < count + count // 2:
        size *= 2
    return size


def _intern(table: dict[str, int], value: str, limit: int, what: str) -> int:
    index = table.get(value)
    if index is None:
        index = len(table)
        if index > limit:
            raise SnapshotError(f"more than {limit + 1} distinct {what}")
        table[value] = index
    return index


class SnapshotBuilder:
    """Collects relations resource by resource, as rows, and emits a snapshot.

    Each ``(kind, id)`` is added once with all its records in feed order
    (the order :meth:`RelationIndex.find` answers in). Memory is the final
    file size plus 9 bytes a resource: no object per relation is kept.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, int] = {}
        self._tenants: dict[str, int] = {}
        self._names: dict[str, int] = {}
        self._rows = bytearray()
        self._row_kind = array("B")
        self._row_off = array("q")
        self._records = 0

    def __len__(self) -> int:
        return self._records

    def add(self, kind: str, resource_id: str, records: Iterable[Record]) -> None:
        """One resource and its records ``(tenant, relation, from_us, to_us)``;
        use :data:`OPEN_FROM` / :data:`OPEN_TO` for an open bound."""
        key = encode_id(resource_id)
        if not 0 < len(key) <= ID_MAX:
            raise SnapshotError(f"resource id of {len(key)} bytes (1 to {ID_MAX}): "
                                f"{resource_id[:80]!r}")
        k = _intern(self._kinds, kind, 0xFF, "resource kinds")
        tenants, names, pack = self._tenants, self._names, REC.pack
        body = bytearray()
        for tenant, name, start, end in records:
            t = tenants.get(tenant)
            if t is None:
                t = _intern(tenants, tenant, 0xFFFF, "tenants")
            n = names.get(name)
            if n is None:
                n = _intern(names, name, 0xFFFF, "relation names")
            body += pack(t, n, start, end)
        count = len(body) // REC.size
        rows = self._rows
        rows += bytes(-len(rows) % 8)  # rows start 8-aligned: slots address them / 8
        self._row_off.append(len(rows))
        self._row_kind.append(k)
        rows += bytes((k, len(key))) + key
        rows += bytes((count,)) if count < LONG_COUNT else bytes((LONG_COUNT,)) + U32.pack(count)
        rows += body
        self._records += count

    def _slots(self) -> dict[str, array[int]]:
        """One open-addressing table per kind; refuses a resource added twice."""
        if len(self._rows) >= 8 * _U32:
            raise SnapshotError("more than 32 GiB of rows")
        kinds = list(self._kinds)
        counts = [0] * len(kinds)
        for k in self._row_kind:
            counts[k] += 1
        tables = [array("I", bytes(4 * _table_size(c))) for c in counts]
        masks = [len(t) - 1 for t in tables]
        rows, crc32 = self._rows, zlib.crc32
        for off, k in zip(self._row_off, self._row_kind, strict=True):
            slots, mask = tables[k], masks[k]
            key = bytes(rows[off + 2:off + 2 + rows[off + 1]])
            h = crc32(key) & mask
            while (other := slots[h]) != 0:
                o = (other - 1) << 3
                if rows[o + 2:o + 2 + rows[o + 1]] == key:
                    raise SnapshotError(f"resource added twice: {kinds[k]} {decode_id(key)}")
                h = (h + 1) & mask
            slots[h] = (off >> 3) + 1
        return dict(zip(kinds, tables, strict=True))

    def _chunks(self) -> tuple[bytes, list[bytes | bytearray | array[int]]]:
        """The metadata JSON and the sections, in file order."""
        sections: list[tuple[str, bytes | bytearray | array[int]]] = [
            (f"slots/{kind}", table) for kind, table in self._slots().items()]
        sections.append(("rows", self._rows))
        meta: dict[str, Any] = {
            "kinds": list(self._kinds), "tenants": list(self._tenants),
            "relations": list(self._names), "resources": len(self._row_off),
            "records": self._records, "sections": {}}
        # Offsets depend on the metadata's own length: fix the point.
        while True:
            offset = _align(HEADER.size + len(json.dumps(meta).encode()))
            placed: dict[str, list[int]] = {}
            for name, data in sections:
                length = len(data) * (data.itemsize if isinstance(data, array) else 1)
                placed[name] = [offset, length]
                offset = _align(offset + length)
            if placed == meta["sections"]:
                break
            meta["sections"] = placed
        raw_meta = json.dumps(meta).encode()
        chunks: list[bytes | bytearray | array[int]] = [raw_meta]
        at = HEADER.size + len(raw_meta)
        for name, data in sections:
            start = meta["sections"][name][0]
            chunks.append(bytes(start - at))
            chunks.append(data)
            at = start + meta["sections"][name][1]
        chunks.append(bytes(_align(at) - at))
        return raw_meta, chunks

    def emit(self, write: Callable[[bytes | bytearray | memoryview], object]) -> int:
        """Write the whole snapshot through ``write``; returns its size."""
        _require_little_endian()
        _, chunks = self._chunks()
        crc, size = 0, HEADER.size
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            crc = zlib.crc32(view, crc)
            size += len(view)
        head = HEADER.pack(MAGIC, VERSION, 0, size, self._records, len(chunks[0]), crc, 0)
        write(head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little"))
        for chunk in chunks:
            write(memoryview(chunk).cast("B"))
        return size

    def to_bytes(self) -> bytes:
        out = bytearray()
        self.emit(out.extend)
        return bytes(out)


def _align(offset: int) -> int:
    return (offset + 7) & ~7


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise SnapshotError("relation snapshots are little-endian; this host is not")


class Snapshot:
    """A validated, read-only snapshot: string tables, hash tables and rows.

    ``buffer`` is the whole file; row
    offsets are absolute positions in it.
    """

    __slots__ = ("buffer", "kinds", "names", "records", "resources", "rows_end",
                 "rows_start", "source", "tables", "tenants")

    def __init__(self, buffer: bytes, source: str) -> None:
        _require_little_endian()
        self.source = source
        self.buffer = buffer
        view = memoryview(buffer)
        if len(view) < HEADER.size or bytes(view[:len(MAGIC)]) != MAGIC:
            raise SnapshotError(f"{source}: not a relation snapshot (or truncated header)")
        _, version, flags, size, records, meta_len, body_crc, head_crc = HEADER.unpack_from(view)
        if zlib.crc32(view[:HEADER.size - 4]) != head_crc:
            raise SnapshotError(f"{source}: snapshot header is corrupt")
        if version != VERSION:
            raise SnapshotError(f"{source}: snapshot version {version}, expected {VERSION}")
        if flags:
            # SECURITY (D1): a flag this reader does not know could change how
            # the rows read: refused, never read as if it were not there.
            raise SnapshotError(f"{source}: snapshot flags {flags:#x}: none is defined in "
                                f"version {VERSION}")
        if size != len(view):
            raise SnapshotError(f"{source}: snapshot is {len(view)} bytes, its header says "
                                f"{size}: truncated or appended to")
        if zlib.crc32(view[HEADER.size:]) != body_crc:
            raise SnapshotError(f"{source}: snapshot checksum mismatch: corrupt")
        try:
            meta = json.loads(bytes(view[HEADER.size:HEADER.size + meta_len]))
            self._bind(view, meta, records)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{source}: snapshot metadata is inconsistent: {exc!r}") from exc

    def _bind(self, view: memoryview, meta: dict[str, Any], records: int) -> None:
        self.kinds: list[str] = [str(k) for k in meta["kinds"]]
        # Interned: the tenant a lookup returns is the very string of the table.
        self.tenants: list[str] = [sys.intern(str(t)) for t in meta["tenants"]]
        self.names: list[str] = [sys.intern(str(n)) for n in meta["relations"]]
        self.resources = int(meta["resources"])
        self.records = int(meta["records"])
        if self.records != records:
            raise SnapshotError(f"{self.source}: header and metadata disagree on the count")
        sections: dict[str, list[int]] = meta["sections"]

        def section(name: str) -> tuple[int, int]:
            offset, length = (int(v) for v in sections[name])
            if offset % 8 or offset < HEADER.size or length < 0 or offset + length > len(view):
                raise SnapshotError(f"{self.source}: section {name} out of bounds")
            return offset, offset + length

        self.rows_start, self.rows_end = section("rows")
        self.tables: dict[str, tuple[memoryview, int]] = {}
        for kind in self.kinds:
            start, end = section(f"slots/{kind}")
            slots = view[start:end].cast("I")
            if len(slots) < _MIN_SLOTS or len(slots) & (len(slots) - 1):
                raise SnapshotError(f"{self.source}: hash table of {kind} is not a power of 2")
            if 0 not in slots:
                # A lookup probes until it meets an empty slot (the builder
                # leaves a third of them empty): a full table would never end
                # for an id that is not in it.
                raise SnapshotError(f"{self.source}: hash table of {kind} has no empty slot")
            self.tables[kind] = (slots, len(slots) - 1)

    @classmethod
    def read(cls, data: bytes, source: str) -> Snapshot:
        """The snapshot in the bytes of a file (``source`` names it in errors)."""
        if len(data) < HEADER.size:
            raise SnapshotError(f"{source}: truncated relation snapshot")
        return cls(data, source)

    def row(self, kind: str, key: bytes) -> int:
        """Position of the record count in the row of ``(kind, key)``, or -1."""
        table = self.tables.get(kind)
        if table is None:
            return -1
        slots, mask = table
        buf, base, n = self.buffer, self.rows_start, len(key)
        h = zlib.crc32(key) & mask
        while (s := slots[h]) != 0:
            off = base + ((s - 1) << 3)
            # SECURITY: the full id decides, never the hash alone.
            if buf[off + 1] == n and buf[off + 2:off + 2 + n] == key:
                return off + 2 + n
            h = (h + 1) & mask
        return -1

    def records_at(self, pos: int) -> tuple[int, int]:
        """``(first record, end)`` positions of the row whose count is at ``pos``."""
        count = self.buffer[pos]
        if count == LONG_COUNT:
            return pos + 5, pos + 5 + REC.size * U32.unpack_from(self.buffer, pos + 1)[0]
        return pos + 1, pos + 1 + REC.size * count

    def __iter__(self) -> Iterator[tuple[str, str, list[Record]]]:
        """Every resource ``(kind, id, records)`` in feed order."""
        buf, pos, unpack = self.buffer, self.rows_start, REC.unpack_from
        tenants, names = self.tenants, self.names
        while pos < self.rows_end:
            n = buf[pos + 1]
            kind, rid = self.kinds[buf[pos]], decode_id(buf[pos + 2:pos + 2 + n])
            first, end = self.records_at(pos + 2 + n)
            records = [(tenants[t], names[r], start, stop)
                       for t, r, start, stop in (unpack(buf, p)
                                                 for p in range(first, end, REC.size))]
            yield kind, rid, records
            pos = _align(end)
