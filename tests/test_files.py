"""gateway.files.read_private: a large file (the relation snapshot) is read
into anonymous pages of the process's own, advised for transparent huge
pages, and stays a private copy whatever happens to the file."""

from __future__ import annotations

import ctypes
import mmap
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import files
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex
from gateway.files import advise_huge, load_relations, read_private

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _content(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not line.startswith("VmFlags"):
            try:
                start, end = (int(x, 16) for x in head.split("-"))
            except ValueError:
                continue
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_small_file_is_read_into_bytes(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    data = read_private(path)
    assert type(data) is bytes and data == b"x" * 1000


def test_a_large_file_is_a_private_copy_in_huge_pages(tmp_path: Path) -> None:
    path = tmp_path / "large"
    size = files.HUGE_READ_BYTES + 12_345
    path.write_bytes(_content(size))
    data = read_private(path)
    assert isinstance(data, mmap.mmap)
    assert len(data) == size and data[:] == _content(size)
    # A private copy: rewriting the file in place changes nothing read.
    with path.open("r+b") as fh:
        fh.write(b"\xff" * 4096)
    assert data[:4096] == _content(4096)
    address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    flags = _vm_flags(address)
    if THP.exists() and "[never]" not in THP.read_text() and hasattr(mmap, "MADV_HUGEPAGE"):
        assert "hg" in flags, flags  # MADV_HUGEPAGE was given
    assert "sh" not in flags  # anonymous and private, not a shared mapping


def test_without_huge_pages_the_read_goes_on(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mmap, "MADV_HUGEPAGE", raising=False)
    path = tmp_path / "large"
    path.write_bytes(_content(files.HUGE_READ_BYTES))
    assert read_private(path)[:] == _content(files.HUGE_READ_BYTES)
    assert advise_huge(mmap.mmap(-1, 4096)) is False


def test_a_file_that_shrinks_while_read_gives_what_was_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "large"
    size = files.HUGE_READ_BYTES + 1
    path.write_bytes(_content(size))
    real_fstat = os.fstat

    class Grown:
        def __init__(self, st: os.stat_result) -> None:
            self.st_size = st.st_size + 5000  # the file as it was a moment ago

    monkeypatch.setattr(files.os, "fstat", lambda fd: Grown(real_fstat(fd)))
    data = read_private(path)
    assert type(data) is bytes and data == _content(size)


def test_a_snapshot_loaded_from_huge_pages_answers(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    index = RelationIndex([Relation("meter", "1SAG0001", "ores", "owner"),
                           Relation("ean", "541448860012075359", "lumen", "supplier")])
    path = tmp_path / "relations.snap"
    path.write_bytes(bytes(index.snapshot.buffer))
    monkeypatch.setattr(files, "HUGE_READ_BYTES", 0)
    loaded = load_relations(path)
    assert isinstance(loaded.snapshot.buffer, mmap.mmap)
    assert loaded.holds("meter", "1SAG0001", "ores", frozenset({"owner"}), at) == "owner"
    assert loaded.holds("meter", "1SAG0001", "lumen", frozenset({"owner"}), at) is None
    assert loaded.holds("ean", "541448860012075359", "lumen", frozenset({"supplier"}),
                        at) == "supplier"


def test_a_large_json_feed_loads_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feed over the threshold is read into a mapping like a snapshot, and
    still parsed as JSON (the benchmark's generated feed is one)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    path = tmp_path / "relations.json"
    path.write_text('{"relations": [{"kind": "meter", "id": "1SAG0001", '
                    '"tenant": "ores", "relation": "owner"}]}')
    monkeypatch.setattr(files, "HUGE_READ_BYTES", 0)
    loaded = load_relations(path)
    assert loaded.holds("meter", "1SAG0001", "ores", frozenset({"owner"}), at) == "owner"
