"""The gateway's file I/O below the subsystems.

- Files that hold secrets or tenant data, owner-only from the first byte
  (:func:`write_private`): the PKI's private keys, the server's TLS material,
  the vault's key file, the demo's dataset.
- Whole-or-nothing replacement of a large file (:func:`write_atomically`).
- The relation feed and its compiled snapshot, read and written here so the
  decision core does no file I/O (:mod:`gateway.core.relations.index` and
  :mod:`gateway.core.relations.snapshot` decode and encode the bytes).

May import: :mod:`gateway.core` only.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from gateway.core.relations.index import RelationIndex
from gateway.core.relations.snapshot import is_snapshot

Emit = Callable[[Callable[[bytes | bytearray | memoryview], object]], int]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, whole or not at all.

    The bytes go to a sibling temporary file created 0600 and then replace
    ``path`` atomically, so a reader sees the old file or the new one, and a
    file that existed with wider permissions does not lend them to the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # SECURITY: a temporary file left behind by a crash keeps its mode through
    # O_CREAT; make it owner-only before a byte is written.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_atomically(path: Path, emit: Emit) -> int:
    """Write what ``emit`` writes (through the function it is given) to ``path``:
    a temporary file next to it, flushed to disk, then renamed over it, so a
    reader sees the old file or the whole new one, never a part. Returns what
    ``emit`` returns (the size)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            size = emit(fh.write)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return size


def load_relations(path: Path) -> RelationIndex:
    """The relation index in ``path``: a compiled snapshot or the JSON feed.
    Read whole into a private copy: an in-place rewrite of the live file
    cannot change a running decision (gateway.core.relations.snapshot)."""
    data = read_private(path)
    if not is_snapshot(data):
        data = bytes(data)  # a JSON feed: the parser reads bytes, not a mapping
    return RelationIndex.from_bytes(data, str(path))


# Below this a file is read into an ordinary ``bytes``; above it, into
# anonymous pages of its own that may be huge (see read_private).
HUGE_READ_BYTES = 8 << 20


def read_private(path: Path) -> bytes:
    """The whole of ``path`` in the process's own memory, as ``bytes`` reads.

    A large file (a national relation snapshot is ~350 MiB) goes into an
    anonymous mapping advised for transparent huge pages, where the kernel
    offers them. Every decision reads two random places of it (a hash slot,
    a row); in 4 KiB pages each is a TLB miss and, in a virtual machine, a
    nested page walk, which cost more than the cache misses themselves. In
    2 MiB pages the whole snapshot is a few hundred TLB entries. The mapping
    is private and anonymous, so like ``bytes`` it cannot change under a
    running decision; it is unmapped when the index that holds it goes.
    """
    with path.open("rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < HUGE_READ_BYTES:
            return fh.read()
        pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        advise_huge(pages)
        done = 0
        with memoryview(pages) as view:
            while done < size:
                got = fh.readinto(view[done:])
                if not got:
                    break
                done += got
        if done < size:
            # The file shrank while it was read: what was there is all there
            # is (the snapshot's own size and checksum then refuse it).
            short = pages[:done]
            pages.close()
            return short
    # An mmap reads like bytes for every operation of the snapshot (indexing,
    # slicing, struct, zlib); the mapping lives as long as the index.
    return cast(bytes, pages)


def advise_huge(pages: mmap.mmap) -> bool:
    """Ask the kernel to back ``pages`` with transparent huge pages; False
    where it cannot (no THP in this kernel, or not Linux). Only advice: the
    pages hold the same bytes either way."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return False
    try:
        pages.madvise(advice)
    except OSError:
        return False
    return True


def load_mapped(path: Path) -> RelationIndex:
    """The relation snapshot in ``path`` mapped read-only, not copied: for the
    fleet's content-addressed snapshot files only, which the gateway writes
    once and never rewrites (see gateway.core.relations.snapshot); every
    process that maps it shares its pages."""
    with path.open("rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    # An mmap reads like bytes for every operation of the snapshot (indexing,
    # slicing, struct, zlib); the mapping lives as long as the index.
    return RelationIndex.from_bytes(cast(bytes, mapped), str(path))


# How many feed records between two reports to a progress callback.
PROGRESS_EVERY = 10_000


def compile_feed(feed: Path, out: Path,
                 progress: Callable[[int, int], object] | None = None) -> int:
    """Compile a JSON feed (or re-write a snapshot) into a snapshot file at
    ``out``, atomically; returns the number of relations. ``progress(done,
    total)`` hears how many feed records are indexed, every
    ``PROGRESS_EVERY`` and at the end (``gateway relations compile`` draws
    a bar with it)."""
    data = feed.read_bytes()
    if progress is None or is_snapshot(data):
        index = RelationIndex.from_bytes(data, str(feed))
    else:
        records = json.loads(data)["relations"]
        del data  # the parsed feed is enough; 10 M relations are ~1 GB of text
        total = len(records)

        def counted() -> Iterator[Any]:
            for done, record in enumerate(records, 1):
                yield record
                if done % PROGRESS_EVERY == 0:
                    progress(done, total)
            progress(total, total)

        index = RelationIndex.from_records(counted())
    buffer = index.snapshot.buffer

    def emit(write: Callable[[bytes | bytearray | memoryview], object]) -> int:
        write(memoryview(buffer))
        return len(buffer)

    write_atomically(out, emit)
    return len(index)
