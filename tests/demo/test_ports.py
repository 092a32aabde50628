"""Ports handed to a process that binds them later (gateway.demo._ports):
below the kernel's ephemeral range, so no outgoing connection takes one in
the meantime, and never the same one twice."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.demo import _ports, spare_port
from gateway.demo._ports import DEFAULT_EPHEMERAL, SLICE_ENV, ephemeral_range

SLICE_AT_START = os.environ.get(SLICE_ENV)  # before the fixture below takes it away


def test_each_worker_of_the_suite_has_a_slice_of_its_own() -> None:
    """tests/conftest.py: under pytest-xdist, worker gwK of N picks from
    slice K/N; a suite run in one process has the whole room."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    expected = (f"{worker[2:]}/{os.environ['PYTEST_XDIST_WORKER_COUNT']}"
                if worker else None)
    assert expected == SLICE_AT_START


@pytest.fixture(autouse=True)
def _whole_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """The room below the range as a process alone has it (the suite's
    workers each have a slice: tests/conftest.py)."""
    monkeypatch.delenv(SLICE_ENV, raising=False)


def test_the_ephemeral_range_is_read_from_the_kernel_and_defaults_when_unreadable(
        tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("40000\t50000\n")
    assert ephemeral_range(path) == (40000, 50000)
    path.write_text("garbage\n")
    assert ephemeral_range(path) == DEFAULT_EPHEMERAL
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL


def test_a_spare_port_is_below_the_ephemeral_range_free_and_never_given_twice(
        tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("40000 50000\n")
    ports = [spare_port(path=path) for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < 40000 for port in ports), ports
    for port in ports:  # each is bindable right now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_only_a_port_nobody_holds_is_handed_out(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ports, "_given", set())
    path = tmp_path / "range"
    path.write_text("1088 60999\n")  # room below the range: 1024..1087
    held = []
    try:
        for port in range(1024, 1088):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # someone else holds it already
                sock.close()
                continue
            held.append(sock)
        assert len(held) > 8
        free = held.pop(len(held) // 2)
        port = free.getsockname()[1]
        free.close()
        assert spare_port(path=path) == port
        # Every port of the room is held or given now: the kernel chooses.
        assert spare_port(path=path) >= 1088
    finally:
        for sock in held:
            sock.close()


def test_no_room_below_the_range_falls_back_to_a_port_the_kernel_chooses(
        tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("1030 60999\n")
    port = spare_port(path=path)
    assert port >= 1030
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_side_by_side_processes_pick_from_slices_of_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "range"
    path.write_text("40000 50000\n")  # the room: 23616..39999, 16384 ports
    for k, (first, end) in enumerate(((23616, 27712), (27712, 31808), (31808, 35904),
                                      (35904, 40000))):
        monkeypatch.setenv(SLICE_ENV, f"{k}/4")
        ports = [spare_port(path=path) for _ in range(20)]
        assert all(first <= port < end for port in ports), (k, ports)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        monkeypatch.setenv(SLICE_ENV, bad)
        with pytest.raises(ValueError, match=SLICE_ENV):
            spare_port(path=path)
