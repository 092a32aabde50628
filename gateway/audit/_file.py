"""The audit log's file on disk, below :class:`ChainedAuditLog
<gateway.audit._chain.ChainedAuditLog>`: where its chain goes on after a
crash (a partial last line cut), its first line, and the steps of sealing a
segment that must survive a crash between them (docs/audit-format.md §7,
§10)."""

from __future__ import annotations

import errno
import logging
import os
import stat
from contextlib import suppress
from pathlib import Path

from gateway.audit._format import CHECKPOINT, GENESIS, parse_line, segment_files
from gateway.audit._sink import AuditWriteFailed

log = logging.getLogger("gateway.audit")


def next_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.next")


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.EIO, "short write")
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_rotation(path: Path, segments: Path) -> None:
    """After a crash during ``ChainedAuditLog._rotate``: if the active file is gone (or empty)
    while sealed segments exist, start it again with the last segment's last
    line, a checkpoint, as the anchor. A leftover ``.next`` file is dropped."""
    with suppress(FileNotFoundError):
        next_path(path).unlink()
    if path.exists() and path.stat().st_size > 0:
        return
    sealed = segment_files(segments)
    if not sealed:
        return
    data = sealed[-1].read_bytes()
    anchor = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
    parsed = parse_line(anchor.rstrip(b"\n"))
    if isinstance(parsed, str) or parsed.fields.get("type") != CHECKPOINT:
        raise AuditWriteFailed(f"{sealed[-1]}: the last sealed segment does not end with a "
                               "checkpoint; cannot continue the log from it")
    write_new(path, anchor)
    fsync_dir(path.parent)
    log.warning("audit log %s: finished an interrupted rotation (anchor seq %d)",
                path, parsed.seq)


def first_line(fd: int, last_seq: int) -> tuple[int, float | None]:
    """(seq, ts) of the file's first line; (last_seq + 1, None) when empty."""
    st = os.fstat(fd)
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0  # e.g. /dev/full
    buf, pos = b"", 0
    while b"\n" not in buf:
        chunk = os.pread(fd, min(65536, size - pos), pos) if pos < size else b""
        if not chunk:
            return last_seq + 1, None
        buf, pos = buf + chunk, pos + len(chunk)
    first = parse_line(buf[:buf.index(b"\n")])
    if isinstance(first, str):
        return last_seq + 1, None
    ts = first.fields.get("ts")
    return first.seq, float(ts) if isinstance(ts, int | float) else None


def continue_chain(fd: int, path: Path) -> tuple[int, int, str, str | None]:
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
    last = parse_line(buf[buf.rfind(b"\n", 0, end) + 1:end])
    if isinstance(last, str):
        raise AuditWriteFailed(f"{path}: last line is not an audit chain line ({last}); "
                               "move the file aside to start a new chain")
    return good, last.seq, last.hash, last.fields.get("type")
