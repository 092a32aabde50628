"""The reference verifier of the audit log (``docs/audit-format.md`` §8-§9).

``verify(path, keys)`` checks one file; ``verify_log(path, keys)`` checks the
whole log: the sealed segments in ``<log>.segments/`` oldest first, then the
active file, each continuing the one before, and, when older segments were
pruned, the signed ``audit-prune`` event that accounts for the missing head.
Both stop at the first problem and name the file, line and seq.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit._format import (
    ALG,
    CHECKPOINT,
    GENESIS,
    KEY_CHANGE_EVENT,
    KID_RE,
    PRUNE_EVENT,
    ChainLine,
    checkpoint_message,
    parse_line,
    public_keys,
    segment_files,
    segments_dir,
    unb64url,
)

__all__ = ["KeyChange", "VerifyResult", "verify", "verify_log"]


@dataclass(frozen=True)
class KeyChange:
    """The last ``audit-key-change`` record read (§6, §8 step 6)."""
    seq: int
    old_kid: str
    new_kid: str
    covered: bool = False  # a checkpoint after the record has been read


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int  # lines verified before the first problem, by kind
    checkpoints: int
    first_bad_line: int | None  # 1-based line number in ``file``
    first_bad_seq: int | None  # the seq expected there
    problem: str
    uncovered: int = 0  # lines after the last checkpoint: chained but not signed
    warning: str = ""
    file: str = ""
    first_seq: int = 0  # seq of the first line: 1, or a signed anchor's (0: empty)
    first_hash: str = GENESIS
    last_seq: int = 0
    last_hash: str = GENESIS
    last_checkpoint_seq: int = 0
    # (seq of the audit-prune event, anchor_seq, anchor_hash) it records
    prunes: tuple[tuple[int, int, str], ...] = ()
    files: int = 1
    key_change: KeyChange | None = None  # to carry into the next file of the log


def _explain_break(n: int, exp: int, cur: ChainLine, nxt: ChainLine | str | None,
                   prev1: str, prev2: str, signed: Callable[[ChainLine], bool]
                   ) -> tuple[int, str]:
    """Line ``n`` (where seq ``exp`` belongs) is intact but does not continue
    the chain; ``prev1``/``prev2`` are the hashes of lines n-1 and n-2 and
    ``signed`` says whether a line is a checkpoint whose signature verifies.
    Returns (bad line, what happened), by the rules of §8 step 4."""
    if cur.hash == prev1:
        return n, f"duplicate of line {n - 1}"
    if n > 1 and cur.seq == exp - 1 and cur.prev == prev2:
        # Lines n-1 and n both claim seq exp-1 after line n-2. Line n-1 is the
        # inserted one only if line n proves itself: a valid signature (only
        # the key holder writes one) or the next line continuing from it.
        # Otherwise line n is the intruder, also at the end of the file.
        if signed(cur) or (isinstance(nxt, ChainLine) and nxt.seq == cur.seq + 1
                           and nxt.prev == cur.hash):
            return n - 1, f"inserted line: line {n} continues the chain from line {n - 2}"
        return n, f"inserted line: it claims the place of line {n - 1} (seq {exp - 1})"
    if isinstance(nxt, ChainLine) and nxt.seq == exp and nxt.prev == prev1:
        if nxt.hash == cur.prev:
            return n, f"lines {n} and {n + 1} swapped (reordered)"
        return n, f"inserted line: line {n + 1} continues the chain from line {n - 1}"
    if cur.seq > exp:
        return n, (f"seq {cur.seq} where {exp} expected: {cur.seq - exp} line(s) deleted "
                   "or moved")
    if cur.seq < exp:
        return n, f"seq {cur.seq} where {exp} expected: line replayed or moved"
    return n, f"prev does not match the hash of line {n - 1}: chain broken"


def _check_checkpoint(cur: ChainLine, keys: Mapping[str, Ed25519PublicKey],
                      unsigned: str) -> str | None:
    kid, sig = cur.fields.get("kid"), cur.fields.get("sig")
    if cur.fields.get("alg") != ALG or not isinstance(kid, str) or not isinstance(sig, str):
        return "malformed checkpoint (alg, kid or sig)"
    if kid not in keys:
        return f"checkpoint signed with unknown kid {kid!r}"
    try:
        signature = unb64url(sig)
    except ValueError:
        return "malformed checkpoint: sig is not unpadded base64url (§2)"
    try:
        keys[kid].verify(signature, checkpoint_message(cur.seq, cur.prev, kid))
    except InvalidSignature:
        return (f"checkpoint signature does not verify with key {kid!r}: forged or "
                f"rewritten; {unsigned} not authenticated")
    return None


def _key_change(cur: ChainLine) -> KeyChange | str:
    """An ``audit-key-change`` record, or why it is malformed (§6)."""
    old, new = cur.fields.get("old_kid"), cur.fields.get("new_kid")
    if not (isinstance(old, str) and isinstance(new, str) and KID_RE.fullmatch(old)
            and KID_RE.fullmatch(new) and old != new):
        return "malformed key-change record (old_kid, new_kid: two different kids)"
    return KeyChange(cur.seq, old, new)


def _check_handover(change: KeyChange, kid: str) -> str | None:
    """§8 step 6: after a key change the old key signs at most the checkpoint
    that first covers the record; every later one is the new key's."""
    if not change.covered and kid not in (change.old_kid, change.new_kid):
        return (f"checkpoint signed with kid {kid!r} right after the key change at seq "
                f"{change.seq} from {change.old_kid!r} to {change.new_kid!r}")
    if change.covered and kid != change.new_kid:
        return (f"checkpoint signed with kid {kid!r} after the key change at seq "
                f"{change.seq} to {change.new_kid!r}: a retired key signs no more")
    return None


