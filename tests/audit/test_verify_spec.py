"""What docs/audit-format.md says a verifier refuses, and audit key rotation
(D10, §2, §6, §8): each tampered copy below is refused by the reference
verifier, the keys published after a rotation verify the whole log, and a
verifier never writes a key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac
from gateway.audit._format import KEY_FILE, segment_files
from gateway.audit._keys import RETIRED_FILE, AuditKeys, published_keys
from gateway.audit._prune import AuditPruner
from gateway.audit._sink import AuditWriteFailed
from tests.audit.test_chain import Clock, fields_of, reseal, sample_event, write
from tests.audit.test_prune import DAY, T0, daily_log, event


@pytest.fixture()
def lines(tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> list[bytes]:
    """20 events, checkpoints at lines 6, 12, 18 and 24 (on close: 24 lines)."""
    path = tmp_path / "made.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=5, clock=Clock())
    for i in range(20):
        log.record(sample_event(i))
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def refused(tmp_path: Path, forged: list[bytes], keys: dict[str, Any], line: int,
            words: str) -> None:
    result = ac.verify(write(tmp_path, forged), keys)
    assert not result.ok, "the verifier accepted a forged copy"
    assert result.first_bad_line == line, result.problem
    assert words in result.problem, result.problem


def with_member(line: bytes, raw_member: bytes) -> bytes:
    """The line with one more member spelt as given, its hash recomputed (what
    anyone can do without the key, for a line after the last checkpoint)."""
    body = line[:line.rindex(b',"hash"')] + b"," + raw_member + b"}"
    prev = fields_of(line)["prev"]
    return ac.seal(body, ac.line_hash(prev, body))


# -- §2/§3: what a line may be ------------------------------------------------------
@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path: Path, lines: list[bytes],
                                       keys: dict[str, Any], constant: bytes) -> None:
    forged = [*lines[:-1], with_member(lines[-2], b'"zz":' + constant)]
    forged = [*lines[:-2], forged[-1]]
    refused(tmp_path, forged, keys, len(lines) - 1, "malformed line")


def test_a_duplicate_key_is_refused(tmp_path: Path, lines: list[bytes],
                                    keys: dict[str, Any]) -> None:
    """§3: one object, no duplicate keys (a lenient parser would keep one of
    the two values, and two verifiers could read two different events)."""
    event = fields_of(lines[-2])["event"]
    other = b'"event":"' + (b"admin" if event == "request" else b"request") + b'"'
    forged = [*lines[:-2], with_member(lines[-2], other)]
    refused(tmp_path, forged, keys, len(lines) - 1, "malformed line")


def test_a_line_must_start_with_a_brace(tmp_path: Path, lines: list[bytes],
                                        keys: dict[str, Any]) -> None:
    forged = [*lines[:3], b" " + lines[3], *lines[4:]]
    refused(tmp_path, forged, keys, 4, "malformed line")


@pytest.mark.parametrize("respell", ["padded", "standard", "trailing-bits"])
def test_a_signature_has_exactly_one_spelling(tmp_path: Path, lines: list[bytes],
                                              keys: dict[str, Any], respell: str) -> None:
    n = 12
    fields = fields_of(lines[n - 1])
    assert fields["type"] == "checkpoint"
    raw = base64.urlsafe_b64decode(fields["sig"] + "==")
    if respell == "padded":
        sig = base64.urlsafe_b64encode(raw).decode()  # ends in "=="
    elif respell == "standard":
        # find a signature spelling that differs between the two alphabets
        sig = base64.b64encode(raw).decode().rstrip("=")
        if sig == fields["sig"]:
            sig = sig[:-2] + "+" + sig[-1]
    else:  # the last character carries 4 bits the 64 bytes do not use
        last = fields["sig"][-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        sig = fields["sig"][:-1] + alphabet[alphabet.index(last) | 1]
        assert base64.urlsafe_b64decode(sig + "==") == raw  # the same bytes
    assert sig != fields["sig"]
    fields["sig"] = sig
    del fields["hash"]
    body = ac.canonical(fields)
    forged = [*lines[:n - 1], ac.seal(body, ac.line_hash(fields["prev"], body)), *lines[n:]]
    refused(tmp_path, reseal(forged, n), keys, n, "malformed checkpoint")


@pytest.mark.parametrize("kind", ["event", "note", "Checkpoint"])
def test_an_unknown_type_is_refused_not_skipped(tmp_path: Path, lines: list[bytes],
                                                keys: dict[str, Any], kind: str) -> None:
    n = 8
    fields = fields_of(lines[n - 1])
    del fields["hash"]
    fields["type"] = kind
    body = ac.canonical(fields)
    forged = [*lines[:n - 1], ac.seal(body, ac.line_hash(fields["prev"], body)), *lines[n:]]
    refused(tmp_path, reseal(forged, n), keys, n, "unknown line type")


def test_a_key_document_must_file_each_key_under_its_own_kid(
        tmp_path: Path, lines: list[bytes], key: Ed25519PrivateKey, kid: str) -> None:
    other = Ed25519PrivateKey.generate()
    doc = ac.public_key_document(other, kid)  # another key under the log's kid
    with pytest.raises(ValueError, match="does not match its key"):
        ac.verify(write(tmp_path, lines), doc)
    with pytest.raises(ValueError, match="does not match its key"):
        ac.verify(write(tmp_path, lines), {kid: other.public_key()})


def forged_line(fields: dict[str, Any]) -> bytes:
    body = ac.canonical(fields)
    return ac.seal(body, ac.line_hash(fields["prev"], body))


def test_a_line_inserted_before_the_last_checkpoint_is_blamed(
        tmp_path: Path, lines: list[bytes], keys: dict[str, Any]) -> None:
    """§8 step 4: the fake takes the place of seq 24 from line 23, the signed
    checkpoint that really is seq 24 follows: the signature proves the
    checkpoint, so the fake (line 24) is blamed, not the checkpoint."""
    n = len(lines)
    assert fields_of(lines[-1])["type"] == "checkpoint"
    fake = forged_line({**sample_event(2), "seq": n, "ts": 1.0,
                        "prev": fields_of(lines[-2])["hash"]})
    refused(tmp_path, [*lines[:-1], fake, lines[-1]], keys, n, "inserted line")


def test_a_line_appended_in_the_place_of_the_last_is_blamed(
        tmp_path: Path, lines: list[bytes], keys: dict[str, Any]) -> None:
    """§8 step 4: nothing after the two claimants decides, so the later one
    (the appended fake) is blamed, not the genuine last line."""
    tail = lines[:-1]  # ends with an event (seq 23), as a running log does
    fake = forged_line({**sample_event(2), "seq": len(tail), "ts": 1.0,
                        "prev": fields_of(tail[-2])["hash"]})
    refused(tmp_path, [*tail, fake], keys, len(tail) + 1, "inserted line")


def test_an_inserted_line_claiming_its_neighbours_seq_is_blamed(
        tmp_path: Path, lines: list[bytes], keys: dict[str, Any]) -> None:
    """A fake with seq 9 from line 8, placed after the genuine line 9: the
    genuine line 10 continues from line 9, so the fake (line 10) is blamed."""
    fake: dict[str, Any] = {**sample_event(3), "incident": "inc-fake", "seq": 9,
                            "ts": 1.0, "prev": fields_of(lines[7])["hash"]}
    body = ac.canonical(fake)
    forged = [*lines[:9], ac.seal(body, ac.line_hash(fake["prev"], body)), *lines[9:]]
    refused(tmp_path, forged, keys, 10, "inserted line")


# -- §6: rotation of the audit key ------------------------------------------------------
def test_verification_across_a_key_rotation_needs_only_the_published_keys(
        tmp_path: Path) -> None:
    keydir = tmp_path / "audit-key"
    keys = AuditKeys(keydir)
    first = keys.kid
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, keys.key, keys.kid, checkpoint_every=4, clock=Clock())
    for i in range(6):
        log.record(event(i))
    log.rotate_key(*keys.rotate())
    assert keys.kid != first and log.kid == keys.kid
    for i in range(6, 10):
        log.record(event(i))
    log.close()
    kids = [json.loads(x).get("kid") for x in path.read_bytes().splitlines()]
    assert first in kids and keys.kid in kids  # both keys signed checkpoints
    # The line before the switch is closed by the old key.
    cps = [json.loads(x) for x in path.read_bytes().splitlines()
           if json.loads(x).get("type") == "checkpoint"]
    assert [c["kid"] for c in cps] == [first, first, keys.kid]

    published = keys.document()
    assert [k["kid"] for k in published["keys"]] == [keys.kid, first]
    assert ac.verify(path, published).ok
    assert published_keys(keydir) == json.loads(json.dumps(published))  # from disk alike
    only_new = {"keys": [published["keys"][0]]}
    result = ac.verify(path, only_new)
    assert not result.ok and "unknown kid" in result.problem
    # A restart reads the same keys: the current one and the retired list.
    again = AuditKeys(keydir)
    assert again.kid == keys.kid and again.document() == published
    assert (keydir / RETIRED_FILE).stat().st_mode & 0o077 == 0


def test_segments_signed_by_a_retired_key_are_still_pruned(tmp_path: Path) -> None:
    keydir = tmp_path / "audit-key"
    keys = AuditKeys(keydir)
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, keys.key, keys.kid, clock, days=3)
    log.rotate_key(*keys.rotate())
    for day in range(3, 6):
        for i in range(6):
            clock.now = T0 + day * DAY + (i + 1) * DAY / 7
            log.record(event(day * 100 + i))
    rolled = clock.now
    pruner = AuditPruner(log, raw_retention_days=1, rolled_up_through=lambda: rolled,
                         public_keys=keys.document, clock=clock)
    outcome = pruner.prune()
    assert outcome.segments, "segments signed by the retired key were kept forever"
    log.close()
    assert segment_files(log.segments)
    result = ac.verify_log(path, keys.document())
    assert result.ok and result.first_seq > 1, result.problem


# -- §6, §8 step 6: the key handover ----------------------------------------------------
class Handover:
    """A log of 15 lines: checkpoints at seq 4 (old key), the key-change
    record at seq 6, checkpoints at 7 (old key, covers the record), 11 and 15
    (new key). ``segment_max_bytes=1`` seals a segment at every checkpoint."""

    def __init__(self, tmp_path: Path, segment_max_bytes: int | None = None) -> None:
        self.old, self.new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.old_kid = ac.audit_kid(self.old.public_key())
        self.new_kid = ac.audit_kid(self.new.public_key())
        self.path = tmp_path / "audit.jsonl"
        log = ac.ChainedAuditLog(self.path, self.old, self.old_kid, checkpoint_every=3,
                                 segment_max_bytes=segment_max_bytes, clock=Clock())
        for i in range(4):
            log.record(event(i))
        log.rotate_key(self.new, self.new_kid)
        for i in range(4, 10):
            log.record(event(i))
        log.close()
        self.keys = {"keys": [*ac.public_key_document(self.new, self.new_kid)["keys"],
                              *ac.public_key_document(self.old, self.old_kid)["keys"]]}


def signed_again(line: bytes, signer: Ed25519PrivateKey) -> bytes:
    """A checkpoint line signed by ``signer`` instead (a leaked key), rehashed."""
    fields = fields_of(line)
    del fields["hash"]
    kid = ac.audit_kid(signer.public_key())
    sig = signer.sign(ac.checkpoint_message(fields["seq"], fields["prev"], kid))
    fields.update(kid=kid, sig=ac.b64url(sig))
    return forged_line(fields)


def test_the_writer_records_the_handover_under_the_old_key(tmp_path: Path) -> None:
    log = Handover(tmp_path)
    rows = [fields_of(x) for x in log.path.read_bytes().splitlines()]
    assert [(r["seq"], r.get("kid")) for r in rows if r.get("type") == "checkpoint"] == [
        (4, log.old_kid), (7, log.old_kid), (11, log.new_kid), (15, log.new_kid)]
    record = rows[5]
    assert (record["event"], record["old_kid"], record["new_kid"]) == (
        "audit-key-change", log.old_kid, log.new_kid)
    assert ac.verify(log.path, log.keys).ok


def test_a_retired_key_cannot_sign_after_the_handover(tmp_path: Path) -> None:
    """§8 step 6: the old key, even leaked, signs no checkpoint after the one
    that covers the key-change record, though its signature is valid."""
    log = Handover(tmp_path)
    lines = log.path.read_bytes().splitlines(keepends=True)
    forged = reseal([*lines[:10], signed_again(lines[10], log.old), *lines[11:]], 11)
    refused(tmp_path, forged, log.keys, 11, "a retired key signs no more")


def test_the_covering_checkpoint_is_the_old_or_the_new_key(tmp_path: Path) -> None:
    log = Handover(tmp_path)
    lines = log.path.read_bytes().splitlines(keepends=True)
    third = Ed25519PrivateKey.generate()
    keys = {"keys": [*log.keys["keys"],
                     *ac.public_key_document(third, ac.audit_kid(third.public_key()))["keys"]]}
    forged = reseal([*lines[:6], signed_again(lines[6], third), *lines[7:]], 7)
    refused(tmp_path, forged, keys, 7, "right after the key change")
    # After a crash between the record and its checkpoint, the restarted
    # gateway signs the covering checkpoint with the new key: that is valid.
    crashed = write(tmp_path, lines[:6])
    reopened = ac.ChainedAuditLog(crashed, log.new, log.new_kid, clock=Clock())
    reopened.record(event(99))
    reopened.close()
    assert ac.verify(crashed, log.keys).ok


def test_a_failed_handover_checkpoint_still_switches_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the record is written the old key is done (§6): if its checkpoint
    cannot be written, the next checkpoint, under the new key, covers the
    record, and the log still verifies."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old_kid, new_kid = ac.audit_kid(old.public_key()), ac.audit_kid(new.public_key())
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, old, old_kid, clock=Clock())
    log.record(event(0))
    real_write = os.write

    def no_checkpoint(fd: int, data: bytes) -> int:
        if b'"type":"checkpoint"' in data:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", no_checkpoint)
    with pytest.raises(AuditWriteFailed):
        log.rotate_key(new, new_kid)
    monkeypatch.undo()
    assert log.kid == new_kid
    for i in range(1, 3):
        log.record(event(i))
        log.checkpoint()
    log.close()
    keys = {"keys": [*ac.public_key_document(new, new_kid)["keys"],
                     *ac.public_key_document(old, old_kid)["keys"]]}
    result = ac.verify(path, keys)
    assert result.ok and result.checkpoints == 2, result.problem


def test_a_malformed_key_change_record_is_refused(tmp_path: Path) -> None:
    log = Handover(tmp_path)
    lines = log.path.read_bytes().splitlines(keepends=True)
    fields = fields_of(lines[5])
    del fields["hash"]
    fields["new_kid"] = fields["old_kid"]
    forged = reseal([*lines[:5], forged_line(fields), *lines[6:]], 6)
    refused(tmp_path, forged, log.keys, 6, "malformed key-change record")


def test_the_handover_binds_across_segments(tmp_path: Path) -> None:
    """The record sits in one segment, the checkpoint a leaked old key signed
    in the next: ``verify_log`` carries the record over (§8 step 6, §10)."""
    log = Handover(tmp_path, segment_max_bytes=1)
    segment = log.path.with_name("audit.segments") / "000000000007-000000000011.jsonl"
    assert ac.verify_log(log.path, log.keys).ok
    lines = segment.read_bytes().splitlines(keepends=True)
    assert fields_of(lines[-1])["seq"] == 11
    segment.write_bytes(b"".join([*lines[:-1], signed_again(lines[-1], log.old)]))
    result = ac.verify_log(log.path, log.keys)
    assert not result.ok and result.file == str(segment), result.problem
    assert "a retired key signs no more" in result.problem


# -- the CLI verifier only reads -----------------------------------------------------
def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_verify_never_creates_a_key(tmp_path: Path, lines: list[bytes]) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    log = write(tmp_path, lines)
    proc = run_verify("--log", str(log), "--key-dir", str(empty))
    assert proc.returncode == 2, proc.stdout
    assert "holds no audit key" in proc.stderr and "Traceback" not in proc.stderr
    assert list(empty.iterdir()) == []  # nothing written
    missing = tmp_path / "nowhere"
    proc = run_verify("--log", str(log), "--key-dir", str(missing))
    assert proc.returncode == 2 and not missing.exists()


def test_verify_refuses_a_segments_directory_as_keys_and_a_directory_as_log(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=2, segment_max_bytes=500,
                             clock=Clock())
    for i in range(20):
        log.record(event(i))
    log.close()
    inside = path.with_name("audit.segments")
    assert segment_files(inside)
    proc = run_verify("--log", str(path), "--key-dir", str(inside))
    assert proc.returncode == 2 and "segments directory" in proc.stderr
    assert "Traceback" not in proc.stderr and not (inside / KEY_FILE).exists()
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps(ac.public_key_document(key, kid)))
    proc = run_verify("--log", str(inside), "--keys", str(keyfile))
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    proc = run_verify("--log", str(path), "--keys", str(keyfile))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_names_an_unreadable_log_without_a_traceback(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=2, segment_max_bytes=500,
                             clock=Clock())
    for i in range(20):
        log.record(event(i))
    log.close()
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps(ac.public_key_document(key, kid)))
    sealed = segment_files(path.with_name("audit.segments"))
    # A sealed segment is not the log: the whole log is verified from audit.jsonl.
    proc = run_verify("--log", str(sealed[1]), "--keys", str(keyfile))
    assert proc.returncode == 2 and "is a sealed segment" in proc.stderr, proc.stderr
    # A segment that cannot be read (here: a directory under a segment's name).
    sealed[1].unlink()
    sealed[1].mkdir()
    proc = run_verify("--log", str(path), "--keys", str(keyfile))
    assert proc.returncode == 2 and "cannot read the audit log" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
