"""Pruning raw audit events by policy (D10).

The usage rollups keep what D10 asks for (per day, week, month); the raw
audit events are kept for ``raw_retention_days`` and then deleted, a whole
sealed segment at a time (docs/audit-format.md §10), and only when all of
these hold for the segment and every older one:

- it is **sealed**: it verifies from its anchor (or genesis) to its last line,
  a checkpoint whose signature verifies with the log's own key; a segment
  that does not verify is evidence and is never deleted (logged as an error);
- it is **rolled up**: its last line is older than the usage ledger's last
  successful flush, less a margin (``rolled_up_through``);
- it is **old**: its last line is older than the retention;
- its end is **signed**: the next segment is sealed too, verifies, and starts
  with a byte copy of its last line. A checkpoint's own ``ts`` is covered only
  by a later checkpoint (format §9), so the newest sealed segment waits.

Before any file is deleted, an ``audit-prune`` event naming the new first
anchor (seq and hash) is recorded and signed by a checkpoint, so the
verifier can tell a pruned head from a deleted one. Deletion happens after;
a crash in between leaves more than needed, never less.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit._chain import ChainedAuditLog
from gateway.audit._events import PruneEvent
from gateway.audit._file import fsync_dir
from gateway.audit._format import CHECKPOINT, parse_line, segment_files
from gateway.audit._verify import VerifyResult, verify

__all__ = ["AuditPruner", "PruneOutcome"]

log = logging.getLogger("gateway.audit")

DAY_S = 86400.0
# An event's usage count is taken a few microseconds after its audit line is
# written; a flush that starts in between has not counted it. Seconds of margin.
ROLLUP_MARGIN_S = 5.0


@dataclass(frozen=True, slots=True)
class PruneOutcome:
    segments: tuple[str, ...] = ()  # file names deleted, oldest first
    pruned_through_seq: int = 0
    anchor_seq: int = 0
    kept_because: str = ""  # why the oldest remaining segment stays


class AuditPruner:
    """Deletes sealed segments of ``audit`` older than the policy allows."""

    def __init__(self, audit: ChainedAuditLog, *, raw_retention_days: float,
                 rolled_up_through: Callable[[], float | None],
                 public_keys: dict[str, Any] | Callable[[], dict[str, Any]],
                 rollup_margin_s: float = ROLLUP_MARGIN_S,
                 clock: Callable[[], float] = time.time,
                 on_pruned: Callable[[int], None] = lambda n: None) -> None:
        if raw_retention_days <= 0:
            raise ValueError("raw_retention_days must be positive (0 means: no pruner)")
        self.audit = audit
        self.keep_s = raw_retention_days * DAY_S
        self.retention_days = raw_retention_days
        self._rolled_up_through = rolled_up_through
        # A callable: the keys published now, retired ones included (§6), so
        # segments signed before an audit key rotation can still be pruned.
        self._keys = public_keys if callable(public_keys) else lambda: public_keys
        self._margin_s = rollup_margin_s
        self._clock = clock
        self._on_pruned = on_pruned

    def prune(self) -> PruneOutcome:
        """Delete the oldest run of eligible segments; thread-safe with the writer."""
        now = self._clock()
        rolled = self._rolled_up_through()
        if rolled is None:
            return PruneOutcome(kept_because="usage not rolled up yet")
        cutoff = min(now - self.keep_s, rolled - self._margin_s)
        chosen: list[Path] = []
        first_seq = anchor_seq = 0
        anchor_hash, why = "", ""
        sealed = segment_files(self.audit.segments)
        checked: dict[Path, VerifyResult] = {}

        def verified(segment: Path) -> VerifyResult:
            if segment not in checked:
                checked[segment] = verify(segment, self._keys(), allow_anchor=True)
            return checked[segment]

        for index, segment in enumerate(sealed):
            after = sealed[index + 1] if index + 1 < len(sealed) else None
            last = _last_line(segment)
            if last is None:
                why = f"{segment.name}: does not end with a checkpoint"
                log.error("audit segment %s is not sealed; not pruning it", segment)
                break
            seq, digest, ts = last
            if after is None:
                # SECURITY: a checkpoint's own ts is not signed (format §9);
                # only a later checkpoint covers it. The newest segment's last
                # ts could be backdated to get a prune signed, so it waits
                # until the next segment, which covers it, is sealed too.
                why = f"{segment.name}: the newest sealed segment (its end is not signed yet)"
                break
            if ts > cutoff:
                why = f"{segment.name}: newer than the retention or not rolled up"
                break
            # Both this segment and the next, which signs this one's end (its
            # anchor is a byte copy of our last line), must verify.
            result, following = verified(segment), verified(after)
            problem = (
                f"{segment.name}: {result.problem or 'unsigned tail'}"
                if not result.ok or result.uncovered else
                f"{after.name}: {following.problem}" if not following.ok else
                f"{after.name} does not continue it"
                if (following.first_seq, following.first_hash) != (seq, digest) else "")
            if problem:
                why = f"{segment.name}: does not verify ({problem})"
                log.error("audit segment %s does not verify (%s); keeping it as evidence",
                          segment, problem)
                break
            first_seq = first_seq or result.first_seq
            chosen.append(segment)
            anchor_seq, anchor_hash = seq, digest
        if not chosen:
            return PruneOutcome(kept_because=why)
        names = tuple(p.name for p in chosen)
        # Record first (signed), delete after: a crash in between keeps more.
        self.audit.record(PruneEvent.of(
            segments=names, first_seq=first_seq, anchor_seq=anchor_seq,
            anchor_hash=anchor_hash, retention_days=self.retention_days,
            rolled_up_through=rolled))
        self.audit.checkpoint()
        for segment in chosen:
            segment.unlink()
        fsync_dir(self.audit.segments)
        log.info("audit: pruned %d segment(s), seq %d-%d (policy %g days)", len(chosen),
                 first_seq, anchor_seq - 1, self.retention_days)
        self._on_pruned(len(chosen))
        return PruneOutcome(names, anchor_seq - 1, anchor_seq, why)


def _last_line(path: Path) -> tuple[int, str, float] | None:
    """(seq, hash, ts) of a segment's last line when it is a checkpoint."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if not tail.endswith(b"\n"):
        return None
    line = parse_line(tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:-1])
    if isinstance(line, str) or line.fields.get("type") != CHECKPOINT:
        return None
    ts = line.fields.get("ts")
    if not isinstance(ts, int | float):
        return None
    return line.seq, line.hash, float(ts)