def _prune_record(cur: ChainLine) -> tuple[int, int, str] | None:
    f = cur.fields
    if f.get("event") != PRUNE_EVENT:
        return None
    seq, digest = f.get("anchor_seq"), f.get("anchor_hash")
    if type(seq) is not int or not isinstance(digest, str):
        return None
    return cur.seq, seq, digest


def verify(path: Path, public_keys_: Mapping[str, Ed25519PublicKey] | dict[str, Any], *,
           allow_anchor: bool = False, key_change: KeyChange | None = None) -> VerifyResult:
    """Check every line and checkpoint of one file; stop at the first problem.

    The file must start at seq 1 from the genesis hash, or, with
    ``allow_anchor``, at a checkpoint whose signature verifies (a segment of a
    rotated log: its first line repeats the last line of the one before).
    ``key_change`` is the last key-change record of the files before."""
    keys = public_keys(public_keys_)
    change = key_change

    def signed(line: ChainLine) -> bool:
        return (line.fields.get("type") == CHECKPOINT
                and _check_checkpoint(line, keys, "") is None)

    counts = {"event": 0, CHECKPOINT: 0}
    prev1, prev2 = GENESIS, GENESIS  # hashes of lines n-1 and n-2
    last_kind, last_cp, n, base = "event", 0, 0, 0
    first: ChainLine | None = None
    prunes: list[tuple[int, int, str]] = []

    def bad(line: int, what: str) -> VerifyResult:
        if line < n:  # a finding about the line before: it is not verified after all
            counts[last_kind] -= 1
        return VerifyResult(False, counts["event"], counts[CHECKPOINT], line, base + line,
                            f"line {line} (seq {base + line}): {what}", file=str(path))

    with path.open("rb") as fh:
        stream = enumerate(fh, start=1)
        pending = next(stream, None)
        while pending is not None:
            (n, raw), pending = pending, next(stream, None)
            if not raw.endswith(b"\n"):
                return bad(n, "truncated line (no newline at end): cut file or interrupted write")
            cur = parse_line(raw[:-1])
            if isinstance(cur, str):
                return bad(n, f"malformed line: {cur}")
            if cur.computed != cur.hash:
                return bad(n, "hash mismatch: content edited")
            # §2: an event line has no `type`; "checkpoint" is the only other
            # kind. Any other value (even "event") is refused, never skipped:
            # a verifier cannot know what an unknown kind would vouch for.
            kind = cur.fields.get("type", "event")
            if kind != CHECKPOINT and "type" in cur.fields:
                return bad(n, f"unknown line type {str(kind)[:40]!r}")
            if n == 1 and allow_anchor and cur.seq != 1:
                if kind != CHECKPOINT:
                    base = cur.seq - 1
                    return bad(1, f"the file starts at seq {cur.seq} without a signed anchor "
                               f"(a checkpoint): {cur.seq - 1} line(s) deleted from the start")
                base, prev1 = cur.seq - 1, cur.prev  # the anchor: chained from seq - 1
            if cur.seq != base + n or cur.prev != prev1:
                nxt = parse_line(pending[1].rstrip(b"\n")) if pending is not None else None
                return bad(*_explain_break(n, base + n, cur, nxt, prev1, prev2, signed))
            if kind == CHECKPOINT:
                unsigned = (f"lines {last_cp + 1}-{n - 1} are" if n > 1 else
                            f"the anchor (seq {cur.seq}) is")
                if (why := _check_checkpoint(cur, keys, unsigned)) is not None:
                    return bad(n, why)
                # An anchor repeats the last line of the file before, where the
                # handover rule was applied already.
                if change is not None and not (n == 1 and base):
                    if (why := _check_handover(change, cur.fields["kid"])) is not None:
                        return bad(n, why)
                    change = replace(change, covered=True)
                last_cp = n
            elif cur.fields.get("event") == KEY_CHANGE_EVENT:
                if isinstance(parsed := _key_change(cur), str):
                    return bad(n, parsed)
                change = parsed
            elif (record := _prune_record(cur)) is not None:
                prunes.append(record)
            first = first or cur
            counts[kind] += 1
            last_kind, prev2, prev1 = kind, prev1, cur.hash
    uncovered = n - last_cp
    warning = "empty log: nothing to verify" if n == 0 else "" if uncovered == 0 else (
        f"{uncovered} line(s) after the last checkpoint (line {last_cp}) are chained "
        "but not signed: their deletion or rewriting cannot be detected")
    return VerifyResult(True, counts["event"], counts[CHECKPOINT], None, None, "", uncovered,
                        warning, str(path), first.seq if first else 0,
                        first.hash if first else GENESIS, base + n, prev1,
                        base + last_cp if last_cp else 0, tuple(prunes),
                        key_change=change)


