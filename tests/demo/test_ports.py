"""Ports handed to a process that binds them later (gateway.demo._ports):
below the kernel's ephemeral range, so no outgoing connection takes one in
the meantime, and never the same one twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.demo import _ports, spare_port
from gateway.demo._ports import DEFAULT_EPHEMERAL, ephemeral_range


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
