"""Tamper-evident audit log (D10): a SHA-256 hash chain of
JSON lines, closed by Ed25519-signed checkpoints. ``docs/audit-format.md`` is
the specification; a verifier can be written from it alone.

Each line is the canonical JSON of its members followed by a last member
``"hash"`` = SHA-256(prev + "\\n" + canonical). Verifiers hash the stored bytes,
never a re-serialisation. Writing is part of the request: every failure
raises ``AuditWriteFailed`` (fail closed). Nothing here logs event contents.

``record`` takes the typed kinds of :mod:`gateway.audit._events` and turns
each into its members once. The lines this writer makes on its own, the
checkpoints and the ``audit-key-change`` handover (§6), are format records,
not decision events: they are built here, as the spec draws them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit._events import AuditEvent, RequestEvent
from gateway.audit._file import (
    continue_chain,
    finish_rotation,
    first_line,
    fsync_dir,
    next_path,
    write_new,
)
from gateway.audit._format import (
    ALG,
    CHECKPOINT,
    GENESIS,
    KEY_CHANGE_EVENT,
    KEY_FILE,
    KID_RE,
    RESERVED,
    audit_kid,
    b64url,
    canonical,
    canonical_request,
    checkpoint_message,
    line_hash,
    load_or_create_audit_key,
    public_key_document,
    seal,
    segment_name,
    segments_dir,
)
from gateway.audit._sink import AuditWriteFailed
from gateway.audit._sync import Syncer
from gateway.audit._verify import VerifyResult, verify, verify_log

__all__ = ["GENESIS", "KEY_FILE", "AuditWriteFailed", "ChainedAuditLog", "VerifyResult",
           "audit_kid", "canonical", "checkpoint_message", "line_hash",
           "load_or_create_audit_key", "public_key_document", "seal", "verify", "verify_log"]

log = logging.getLogger("gateway.audit")

# -- writer --------------------------------------------------------------------
class _Group:
    """The events recorded in one event-loop iteration (``record_soon``):
    chained in memory, written with one ``write(2)`` by the loop's next
    callback, or earlier by any other writer that needs the file in order.
    ``before`` is the chain as it was before the group, to roll back to if
    the write fails: then none of its events is in the file, and each of its
    requests is refused."""

    __slots__ = ("before", "error", "lines", "waiters")

    def __init__(self, before: tuple[int, str, bool]) -> None:
        self.before = before
        self.lines: list[bytes] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.error: AuditWriteFailed | None = None


class ChainedAuditLog:
    """Append-only hash-chained JSON lines; an ``AuditSink``. Thread-safe.

    ``record`` writes its line at once; ``record_soon`` (the data plane's
    path) groups the lines of one event-loop iteration into one write and
    hands back a future to await before answering."""

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, kid: str, *,
                 checkpoint_every: int = 1000, checkpoint_interval_s: float = 60.0,
                 segment_max_bytes: int | None = None, segment_max_age_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """With ``segment_max_bytes`` or ``segment_max_age_s``, the file is
        rotated at the first checkpoint past either bound: it moves to
        ``<stem>.segments/`` (sealed) and a new file starts with a copy of
        that checkpoint as its anchor (docs/audit-format.md §10)."""
        if not KID_RE.fullmatch(kid):
            raise ValueError(f"audit kid {kid!r} must match {KID_RE.pattern}")
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_every must be >= 1 and checkpoint_interval_s > 0")
        if (segment_max_bytes is not None and segment_max_bytes < 1) or (
                segment_max_age_s is not None and segment_max_age_s <= 0):
            raise ValueError("segment_max_bytes and segment_max_age_s must be positive")
        self.path, self._key, self._kid = path, signing_key, kid
        self.segments = segments_dir(path)
        self._max_bytes, self._max_age_s = segment_max_bytes, segment_max_age_s
        self._rotates = segment_max_bytes is not None or segment_max_age_s is not None
        self._every, self._interval_s, self._clock = checkpoint_every, checkpoint_interval_s, clock
        self._lock = threading.Lock()
        self._failures = self._since_checkpoint = 0
        self._broken = False  # a fragment could not be removed, or fsync failed
        self._syncer = Syncer()  # the fsync of the checkpoints due by count or age
        self._group: _Group | None = None  # record_soon's lines not yet written
        self._loop: asyncio.AbstractEventLoop | None = None  # record_soon's
        self._last_checkpoint_at = clock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            finish_rotation(path, self.segments)
            created = not path.exists()
            self._fd: int | None = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditWriteFailed(f"cannot open audit log {path}: {exc.strerror}") from exc
        try:
            self._size, self._seq, self._head, last_type = continue_chain(self._fd, path)
            self._first_seq, started = first_line(self._fd, self._seq)
            if created:  # make the new directory entry durable too
                fsync_dir(path.parent)
        except OSError as exc:
            os.close(self._fd)
            raise AuditWriteFailed(f"cannot open audit log {path}: {exc.strerror}") from exc
        except AuditWriteFailed:
            os.close(self._fd)
            raise
        self._segment_started = clock() if started is None else started
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
        return self._fd is not None and not self._broken and self._syncer.error is None

    @property
    def durable_seq(self) -> int:
        """The ``seq`` of the last checkpoint known to be on disk (``fsync``
        returned); 0 before the first of this writer's."""
        return self._syncer.durable_seq

    @property
    def failures(self) -> int:
        return self._failures

    def record(self, event: AuditEvent | dict[str, Any]) -> None:
        """Append one event line. The gateway records the typed kinds
        (``AuditSink``); a plain dict is the format level, any members
        (the spec's worked examples and test vectors), ``ts`` kept if given."""
        with self._counted():
            self._write_group()  # lines recorded before this one go first
            fields = event if isinstance(event, dict) else event.as_record()
            if clash := RESERVED.intersection(fields):
                raise AuditWriteFailed(f"audit event uses reserved keys {sorted(clash)}")
            self._append({"ts": self._clock(), **fields})
            self._written(1)

    def record_soon(self, event: AuditEvent) -> asyncio.Future[None]:
        """Chain ``event`` now and write it with the others recorded in this
        event-loop iteration: one ``write(2)`` for all of them, in the loop's
        next callback. The future is done once the line is in the file, or
        fails with :class:`AuditWriteFailed`: await it before answering (no
        trace, no answer). An event that cannot be chained at all raises at
        once. Call from the event loop's thread only."""
        loop = self._loop
        if loop is None or not loop.is_running():
            # Kept: on Python 3.11 get_running_loop() costs a getpid() per call.
            loop = self._loop = asyncio.get_running_loop()
        # A request event's members are fixed (RequestEvent.chain_fields): none
        # is reserved. Any other kind is checked, as record() checks it.
        fields = None if type(event) is RequestEvent else event.as_record()  # the log's to add to
        if fields is not None and (clash := RESERVED.intersection(fields)):
            with self._lock:
                self._failures += 1
            raise AuditWriteFailed(f"audit event uses reserved keys {sorted(clash)}")
        # _counted, spelled out: this runs for every data-plane request, and a
        # generator context manager costs more than the rest of the locking.
        with self._lock:
            try:
                group = self._group
                if group is None:
                    group = self._group = _Group((self._seq, self._head, self._uncovered))
                    loop.call_soon(self._group_due, group)
                if fields is None:
                    assert isinstance(event, RequestEvent)
                    self._usable_fd()
                    line, digest = self._sealed(
                        event.chain_fields(self._clock(), self._seq + 1, self._head),
                        canonical_request)
                else:
                    fields["ts"] = self._clock()
                    line, digest = self._seal(fields)
            except AuditWriteFailed:
                self._failures += 1  # SECURITY: the caller refuses the request
                raise
            self._seq, self._head, self._uncovered = self._seq + 1, digest, True
            group.lines.append(line)
            waiter: asyncio.Future[None] = loop.create_future()
            group.waiters.append(waiter)
            return waiter

    def _group_due(self, group: _Group) -> None:
        """The loop's callback after the iteration that recorded ``group``."""
        with self._lock:
            if group is self._group:  # not written yet by another writer
                self._write_group()
        error = group.error
        for waiter in group.waiters:
            if waiter.done():  # its request was cancelled meanwhile
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(AuditWriteFailed(str(error)))

    def checkpoint(self) -> None:
        with self._counted():
            self._write_group()
            self._checkpoint()

    def rotate_key(self, signing_key: Ed25519PrivateKey, kid: str) -> None:
        """Sign with a new key from now on (docs/audit-format.md §6): a
        key-change record naming both kids, then a checkpoint under the **old**
        key that covers it (the old key vouches for the handover), then every
        later checkpoint under the new key. The caller has made the new key
        durable and the old public key published before (``AuditKeys``)."""
        if not KID_RE.fullmatch(kid):
            raise ValueError(f"audit kid {kid!r} must match {KID_RE.pattern}")
        if kid == self._kid:
            raise ValueError(f"audit kid {kid!r} is already the current one")
        with self._counted():
            self._write_group()
            self._append({"ts": self._clock(), "event": KEY_CHANGE_EVENT, "actor": "gateway",
                          "action": "rotate-key", "old_kid": self._kid, "new_kid": kid})
            try:
                self._checkpoint()
            finally:
                # Once the record is written, the old key signs at most the one
                # checkpoint that covers it (§8): if that failed, the next
                # checkpoint, under the new key, covers the record instead.
                self._key, self._kid = signing_key, kid

    @property
    def kid(self) -> str:
        return self._kid

    def close(self) -> None:
        with self._counted():
            if self._fd is None:
                return
            try:
                self._write_group()
                if self._uncovered and not self._broken:
                    self._checkpoint()
            finally:
                self._syncer.stop()  # its fsync of this descriptor first
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
    def _checkpoint(self, *, wait: bool = True) -> None:
        """Sign and write a checkpoint, then ``fsync`` the file: here, or with
        ``wait=False`` (one due by count or age: ``_written``) in
        the syncer's thread, unless the file is sealed as a segment now (a
        segment is sealed only once it is on disk)."""
        now = self._clock()
        sig = self._key.sign(checkpoint_message(self._seq + 1, self._head, self._kid))
        line = self._append({"type": CHECKPOINT, "ts": now, "kid": self._kid, "alg": ALG,
                             "sig": b64url(sig)})
        fd = self._fd
        assert fd is not None  # _append checked it
        rotate = self._rotates and (
            (self._max_bytes is not None and self._size >= self._max_bytes)
            or (self._max_age_s is not None and now - self._segment_started >= self._max_age_s))
        if wait or rotate:
            self._syncer.drain()  # one asked for before goes first
            try:
                os.fsync(fd)
            except OSError as exc:
                self._broken = True  # after a failed fsync the page cache cannot be trusted
                raise AuditWriteFailed(
                    f"cannot fsync audit log {self.path}: {exc.strerror}") from exc
            self._syncer.synced(self._seq)
        else:
            self._syncer.request(fd, self._seq)
        self._since_checkpoint, self._last_checkpoint_at, self._uncovered = 0, now, False
        if rotate:
            self._rotate(line, now)

    def _rotate(self, anchor: bytes, now: float) -> None:
        """Seal this file as a segment; go on in a new one that starts with a
        copy of the checkpoint just written. Crash-safe in this order: the new
        file is written aside first, then two renames; an open after a crash
        in between finishes the job (``finish_rotation``)."""
        assert self._fd is not None
        sealed = self.segments / segment_name(self._first_seq, self._seq)
        nxt = next_path(self.path)
        try:
            self.segments.mkdir(mode=0o700, exist_ok=True)
            write_new(nxt, anchor)
            if sealed.exists():
                raise FileExistsError(errno.EEXIST, "segment exists", str(sealed))
            os.rename(self.path, sealed)
        except OSError as exc:  # nothing moved: keep writing this file
            log.warning("audit log %s: cannot rotate (%s); continuing in the same file",
                        self.path, exc.strerror or exc)
            with suppress(OSError):
                nxt.unlink()
            self._segment_started = now  # try again at the next bound, not every checkpoint
            return
        try:
            os.rename(nxt, self.path)
            fsync_dir(self.segments)
            fsync_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._broken = True  # the fd is the sealed segment's now: never append to it
            raise AuditWriteFailed(f"audit log {self.path}: rotation failed half-way "
                                   f"({exc.strerror}); reopen the log") from exc
        os.close(self._fd)
        self._fd, self._size = fd, len(anchor)
        self._first_seq, self._segment_started = self._seq, now
        log.info("audit log: sealed %s", sealed.name)

    def _written(self, lines: int) -> None:
        """``lines`` more events are in the file: a checkpoint when due."""
        self._since_checkpoint += lines
        if (self._since_checkpoint >= self._every
                or self._clock() - self._last_checkpoint_at >= self._interval_s):
            self._checkpoint(wait=False)

    def _write_group(self) -> None:
        """Write the pending group, if any, with one write; on failure roll
        the chain back to before it and keep the error for its waiters."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            self._write(b"".join(group.lines))
        except AuditWriteFailed as exc:
            self._seq, self._head, self._uncovered = group.before
            self._failures += len(group.lines)  # SECURITY: each of them is refused
            group.error = exc
            return
        try:
            self._written(len(group.lines))
        except AuditWriteFailed as exc:  # the checkpoint due now: as record() would
            self._failures += len(group.lines)
            group.error = exc

    def _usable_fd(self) -> int:
        """The file's descriptor, or AuditWriteFailed if closed or broken."""
        if self._syncer.error is not None and not self._broken:
            # SECURITY: a checkpoint's fsync failed in the syncer's thread: what
            # the page cache holds cannot be trusted, as after our own.
            self._broken = True
            log.error("audit log %s: fsync failed (%s); refusing writes until it is reopened",
                      self.path, self._syncer.error.strerror or self._syncer.error)
        if self._fd is None or self._broken:
            raise AuditWriteFailed(f"audit log {self.path} is "
                                   + ("closed" if self._fd is None else "unusable; reopen it"))
        return self._fd

    def _seal(self, fields: dict[str, Any],
              encode: Callable[[dict[str, Any]], bytes] = canonical) -> tuple[bytes, str]:
        """The next line of the chain (not written) and its hash."""
        self._usable_fd()
        fields["seq"], fields["prev"] = self._seq + 1, self._head
        return self._sealed(fields, encode)

    def _sealed(self, fields: dict[str, Any],
                encode: Callable[[dict[str, Any]], bytes]) -> tuple[bytes, str]:
        """The line of ``fields`` (the next ``seq`` and ``prev`` in them)
        and its hash."""
        try:
            body = encode(fields)
        # orjson's JSONEncodeError is a TypeError; no str(exc): it may quote content
        except (TypeError, ValueError) as exc:
            raise AuditWriteFailed(f"audit event not encodable ({type(exc).__name__})") from exc
        digest = line_hash(self._head, body)
        return seal(body, digest), digest

    def _append(self, fields: dict[str, Any]) -> bytes:
        line, digest = self._seal(fields)
        self._write(line)
        self._seq, self._head, self._uncovered = self._seq + 1, digest, True
        return line

    def _write(self, data: bytes) -> None:
        """``data`` (whole lines) at the end of the file, or nothing of it."""
        fd = self._usable_fd()  # closed or broken since the lines were sealed
        written = 0
        try:
            while written < len(data):  # no user-space buffer to flush
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
        except OSError as exc:
            try:  # remove any fragment: the next line would be glued to it
                if os.fstat(fd).st_size > self._size:
                    os.ftruncate(fd, self._size)
            except OSError:
                self._broken = True
                log.error("audit log %s: cannot remove a partial line; refusing writes",
                          self.path)
            raise AuditWriteFailed(f"cannot write audit log {self.path}: "
                                   f"{exc.strerror or exc}") from exc
        self._size += written
