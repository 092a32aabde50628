"""The chained audit log (D10): verify passes on an intact log and
names the first bad line for each kind of tampering; the writer continues a
chain across restarts and fails closed; the documented example stays true."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.audit import _chain as ac
from gateway.audit._sink import AuditWriteFailed

REPO = Path(__file__).resolve().parents[2]
T0 = 1767225600.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample_event(i: int) -> dict[str, Any]:
    if i % 5 == 4:
        return {"event": "admin", "incident": f"inc-{i:04d}", "actor": "alice",
                "action": "revoke", "target": f"engie/cert {i:x}", "reason": "leaver"}
    return {"event": "request", "incident": f"inc-{i:04d}", "tenant": "ores",
            "principal": "app-1", "method": "GET", "route": "clearing-ap",
            "upstream": "clearing", "decision": "allow" if i % 3 else "deny",
            "reason": None if i % 3 else "not-owner", "status": 200 if i % 3 else 403,
            "resources": ["541448860012075359"], "bytes_in": 0, "bytes_out": 120 + i}


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey,
          kid: str) -> list[bytes]:
    """47 events, a checkpoint after every 10 and one on close: 52 lines.
    Checkpoints are lines 11, 22, 33, 44 and 52."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    clock = Clock()
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=10, clock=clock)
    for i in range(47):
        clock.now += 0.5
        log.record(sample_event(i))
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "copy.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def fields_of(line: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(line)
    return out


def reseal(lines: list[bytes], start: int) -> list[bytes]:
    """What an intruder can do without the key: recompute every hash from
    line ``start`` (1-based) on."""
    out = list(lines)
    prev = fields_of(out[start - 2])["hash"] if start > 1 else ac.GENESIS
    for i in range(start - 1, len(out)):
        fields = fields_of(out[i])
        del fields["hash"]
        fields["prev"] = prev
        body = ac.canonical(fields)
        prev = ac.line_hash(prev, body)
        out[i] = ac.seal(body, prev)
    return out


def resign(lines: list[bytes], n: int, signer: Ed25519PrivateKey, kid: str) -> list[bytes]:
    out = list(lines)
    fields = fields_of(out[n - 1])
    assert fields["type"] == "checkpoint"
    sig = signer.sign(ac.checkpoint_message(n, fields["prev"], kid))
    fields.update(kid=kid, sig=base64.urlsafe_b64encode(sig).rstrip(b"=").decode())
    out[n - 1] = json.dumps(fields).encode() + b"\n"
    return reseal(out, n)


def assert_bad(result: ac.VerifyResult, line: int, words: str) -> None:
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (line, line), result.problem
    assert result.problem.startswith(f"line {line} (seq {line}): ")
    assert words in result.problem, result.problem


# -- intact ---------------------------------------------------------------------
def test_intact_log_verifies(tmp_path: Path, lines: list[bytes], key: Ed25519PrivateKey,
                             kid: str, keys: dict[str, Any]) -> None:
    assert len(lines) == 52
    assert [fields_of(x)["seq"] for x in lines] == list(range(1, 53))
    assert [n for n, x in enumerate(lines, 1) if b'"type":"checkpoint"' in x] == \
        [11, 22, 33, 44, 52]
    path = write(tmp_path, lines)
    for trusted in (keys, {kid: key.public_key()}):
        result = ac.verify(path, trusted)
        assert (result.ok, result.events, result.checkpoints, result.first_bad_line,
                result.problem, result.uncovered, result.warning) == (
                    True, 47, 5, None, "", 0, "")
        assert (result.first_seq, result.last_seq, result.last_checkpoint_seq) == (1, 52, 52)
        assert result.last_hash == fields_of(lines[-1])["hash"]


def test_lines_hold_no_unexpected_members(lines: list[bytes]) -> None:
    first = fields_of(lines[0])
    assert set(first) == {*sample_event(0), "seq", "ts", "prev", "hash"}
    assert first["prev"] == ac.GENESIS
    assert all(x.endswith(b'"}\n') and b'"hash":"' in x[-76:] for x in lines)


