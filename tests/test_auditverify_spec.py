"""What docs/audit-format.md says a verifier refuses, and audit key rotation
(D10, §2, §6, §8): each tampered copy below is refused by the reference
verifier, the keys published after a rotation verify the whole log, and a
verifier never writes a key."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import auditchain as ac
from gateway.auditformat import KEY_FILE, segment_files
from gateway.auditkeys import RETIRED_FILE, AuditKeys, published_keys
from gateway.auditprune import AuditPruner
from tests.test_auditchain import Clock, fields_of, reseal, sample_event, write
from tests.test_auditprune import DAY, T0, daily_log, event


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
