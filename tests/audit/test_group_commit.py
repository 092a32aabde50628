"""Audit group commit (D10): the data plane's events of one event-loop
iteration are chained in memory and written with one write(2); a request is
answered only once its line is in the file, and a group that cannot be
written is taken back out of the chain, every one of its requests refused.

Write syscalls are counted from the kernel's own tally (/proc/self/io,
``syscw``), not by wrapping ``os.write``."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import RequestEvent
from gateway.audit import _chain as ac
from gateway.audit._sink import AuditWriteFailed
from tests.audit.faults import fsync_fails, writes_refused


def event(i: int) -> RequestEvent:
    return RequestEvent(incident=f"inc-{i:04d}", tenant="ores", principal="api",
                        cert_serial="0A", cert_fingerprint=None, method="GET",
                        route="/hes/meters/{serial}", upstream="hes", decision="allow",
                        reason="ok", status=200, resources=(f"meter:{i}",), bytes_in=0,
                        bytes_out=10, classification=None)


def write_syscalls() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


def incidents(path: Path) -> list[str]:
    import json

    return [doc["incident"] for doc in map(json.loads, path.read_bytes().splitlines())
            if doc.get("event") == "request"]


def new_log(tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> ac.ChainedAuditLog:
    return ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, checkpoint_every=10_000)


async def test_one_iterations_events_are_one_write_and_wait_for_it(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    log = new_log(tmp_path, key, kid)
    before = write_syscalls()
    waiters = [log.record_soon(event(i)) for i in range(50)]
    # Chained, not written: no request may be answered yet.
    assert not any(w.done() for w in waiters)
    assert incidents(log.path) == []
    await asyncio.gather(*waiters)
    assert write_syscalls() - before == 1
    assert incidents(log.path) == [f"inc-{i:04d}" for i in range(50)]
    # Later iterations: a group each, the chain continued across them.
    for _ in range(3):
        await asyncio.gather(*(log.record_soon(event(100 + i)) for i in range(5)))
    log.close()
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok and result.events == 65, result


async def test_a_group_that_cannot_be_written_is_refused_and_leaves_no_trace(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    log = new_log(tmp_path, key, kid)
    await log.record_soon(event(0))
    head = log.head
    with writes_refused(log):
        waiters = [log.record_soon(event(i)) for i in (1, 2, 3)]
        results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, AuditWriteFailed) for r in results), results
    assert log.failures == 3
    # Rolled back: the chain goes on from the last line in the file.
    assert log.head == head
    await log.record_soon(event(4))
    log.record(event(5))
    log.close()
    assert incidents(log.path) == ["inc-0000", "inc-0004", "inc-0005"]
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok, result


async def test_a_direct_write_puts_the_pending_group_first(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    # The admin plane and the pruner write at once (record, checkpoint): the
    # lines chained before theirs must be in the file before theirs.
    log = new_log(tmp_path, key, kid)
    waiters = [log.record_soon(event(i)) for i in (0, 1)]
    log.record(event(2))
    assert incidents(log.path) == ["inc-0000", "inc-0001", "inc-0002"]
    await asyncio.gather(*waiters)  # and their requests are answered
    log.checkpoint()
    log.close()
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok and result.checkpoints >= 1, result


async def test_closing_writes_the_pending_group(tmp_path: Path, key: Ed25519PrivateKey,
                                                kid: str) -> None:
    log = new_log(tmp_path, key, kid)
    waiter = log.record_soon(event(7))
    log.close()
    await waiter
    assert incidents(log.path) == ["inc-0007"]
    with pytest.raises(AuditWriteFailed, match="closed"):
        log.record_soon(event(8))


async def test_a_checkpoint_falls_due_with_a_group(tmp_path: Path, key: Ed25519PrivateKey,
                                                   kid: str) -> None:
    log = ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, checkpoint_every=4)
    await asyncio.gather(*(log.record_soon(event(i)) for i in range(6)))
    lines = log.path.read_bytes().splitlines()
    assert b'"type":"checkpoint"' in lines[-1]  # signed over the whole group
    log.close()
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok and result.events == 6, result


def fsync_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "audit-fsync" and t.is_alive())


async def test_the_data_path_s_checkpoint_is_fsynced_off_the_event_loop(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    # The fsync of a checkpoint the requests' events fall due is the log's
    # thread's: the loop, and every connection on it, does not stop for it.
    before = fsync_threads()
    log = ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, checkpoint_every=4)
    await asyncio.gather(*(log.record_soon(event(i)) for i in range(6)))
    assert fsync_threads() == before + 1
    log._syncer.drain()
    assert log.durable_seq == 7  # six events, then the checkpoint that covers them
    # An explicit checkpoint is fsynced before it returns, and counts as on disk.
    log.record(event(6).as_record())
    log.checkpoint()
    assert log.durable_seq == 9
    # Closing waits for the thread's fsync and ends the thread.
    log.close()
    assert fsync_threads() == before
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok and result.events == 7 and result.checkpoints == 2, result


async def test_a_failed_fsync_in_the_log_s_thread_refuses_every_later_write(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    log = ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, checkpoint_every=4)
    with fsync_fails(log):
        # Written, so answered; the checkpoint's fsync fails after the answers.
        await asyncio.gather(*(log.record_soon(event(i)) for i in range(4)))
        log._syncer.drain()
    assert not log.writable  # the data plane refuses up front (503)
    assert log.durable_seq == 0
    failures = log.failures
    with pytest.raises(AuditWriteFailed, match="unusable"):
        log.record_soon(event(9))
    with pytest.raises(AuditWriteFailed, match="unusable"):
        log.record(event(10).as_record())
    assert log.failures == failures + 2
    log.close()