# -- tampering -------------------------------------------------------------------
def test_a_byte_edited_in_a_value(tmp_path: Path, lines: list[bytes],
                                  keys: dict[str, Any]) -> None:
    n = 18
    assert b'"status":200' in lines[n - 1]
    edited = list(lines)
    edited[n - 1] = lines[n - 1].replace(b'"status":200', b'"status":201')
    assert_bad(ac.verify(write(tmp_path, edited), keys), n, "hash mismatch: content edited")


def test_an_edited_hash_field(tmp_path: Path, lines: list[bytes],
                              keys: dict[str, Any]) -> None:
    edited = list(lines)
    h = fields_of(lines[5])["hash"]
    edited[5] = lines[5].replace(h.encode(), (("1" if h[0] == "0" else "0") + h[1:]).encode())
    assert_bad(ac.verify(write(tmp_path, edited), keys), 6, "hash mismatch")


def test_an_event_line_deleted(tmp_path: Path, lines: list[bytes],
                               keys: dict[str, Any]) -> None:
    cut = lines[:22] + lines[23:]  # line 23, seq 23
    result = ac.verify(write(tmp_path, cut), keys)
    assert_bad(result, 23, "seq 24 where 23 expected: 1 line(s) deleted")
    assert (result.events, result.checkpoints) == (20, 2)


def test_a_checkpoint_line_deleted(tmp_path: Path, lines: list[bytes],
                                   keys: dict[str, Any]) -> None:
    cut = lines[:32] + lines[33:]
    assert_bad(ac.verify(write(tmp_path, cut), keys), 33, "deleted")


def test_a_well_formed_fake_event_inserted(tmp_path: Path, lines: list[bytes],
                                           keys: dict[str, Any]) -> None:
    n = 30  # the fake becomes line 30 with seq 30 and a correct hash of its own
    fake: dict[str, Any] = {**sample_event(1), "incident": "inc-fake", "seq": n,
                            "ts": T0 + 14.9, "prev": fields_of(lines[n - 2])["hash"]}
    body = ac.canonical(fake)
    forged = [*lines[:n - 1], ac.seal(body, ac.line_hash(fake["prev"], body)), *lines[n - 1:]]
    result = ac.verify(write(tmp_path, forged), keys)
    assert_bad(result, n, "inserted line")
    assert (result.events, result.checkpoints) == (27, 2)


def test_a_copied_line_inserted(tmp_path: Path, lines: list[bytes],
                                keys: dict[str, Any]) -> None:
    forged = [*lines[:29], lines[4], *lines[29:]]
    assert_bad(ac.verify(write(tmp_path, forged), keys), 30,
               "inserted line: line 31 continues the chain from line 29")
    replayed = [*lines[:30], lines[29], *lines[30:]]
    assert_bad(ac.verify(write(tmp_path, replayed), keys), 31, "duplicate of line 30")


def test_two_event_lines_swapped(tmp_path: Path, lines: list[bytes],
                                 keys: dict[str, Any]) -> None:
    swapped = list(lines)
    swapped[12], swapped[13] = lines[13], lines[12]
    assert_bad(ac.verify(write(tmp_path, swapped), keys), 13, "lines 13 and 14 swapped")


def test_a_forged_checkpoint_signature(tmp_path: Path, lines: list[bytes],
                                       keys: dict[str, Any]) -> None:
    n = 22
    sig = fields_of(lines[n - 1])["sig"]
    bad_sig = ("A" if sig[5] != "A" else "B").join([sig[:5], sig[6:]])
    forged = list(lines)
    forged[n - 1] = lines[n - 1].replace(sig.encode(), bad_sig.encode())
    # As is, the line's own hash no longer matches ...
    assert_bad(ac.verify(write(tmp_path, forged), keys), n, "hash mismatch")
    # ... and with every hash recomputed, the signature is what fails.
    assert_bad(ac.verify(write(tmp_path, reseal(forged, n)), keys), n,
               "checkpoint signature does not verify")


