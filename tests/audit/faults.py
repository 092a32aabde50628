"""Faults of the audit store, made for real on the log's own descriptor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.audit import ChainedAuditLog


@contextmanager
def writes_refused(log: ChainedAuditLog) -> Iterator[None]:
    """The log's descriptor refuses writes (EBADF) until the block ends: a
    read-only descriptor of the same file put in its place, then the
    original put back. Nothing reaches the file meanwhile."""
    fd = log._fd
    assert fd is not None
    saved, readonly = os.dup(fd), os.open(log.path, os.O_RDONLY)
    os.dup2(readonly, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(readonly)


@contextmanager
def fsync_fails(log: ChainedAuditLog) -> Iterator[None]:
    """The log's descriptor is a pipe until the block ends: writes go through
    (into the pipe, not the file), ``fsync`` fails (EINVAL), for real."""
    fd = log._fd
    assert fd is not None
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        for spare in (saved, read_end, write_end):
            os.close(spare)
