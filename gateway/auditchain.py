"""Tamper-evident audit log (issue 6 item 1, D10): a SHA-256 hash chain of
JSON lines, closed by Ed25519-signed checkpoints. ``docs/audit-format.md`` is
the specification; a verifier can be written from it alone.

Each line is the canonical JSON of its members followed by a last member
``"hash"`` = SHA-256(prev + "\\n" + canonical). Verifiers hash the stored bytes,
never a re-serialisation. Writing is part of the request: every failure
raises ``AuditWriteFailed`` (fail closed). Nothing here logs event contents.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.audit import AuditWriteFailed

__all__ = ["GENESIS", "AuditWriteFailed", "ChainedAuditLog", "VerifyResult",
           "load_or_create_audit_key", "public_key_document", "verify"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
ALG = "EdDSA"
CHECKPOINT = "checkpoint"
KEY_FILE = "audit-signing-key.pem"
SIGNING_CONTEXT = b"gateway-audit-checkpoint/v1"
RESERVED = frozenset({"seq", "prev", "hash", "type"})  # set by the log; refused in events
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SEALED = re.compile(rb'(\{.*),"hash":"([0-9a-f]{64})"\}', re.S)
_HEX64 = re.compile(r"[0-9a-f]{64}")


# -- the format (pure) ---------------------------------------------------------
def canonical(fields: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, raw UTF-8; NaN/Infinity refused (not JSON)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def line_hash(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + b"\n" + body).hexdigest()


def seal(body: bytes, digest: str) -> bytes:
    """The stored line: the body with ``"hash"`` appended as its last member."""
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'


def checkpoint_message(seq: int, prev: str, kid: str) -> bytes:
    """What a checkpoint signs: its own seq, the seq and hash of the line it
    closes over, and the kid (binding the signature to the key it names)."""
    return "\n".join([SIGNING_CONTEXT.decode(), str(seq), str(seq - 1), prev, kid]).encode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- keys ------------------------------------------------------------------------
def audit_kid(public: Ed25519PublicKey) -> str:
    return "audit-" + hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def load_or_create_audit_key(directory: Path) -> tuple[Ed25519PrivateKey, str]:
    """The checkpoint key in ``directory/audit-signing-key.pem`` (PKCS#8, 0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        tmp = directory / f".{KEY_FILE}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # SECURITY: never 0644
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if a concurrent start won: then use its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"{path}: audit signing key has mode {mode:04o}; "
                         "it must not be readable by group or others (chmod 600)")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: audit signing key is not Ed25519")
    return key, audit_kid(key.public_key())


def public_key_document(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    x = _b64url(key.public_key().public_bytes_raw())
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALG,
                      "use": "sig"}]}