def test_a_checkpoint_signed_by_another_key_under_the_same_kid(
        tmp_path: Path, lines: list[bytes], kid: str, keys: dict[str, Any]) -> None:
    forged = resign(lines, 33, Ed25519PrivateKey.generate(), kid)
    result = ac.verify(write(tmp_path, forged), keys)
    assert_bad(result, 33, "signature does not verify")
    assert "lines 23-32 are not authenticated" in result.problem


def test_a_checkpoint_with_an_unknown_kid(tmp_path: Path, lines: list[bytes],
                                          keys: dict[str, Any]) -> None:
    other = Ed25519PrivateKey.generate()
    forged = resign(lines, 11, other, ac.audit_kid(other.public_key()))
    assert_bad(ac.verify(write(tmp_path, forged), keys), 11, "unknown kid")


def test_file_cut_in_the_middle_of_a_line(tmp_path: Path, lines: list[bytes],
                                          keys: dict[str, Any]) -> None:
    cut = [*lines[:39], lines[39][:50]]
    assert_bad(ac.verify(write(tmp_path, cut), keys), 40, "truncated line")


def test_an_edit_with_hashes_recomputed_is_caught_at_the_next_checkpoint(
        tmp_path: Path, lines: list[bytes], keys: dict[str, Any]) -> None:
    edited = list(lines)
    edited[39] = lines[39].replace(b'"tenant":"ores"', b'"tenant":"iveg"')
    result = ac.verify(write(tmp_path, reseal(edited, 40)), keys)
    assert_bad(result, 44, "lines 34-43 are not authenticated")


def test_the_tail_after_the_last_checkpoint_is_reported(
        tmp_path: Path, lines: list[bytes], keys: dict[str, Any]) -> None:
    result = ac.verify(write(tmp_path, lines[:40]), keys)  # documented limit: still ok
    assert result.ok and result.uncovered == 7 and result.checkpoints == 3
    assert "7 line(s) after the last checkpoint (line 33)" in result.warning
    empty = ac.verify(write(tmp_path, []), keys)
    assert empty.ok and empty.events == 0 and "empty" in empty.warning


# -- writer ------------------------------------------------------------------------
def test_reopening_continues_the_chain(tmp_path: Path, key: Ed25519PrivateKey, kid: str,
                                       keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    for run in range(3):
        log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=4, clock=clock)
        for i in range(6):
            log.record(sample_event(run * 10 + i))
        head = log.head
        log.close()
        assert fields_of(path.read_bytes().splitlines()[-1])["prev"] == head
    result = ac.verify(path, keys)
    assert (result.ok, result.events, result.checkpoints) == (True, 18, 6)
    assert fields_of(path.read_bytes().splitlines()[-1])["seq"] == 24


def test_reopening_after_a_crash_cuts_the_partial_line(
        tmp_path: Path, lines: list[bytes], key: Ed25519PrivateKey, kid: str,
        keys: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, [*lines[:30], lines[30][:40]])
    caplog.set_level(logging.WARNING, "gateway.audit")
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=10, clock=Clock())
    assert log.head == fields_of(lines[29])["hash"]
    assert "removed a partial last line (40 bytes)" in caplog.text
    log.record(sample_event(99))
    log.close()
    result = ac.verify(path, keys)
    assert (result.ok, result.events, result.checkpoints, result.uncovered) == \
        (True, 29, 3, 0)