def verify_log(path: Path, public_keys_: Mapping[str, Ed25519PublicKey] | dict[str, Any],
               verified: Callable[[Path], object] | None = None) -> VerifyResult:
    """Check the whole log: every sealed segment, oldest first, then ``path``.

    Each file must continue the one before (its first line is the previous
    file's last line, byte for byte, as the hash and seq show). Segments must
    end with a checkpoint. If the oldest file starts at an anchor instead of
    seq 1, a signed ``audit-prune`` event must name that anchor: a head that
    went missing without one is reported as deleted.

    ``verified(file)`` hears of each file checked, oldest first (``gateway
    audit verify`` draws a progress bar with it)."""
    files = segment_files(segments_dir(path))
    if path.exists() or not files:
        files.append(path)
    keys = public_keys(public_keys_)
    events = checkpoints = 0
    prunes: list[tuple[int, int, str]] = []
    head: VerifyResult | None = None
    last: VerifyResult | None = None
    change: KeyChange | None = None
    for index, file in enumerate(files):
        result = verify(file, keys, allow_anchor=True, key_change=change)
        total = replace(result, events=events + result.events, files=index + 1,
                        checkpoints=checkpoints + result.checkpoints - (last is not None))
        if not result.ok:
            return replace(total, checkpoints=max(total.checkpoints, checkpoints),
                           problem=f"{file.name}: {result.problem}")
        sealed = file != path
        if result.first_seq == 0 and sealed:
            return _fail(total, file, 1, 1, "empty segment file")
        if sealed and result.uncovered:
            return _fail(total, file, result.last_seq - result.first_seq + 1, result.last_seq,
                         "segment does not end with a checkpoint (not sealed)")
        if last is not None and result.first_seq != 0 and (
                (result.first_seq, result.first_hash) != (last.last_seq, last.last_hash)):
            return _fail(total, file, 1, last.last_seq,
                         f"does not continue {Path(last.file).name} (which ends at seq "
                         f"{last.last_seq}): a segment is missing, replaced or out of order")
        events, checkpoints = total.events, total.checkpoints
        if verified is not None:
            verified(file)
        prunes.extend(result.prunes)
        change = result.key_change
        head = head or result
        if result.first_seq != 0:
            last = result
    if head is None or last is None:  # nothing but an empty active file
        return replace(_empty(path), files=len(files))
    out = replace(last, events=events, checkpoints=checkpoints, prunes=tuple(prunes),
                  files=len(files), first_seq=head.first_seq, first_hash=head.first_hash)
    if head.first_seq > 1:
        anchor = (head.first_seq, head.first_hash)
        signed = [p for p in prunes if (p[1], p[2]) == anchor and p[0] < last.last_checkpoint_seq]
        if not signed:
            return _fail(out, Path(head.file), 1, head.first_seq,
                         f"the log starts at seq {head.first_seq} and no signed audit-prune "
                         f"event accounts for seq 1-{head.first_seq - 1}: lines deleted from "
                         "the start, or the newest files deleted with the prune record "
                         "they held (§10)")
    return out


def _fail(result: VerifyResult, file: Path, line: int, seq: int, what: str) -> VerifyResult:
    return replace(result, ok=False, first_bad_line=line, first_bad_seq=seq, file=str(file),
                   problem=f"{file.name}: line {line} (seq {seq}): {what}", warning="")


def _empty(path: Path) -> VerifyResult:
    return VerifyResult(True, 0, 0, None, None, "", 0, "empty log: nothing to verify", str(path))