def _public_keys(given: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    entries = given.get("keys")
    if not isinstance(entries, list):
        if not all(isinstance(k, Ed25519PublicKey) for k in given.values()):
            raise TypeError("public_keys: expected {kid: Ed25519PublicKey} or a JWKS document")
        return dict(given)
    return {str(jwk.get("kid")): Ed25519PublicKey.from_public_bytes(_unb64url(jwk["x"]))
            for jwk in entries
            if isinstance(jwk, dict) and (jwk.get("kty"), jwk.get("crv")) == ("OKP", "Ed25519")}


# -- writer --------------------------------------------------------------------
class ChainedAuditLog:
    """Append-only hash-chained JSON lines; an ``AuditSink``. Thread-safe."""

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, kid: str, *,
                 checkpoint_every: int = 1000, checkpoint_interval_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not _KID.fullmatch(kid):
            raise ValueError(f"audit kid {kid!r} must match {_KID.pattern}")
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_every must be >= 1 and checkpoint_interval_s > 0")
        self.path, self._key, self._kid = path, signing_key, kid
        self._every, self._interval_s, self._clock = checkpoint_every, checkpoint_interval_s, clock
        self._lock = threading.Lock()
        self._failures = self._since_checkpoint = 0
        self._broken = False  # a fragment could not be removed, or fsync failed
        self._last_checkpoint_at = clock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            self._fd: int | None = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditWriteFailed(f"cannot open audit log {path}: {exc.strerror}") from exc
        try:
            self._size, self._seq, self._head, last_type = _continue_chain(self._fd, path)
            if created:  # make the new directory entry durable too
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            os.close(self._fd)
            raise AuditWriteFailed(f"cannot open audit log {path}: {exc.strerror}") from exc
        except AuditWriteFailed:
            os.close(self._fd)
            raise
        self._uncovered = self._seq > 0 and last_type != CHECKPOINT
        if self._uncovered:
            log.warning("audit log %s did not end with a checkpoint (unclean stop?); "
                        "continuing its chain at seq %d", path, self._seq + 1)

    @property
    def head(self) -> str:
        return self._head

    @property
    def writable(self) -> bool:
        """False once the log is closed or broken: callers refuse up front."""
        return self._fd is not None and not self._broken

    @property
    def failures(self) -> int:
        return self._failures

    def record(self, event: dict[str, Any]) -> None:
        with self._counted():
            if clash := RESERVED.intersection(event):
                raise AuditWriteFailed(f"audit event uses reserved keys {sorted(clash)}")
            self._append({"ts": self._clock(), **event})
            self._since_checkpoint += 1
            if (self._since_checkpoint >= self._every
                    or self._clock() - self._last_checkpoint_at >= self._interval_s):
                self._checkpoint()

    def checkpoint(self) -> None:
        with self._counted():
            self._checkpoint()

    def close(self) -> None:
        with self._counted():
            if self._fd is None:
                return
            try:
                if self._uncovered and not self._broken:
                    self._checkpoint()
            finally:
                os.close(self._fd)
                self._fd = None

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except AuditWriteFailed:
                self._failures += 1  # SECURITY: the caller refuses the request
                raise

    # -- internals (the caller holds the lock) ----------------------------------
    def _checkpoint(self) -> None:
        now = self._clock()
        sig = self._key.sign(checkpoint_message(self._seq + 1, self._head, self._kid))
        self._append({"type": CHECKPOINT, "ts": now, "kid": self._kid, "alg": ALG,
                      "sig": _b64url(sig)})
        assert self._fd is not None  # _append checked it
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = True  # after a failed fsync the page cache cannot be trusted
            raise AuditWriteFailed(f"cannot fsync audit log {self.path}: {exc.strerror}") from exc
        self._since_checkpoint, self._last_checkpoint_at, self._uncovered = 0, now, False

    def _append(self, fields: dict[str, Any]) -> None:
        if self._fd is None or self._broken:
            raise AuditWriteFailed(f"audit log {self.path} is "
                                   + ("closed" if self._fd is None else "unusable; reopen it"))
        fields["seq"], fields["prev"] = self._seq + 1, self._head
        try:
            body = canonical(fields)
        except (TypeError, ValueError) as exc:  # no str(exc): it may quote content
            raise AuditWriteFailed(f"audit event not encodable ({type(exc).__name__})") from exc
        digest = line_hash(self._head, body)
        line, written = seal(body, digest), 0
        try:
            while written < len(line):  # write(2) per line: no user-space buffer to flush
                n = os.write(self._fd, line[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
        except OSError as exc:
            try:  # remove any fragment: the next line would be glued to it
                if os.fstat(self._fd).st_size > self._size:
                    os.ftruncate(self._fd, self._size)
            except OSError:
                self._broken = True
                log.error("audit log %s: cannot remove a partial line; refusing writes",
                          self.path)
            raise AuditWriteFailed(f"cannot write audit log {self.path}: "
                                   f"{exc.strerror or exc}") from exc
        self._size += written
        self._seq, self._head, self._uncovered = self._seq + 1, digest, True


def _continue_chain(fd: int, path: Path) -> tuple[int, int, str, str | None]:
    """(size, seq, hash, type) of the last complete line; cuts a partial tail."""
    st = os.fstat(fd)
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0  # e.g. /dev/full
    buf, pos = b"", size
    while pos > 0 and buf.count(b"\n") < 2:
        start = max(0, pos - 65536)
        buf, pos = os.pread(fd, pos - start, start) + buf, start
    end = buf.rfind(b"\n")
    if (good := pos + end + 1) < size:
        # A crash mid-write (or a cut file): the fragment would corrupt the next line.
        os.ftruncate(fd, good)
        log.warning("audit log %s: removed a partial last line (%d bytes) left by an "
                    "interrupted write", path, size - good)
    if end < 0:
        return 0, 0, GENESIS, None
    last = _parse(buf[buf.rfind(b"\n", 0, end) + 1:end])
    if isinstance(last, str):
        raise AuditWriteFailed(f"{path}: last line is not an audit chain line ({last}); "
                               "move the file aside to start a new chain")
    return good, last.seq, last.hash, last.fields.get("type")


# -- verifier ------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int  # lines verified before the first problem, by kind
    checkpoints: int
    first_bad_line: int | None
    first_bad_seq: int | None  # the seq expected there (= line number in this format)
    problem: str
    uncovered: int = 0  # lines after the last checkpoint: chained but not signed
    warning: str = ""


@dataclass(frozen=True)
class _Line:
    seq: int
    prev: str
    hash: str
    computed: str
    fields: dict[str, Any]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(out := dict(pairs)) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _parse(raw: bytes) -> _Line | str:
    """A line without its newline, or why it is malformed."""
    if (m := _SEALED.fullmatch(raw)) is None:
        return 'not a JSON object ending in "hash"'
    body = m.group(1) + b"}"
    try:
        fields = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError:
        return "not valid UTF-8 JSON"
    if not isinstance(fields, dict) or "hash" in fields:
        return "not a JSON object with one hash"
    seq, prev = fields.get("seq"), fields.get("prev")
    if type(seq) is not int or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return "seq or prev missing or malformed"
    return _Line(seq, prev, m.group(2).decode(), line_hash(prev, body), fields)


def _explain_break(n: int, cur: _Line, nxt: _Line | str | None, prev1: str,
                   prev2: str) -> tuple[int, str]:
    """Line ``n`` is intact but does not continue the chain; ``prev1``/``prev2``
    are the hashes of lines n-1 and n-2. Returns (bad line, what happened)."""
    if cur.hash == prev1:
        return n, f"duplicate of line {n - 1}"
    if n > 1 and cur.seq == n - 1 and cur.prev == prev2:
        return n - 1, f"inserted line: line {n} continues the chain from line {n - 2}"
    if isinstance(nxt, _Line) and nxt.seq == n and nxt.prev == prev1:
        if nxt.hash == cur.prev:
            return n, f"lines {n} and {n + 1} swapped (reordered)"
        return n, f"inserted line: line {n + 1} continues the chain from line {n - 1}"
    if cur.seq > n:
        return n, f"seq {cur.seq} where {n} expected: {cur.seq - n} line(s) deleted or moved"
    if cur.seq < n:
        return n, f"seq {cur.seq} where {n} expected: line replayed or moved"
    return n, f"prev does not match the hash of line {n - 1}: chain broken"


def _check_checkpoint(n: int, cur: _Line, keys: Mapping[str, Ed25519PublicKey],
                      last_cp: int) -> str | None:
    kid, sig = cur.fields.get("kid"), cur.fields.get("sig")
    if cur.fields.get("alg") != ALG or not isinstance(kid, str) or not isinstance(sig, str):
        return "malformed checkpoint (alg, kid or sig)"
    if kid not in keys:
        return f"checkpoint signed with unknown kid {kid!r}"
    try:
        keys[kid].verify(_unb64url(sig), checkpoint_message(n, cur.prev, kid))
    except (InvalidSignature, ValueError):
        return (f"checkpoint signature does not verify with key {kid!r}: forged or "
                f"rewritten; lines {last_cp + 1}-{n - 1} are not authenticated")
    return None


def verify(path: Path, public_keys: Mapping[str, Ed25519PublicKey] | dict[str, Any]
           ) -> VerifyResult:
    """Check every line and checkpoint of ``path``; stop at the first problem."""
    keys = _public_keys(public_keys)
    counts = {"event": 0, CHECKPOINT: 0}
    prev1, prev2 = GENESIS, GENESIS  # hashes of lines n-1 and n-2
    last_kind, last_cp, n = "event", 0, 0

    def bad(line: int, what: str) -> VerifyResult:
        if line < n:  # a finding about the line before: it is not verified after all
            counts[last_kind] -= 1
        return VerifyResult(False, counts["event"], counts[CHECKPOINT], line, line,
                            f"line {line} (seq {line}): {what}")

    with path.open("rb") as fh:
        stream = enumerate(fh, start=1)
        pending = next(stream, None)
        while pending is not None:
            (n, raw), pending = pending, next(stream, None)
            if not raw.endswith(b"\n"):
                return bad(n, "truncated line (no newline at end): cut file or interrupted write")
            cur = _parse(raw[:-1])
            if isinstance(cur, str):
                return bad(n, f"malformed line: {cur}")
            if cur.computed != cur.hash:
                return bad(n, "hash mismatch: content edited")
            if cur.seq != n or cur.prev != prev1:
                nxt = _parse(pending[1].rstrip(b"\n")) if pending is not None else None
                return bad(*_explain_break(n, cur, nxt, prev1, prev2))
            kind = cur.fields.get("type", "event")
            if kind == CHECKPOINT:
                if (why := _check_checkpoint(n, cur, keys, last_cp)) is not None:
                    return bad(n, why)
                last_cp = n
            elif kind != "event":
                return bad(n, "unknown line type")
            counts[kind] += 1
            last_kind, prev2, prev1 = kind, prev1, cur.hash
    uncovered = n - last_cp
    warning = "empty log: nothing to verify" if n == 0 else "" if uncovered == 0 else (
        f"{uncovered} line(s) after the last checkpoint (line {last_cp}) are chained "
        "but not signed: their deletion or rewriting cannot be detected")
    return VerifyResult(True, counts["event"], counts[CHECKPOINT], None, None, "", uncovered,
                        warning)