def test_an_unwritable_file_fails_closed(tmp_path: Path, key: Ed25519PrivateKey, kid: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    # Linux always has /dev/full (every write: ENOSPC); no skipping this check.
    assert Path("/dev/full").exists()
    caplog.set_level(logging.DEBUG)
    log = ac.ChainedAuditLog(Path("/dev/full"), key, kid, clock=Clock())
    secret = {"event": "request", "tenant": "ores", "principal": "TOPSECRET-7"}
    for attempt in (1, 2):
        with pytest.raises(AuditWriteFailed, match="No space left") as info:
            log.record(dict(secret))
        assert log.failures == attempt
        assert "TOPSECRET" not in str(info.value)
    with pytest.raises(AuditWriteFailed):
        log.checkpoint()
    assert log.failures == 3 and "TOPSECRET" not in caplog.text
    log.close()  # nothing was written, so nothing to close over


def test_a_closed_log_refuses_writes(tmp_path: Path, key: Ed25519PrivateKey,
                                     kid: str) -> None:
    log = ac.ChainedAuditLog(tmp_path / "a.jsonl", key, kid, clock=Clock())
    log.close()
    with pytest.raises(AuditWriteFailed, match="closed"):
        log.record({"event": "request"})
    assert log.failures == 1


def test_a_half_written_line_is_removed(tmp_path: Path, key: Ed25519PrivateKey, kid: str,
                                        keys: dict[str, Any],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        if b"boom" in data:
            real_write(fd, data[:len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    path = tmp_path / "a.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, clock=Clock())
    log.record(sample_event(0))
    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(AuditWriteFailed):
        log.record({"event": "boom"})
    monkeypatch.undo()
    log.record(sample_event(1))
    log.close()
    assert log.failures == 1
    assert ac.verify(path, keys).ok and ac.verify(path, keys).events == 2


def test_a_fragment_that_cannot_be_removed_stops_all_writes(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        real_write(fd, data[:10])
        raise OSError(5, "Input/output error")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(30, "Read-only file system")

    log = ac.ChainedAuditLog(tmp_path / "a.jsonl", key, kid, clock=Clock())
    monkeypatch.setattr(os, "write", half_write)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(AuditWriteFailed, match="Input/output"):
        log.record(sample_event(0))
    monkeypatch.undo()
    with pytest.raises(AuditWriteFailed, match="unusable"):
        log.record(sample_event(1))
    log.close()  # no checkpoint over a fragment
    assert log.failures == 2


def test_a_file_that_is_not_a_chain_is_not_continued(tmp_path: Path, key: Ed25519PrivateKey,
                                                     kid: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"event":"request","status":200}\n')
    with pytest.raises(AuditWriteFailed, match="not an audit chain line"):
        ac.ChainedAuditLog(path, key, kid)


@pytest.mark.parametrize("event", [{"event": "x", "seq": 3}, {"event": "x", "hash": "0"},
                                   {"event": "x", "type": "checkpoint"},
                                   {"event": "x", "n": float("nan")},
                                   {"event": "x", "n": object()}, {"event": "\ud800"}])
def test_events_it_cannot_write_faithfully_are_refused(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, event: dict[str, Any]) -> None:
    path = tmp_path / "a.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, clock=Clock())
    with pytest.raises(AuditWriteFailed):
        log.record(event)
    log.close()
    assert log.failures == 1 and path.read_bytes() == b""


def test_checkpoints_follow_time_as_well_as_count(tmp_path: Path, key: Ed25519PrivateKey,
                                                  kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "a.jsonl", Clock()
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_interval_s=60, clock=clock)
    log.record(sample_event(0))
    clock.now += 61
    log.record(sample_event(1))
    assert ac.verify(path, keys).uncovered == 0
    log.record(sample_event(2))
    log.checkpoint()
    log.close()
    kinds = [fields_of(x).get("type") for x in path.read_bytes().splitlines()]
    assert kinds == [None, None, "checkpoint", None, "checkpoint"]


def test_concurrent_writers_keep_one_chain(tmp_path: Path, key: Ed25519PrivateKey,
                                           kid: str, keys: dict[str, Any]) -> None:
    path = tmp_path / "a.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=25)

    def writer(t: int) -> None:
        for i in range(50):
            log.record(sample_event(t * 100 + i))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = ac.verify(path, keys)
    assert (result.ok, result.events, result.checkpoints) == (True, 400, 16)


# -- keys ---------------------------------------------------------------------------
def test_audit_key_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    key, kid = ac.load_or_create_audit_key(tmp_path / "keys")
    path = tmp_path / "keys" / ac.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = key.public_key().public_bytes_raw()
    assert kid == "audit-" + hashlib.sha256(raw).hexdigest()[:16]
    again, kid2 = ac.load_or_create_audit_key(tmp_path / "keys")
    assert kid2 == kid and again.public_key().public_bytes_raw() == raw
    assert [p.name for p in (tmp_path / "keys").iterdir()] == [ac.KEY_FILE]
    doc = ac.public_key_document(key, kid)
    assert doc["keys"][0]["kid"] == kid and doc["keys"][0]["crv"] == "Ed25519"
    path.chmod(0o644)
    with pytest.raises(ValueError, match="0644"):
        ac.load_or_create_audit_key(tmp_path / "keys")


def test_the_module_does_not_import_aiohttp() -> None:
    code = ("import sys, gateway.audit._chain\n"
            "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] == 'aiohttp'] else 0)\n")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


# -- the documented example ---------------------------------------------------------------
RFC8032_TEST1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"


def test_the_worked_example_in_the_docs_is_true(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "audit-format.md").read_text(encoding="utf-8")
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_TEST1))
    kid = ac.audit_kid(key.public_key())
    path, clock = tmp_path / "example.jsonl", Clock(1767225600.25)
    log = ac.ChainedAuditLog(path, key, kid, clock=clock)
    log.record({"event": "request", "incident": "inc-0001", "tenant": "ores",
                "method": "GET", "route": "clearing-ap", "decision": "allow",
                "status": 200, "resources": ["541448860012075359"]})
    clock.now = 1767225601.5
    log.record({"event": "admin", "incident": "inc-0002", "actor": "alice",
                "action": "revoke", "target": "engie/cert 1f", "reason": "départ",
                "ts": 1767225601})
    clock.now = 1767225602.0
    log.close()
    written = path.read_text(encoding="utf-8")
    block = re.search(r"```\n(\{.*?\n)```", doc, re.S)
    assert block is not None and block.group(1) == written
    assert json.dumps(ac.public_key_document(key, kid)) in doc
    assert key.public_key().public_bytes_raw().hex() in doc and f"`{kid}`" in doc
    for line in written.splitlines():
        body = line[:-75] + "}"
        assert f"    {body}\n" in doc
        assert f"`{fields_of(line.encode())['hash']}`" in doc
    cp = fields_of(written.splitlines()[2].encode())
    message = ac.checkpoint_message(3, cp["prev"], kid)
    assert len(message) == 119 and "\n    ".join(message.decode().split("\n")) in doc
    assert f"`{cp['sig']}`" in doc
    independent_verify(written.encode(), doc)


def independent_verify(data: bytes, doc: str) -> None:
    """A verifier written from the doc alone (no gateway code): sections 1-6."""
    x = re.search(r'"x": "([A-Za-z0-9_-]{43})"', doc)
    assert x is not None
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x.group(1) + "="))
    prev = "0" * 64
    for n, line in enumerate(data.split(b"\n")[:-1], start=1):
        assert re.fullmatch(rb'.*,"hash":"[0-9a-f]{64}"\}', line)
        body = line[:-75] + b"}"
        fields = json.loads(body)
        assert fields["seq"] == n and fields["prev"] == prev
        prev = hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()
        assert line[-66:-2].decode() == prev
        if fields.get("type") == "checkpoint":
            message = "\n".join(["gateway-audit-checkpoint/v1", str(n), str(n - 1),
                                 fields["prev"], fields["kid"]]).encode()
            public.verify(base64.urlsafe_b64decode(fields["sig"] + "=="), message)
