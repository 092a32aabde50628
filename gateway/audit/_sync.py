"""The ``fsync`` of the audit log's checkpoints that fall due by the events'
count or age, in a thread of the log's own (:class:`ChainedAuditLog
<gateway.audit._chain.ChainedAuditLog>`; docs/audit-format.md §7)."""

from __future__ import annotations

import os
import threading


class Syncer:
    """The ``fsync`` of a checkpoint that fell due by the events' count or age
    (whoever wrote them), in a thread of the log's own that no answer waits
    for: the lines before the checkpoint were written (``write(2)``) before
    their answers, as every line is, and none of them is more durable for
    making the group that crossed the checkpoint wait. On the event loop the
    ``fsync`` stopped every connection for a millisecond or more once every
    ``checkpoint_every`` events (bench/README.md). Requests made while one runs are done by one
    more ``fsync``. A failure is kept in ``error``: the log refuses every
    write from then on, as after a failed ``fsync`` of its own."""

    __slots__ = ("_cond", "_done", "_fd", "_seq", "_stopping", "_thread", "_wanted",
                 "durable_seq", "error")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._wanted = self._done = 0  # fsyncs asked for, and done (or failed)
        self._fd, self._seq = -1, 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None
        self.durable_seq = 0  # the last checkpoint this thread saw on disk

    def request(self, fd: int, seq: int) -> None:
        """An ``fsync`` of ``fd``, which holds the checkpoint ``seq``."""
        with self._cond:
            self._wanted += 1
            self._fd, self._seq = fd, seq
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-fsync",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def synced(self, seq: int) -> None:
        """The log fsynced the checkpoint ``seq`` itself."""
        with self._cond:
            self.durable_seq = max(self.durable_seq, seq)

    def drain(self) -> None:
        """Return once every ``fsync`` asked for is done: before the file
        descriptor is closed or its file renamed."""
        with self._cond:
            while self._done < self._wanted:
                self._cond.wait()

    def stop(self) -> None:
        """End the thread once every ``fsync`` asked for is done (it returns
        only then)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while self._done >= self._wanted and not self._stopping:
                    cond.wait()
                if self._done >= self._wanted:
                    return  # stopping, nothing left to do
                target, fd, seq = self._wanted, self._fd, self._seq
            error: OSError | None = None
            try:
                os.fsync(fd)
            except OSError as exc:
                error = exc
            with cond:
                if error is None:
                    self.durable_seq = max(self.durable_seq, seq)
                elif self.error is None:
                    self.error = error
                self._done = target
                cond.notify_all()
