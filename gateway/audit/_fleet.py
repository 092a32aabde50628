"""The audit trail of a fleet (docs/audit-format.md §13).

Each replica keeps its own hash chain in its own file, written before the
answer as on a single gateway (D10: no trace, no answer). Then:

- :class:`AuditShipper` copies the replica's complete lines, byte for byte,
  into PostgreSQL (``AuditTables``), and publishes the replica's checkpoint
  keys there;
- the active control plane signs a **fleet checkpoint** at a fixed interval
  (:func:`sign_fleet_checkpoint`): the head (seq and hash) of every
  replica's shipped chain, chained to the fleet checkpoint before it;
- each replica records the newest fleet checkpoint it saw as an event in its
  own chain (``fleet-checkpoint``), so its next checkpoint covers it: the
  replicas vouch for the fleet checkpoints and the fleet checkpoints for the
  replicas;
- :func:`verify_fleet` checks every replica's chain with the reference
  verifier, the fleet checkpoints' chain and signatures, that every head a
  fleet checkpoint names is in that replica's chain (a truncated or missing
  chain is named), and that every fleet checkpoint a replica recorded is
  the one in the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit._events import FleetCheckpointEvent
from gateway.audit._format import (
    ALG,
    GENESIS,
    b64url,
    canonical,
    public_keys,
    segment_files,
    segments_dir,
    unb64url,
)
from gateway.audit._verify import verify_log
from gateway.state import AuditTables

log = logging.getLogger("gateway.audit")

FLEET_CHECKPOINT = "fleet-checkpoint"  # a fleet checkpoint's type, and the replicas' event
FLEET_CONTEXT = b"gateway-fleet-checkpoint/v1"


def _seq_of(line: bytes) -> int:
    fields = json.loads(line)
    seq = fields.get("seq") if isinstance(fields, dict) else None
    if not isinstance(seq, int):
        raise ValueError("not a chain line")
    return seq


def _hash_member(line: bytes) -> str:
    """The ``hash`` member of a stored line (its last 66 bytes, §3)."""
    return line.rstrip(b"\n")[-66:-2].decode()


class AuditShipper:
    """Ships one replica's chain to PostgreSQL: every complete line with a
    seq above what is there, from the sealed segments (after a restart or a
    rotation) and the active file, remembering where it stopped."""

    def __init__(self, log_path: Path, replica: str, tables: AuditTables) -> None:
        self.path = log_path
        self.replica = replica
        self.tables = tables
        self._shipped = -1  # unknown until read from the table
        self._inode: int | None = None
        self._offset = 0
        self.seen_fleet = 0  # the newest fleet checkpoint recorded in this chain

    def publish_keys(self, document: Mapping[str, Any]) -> None:
        """The replica's checkpoint keys (current and retired), for verifiers."""
        for jwk in document.get("keys", []):
            self.tables.publish_key(self.replica, str(jwk["kid"]),
                                    json.dumps(jwk, sort_keys=True))

    def ship(self, batch: int = 5000) -> int:
        """Ship what is new; the number of lines shipped."""
        if self._shipped < 0:
            self._shipped = self.tables.shipped_seq(self.replica)
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return 0
        pending: list[tuple[int, bytes]] = []
        if inode != self._inode:
            # First run, or the file was sealed and a new one began: read the
            # sealed segments too, skipping what is shipped already.
            for segment in segment_files(segments_dir(self.path)):
                self._collect(segment, 0, pending)
            self._offset = 0
            self._inode = inode
        self._offset = self._collect(self.path, self._offset, pending)
        count = 0
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            self.tables.ship(self.replica, chunk)
            self._shipped = chunk[-1][0]
            count += len(chunk)
        return count

    def _collect(self, path: Path, offset: int, out: list[tuple[int, bytes]]) -> int:
        """Complete lines of ``path`` from ``offset`` with a seq above the
        shipped one; the offset after the last complete line."""
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a partial last line waits for its end
        for raw in data[:end].splitlines(keepends=True):
            seq = _seq_of(raw)
            last = out[-1][0] if out else self._shipped
            if seq > last:
                out.append((seq, raw))
        return offset + end


# -- fleet checkpoints ----------------------------------------------------------
def fleet_message(body: Mapping[str, Any]) -> bytes:
    """What a fleet checkpoint's signature covers: the context, a newline and
    the canonical JSON of every member but ``sig``."""
    return FLEET_CONTEXT + b"\n" + canonical({k: v for k, v in body.items() if k != "sig"})


def fleet_hash(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def sign_fleet_checkpoint(tables: AuditTables, key: Ed25519PrivateKey, kid: str,
                          now: float) -> dict[str, Any] | None:
    """Sign the heads of every replica's shipped chain as the next fleet
    checkpoint; None when nothing moved since the last one (or another
    control plane signed that number first)."""
    heads = {replica: {"seq": seq, "hash": _hash_member(line)}
             for replica, (seq, line) in sorted(tables.heads().items())}
    latest = tables.latest_fleet_checkpoint()
    n, prev = 1, GENESIS
    if latest is not None:
        last = json.loads(latest[1])
        if last["heads"] == heads:
            return None
        n, prev = latest[0] + 1, fleet_hash(latest[1])
    body: dict[str, Any] = {"type": FLEET_CHECKPOINT, "n": n, "prev": prev, "ts": now,
                            "heads": heads, "kid": kid, "alg": ALG}
    body["sig"] = b64url(key.sign(fleet_message(body)))
    record = canonical(body)
    return body if tables.add_fleet_checkpoint(n, record) else None


def fleet_event(n: int, record: bytes) -> FleetCheckpointEvent:
    """The event a replica records when it sees fleet checkpoint ``n``."""
    return FleetCheckpointEvent(n, fleet_hash(record))


# -- verification ---------------------------------------------------------------
@dataclass
class ReplicaResult:
    ok: bool
    events: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    problem: str = ""


@dataclass
class FleetResult:
    ok: bool
    replicas: dict[str, ReplicaResult] = field(default_factory=dict)
    fleet_checkpoints: int = 0
    problem: str = ""
    bad_replica: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "problem": self.problem, "bad_replica": self.bad_replica,
                "fleet_checkpoints": self.fleet_checkpoints,
                "replicas": {r: {"ok": v.ok, "events": v.events, "checkpoints": v.checkpoints,
                                 "last_seq": v.last_seq, "problem": v.problem}
                             for r, v in self.replicas.items()}}


def published_fleet_keys(tables: AuditTables) -> dict[str, Any]:
    """Every key the replicas published, as one key document."""
    return {"keys": [json.loads(jwk) for _, _, jwk in tables.published_keys()]}


def verify_fleet(tables: AuditTables, keys: Mapping[str, Any]) -> FleetResult:
    """Check the fleet's whole trail (see the module doc); stop naming the
    first replica, or the first fleet checkpoint, that fails."""
    trusted = public_keys(keys)
    result = FleetResult(ok=True)
    # A live fleet goes on shipping and signing while this runs. The fleet
    # checkpoints are read first: every head they name was shipped before
    # they were signed, so it is in the chains read after them.
    checked = tables.fleet_checkpoints()
    recorded: dict[str, dict[int, str]] = {}  # replica -> fleet checkpoints it recorded
    hashes: dict[str, dict[int, str]] = {}  # replica -> seq -> hash, for the heads
    with tempfile.TemporaryDirectory(prefix="gateway-fleet-audit-") as tmp:
        for replica in tables.replicas():
            path = Path(tmp) / f"{replica}.jsonl"
            seen: dict[int, str] = {}
            by_seq: dict[int, str] = {}
            with path.open("wb") as out:
                for seq, line in tables.lines(replica):
                    out.write(line)
                    by_seq[seq] = _hash_member(line)
                    if b'"event":"fleet-checkpoint"' in line:
                        fields = json.loads(line)
                        seen[int(fields["n"])] = str(fields["fleet_hash"])
            recorded[replica], hashes[replica] = seen, by_seq
            if not by_seq:
                # A key without lines: a replica that stopped before it shipped
                # anything, or one whose chain was deleted; the fleet
                # checkpoints tell which (below).
                result.replicas[replica] = ReplicaResult(True, problem="no chain shipped")
                continue
            verdict = verify_log(path, trusted)
            result.replicas[replica] = ReplicaResult(
                verdict.ok, verdict.events, verdict.checkpoints, verdict.last_seq,
                verdict.problem)
            if not verdict.ok:
                return _fail(result, replica, f"replica {replica}: {verdict.problem}")
    # Checkpoints signed while the chains were read: checked too, but the
    # heads they name may be past the chains as read.
    later = [(n, r) for n, r in tables.fleet_checkpoints() if n > len(checked)]
    prev = GENESIS
    for n, record in [*checked, *later]:
        body = json.loads(record)
        why = _check_fleet_checkpoint(n, body, record, prev, trusted)
        if why is not None:
            return _fail(result, None, f"fleet checkpoint {n}: {why}")
        for replica, head in body["heads"].items() if n <= len(checked) else ():
            have = hashes.get(replica, {})
            if not have:
                return _fail(result, replica, f"replica {replica}: chain missing (fleet "
                             f"checkpoint {n} names its seq {head['seq']})")
            if have.get(head["seq"]) != head["hash"]:
                last = max(have)
                what = ("truncated" if head["seq"] > last else "rewritten")
                return _fail(result, replica,
                             f"replica {replica}: chain {what}: fleet checkpoint {n} names seq "
                             f"{head['seq']} with hash {head['hash'][:12]}..., the shipped "
                             f"chain ends at seq {last}")
        prev = fleet_hash(record)
        result.fleet_checkpoints += 1
        for replica, seen in recorded.items():
            if n in seen and seen[n] != prev:
                return _fail(result, replica, f"replica {replica}: recorded fleet checkpoint "
                             f"{n} with another hash than the one stored")
    count = result.fleet_checkpoints
    for replica, seen in recorded.items():
        beyond = [n for n in seen if n > count]
        if beyond:
            return _fail(result, None, f"fleet checkpoint {min(beyond)} is missing (replica "
                         f"{replica} recorded it)")
    return result


def _fail(result: FleetResult, replica: str | None, problem: str) -> FleetResult:
    result.ok, result.problem, result.bad_replica = False, problem, replica
    return result


def _check_fleet_checkpoint(n: int, body: Any, record: bytes, prev: str,
                            keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    if not isinstance(body, dict) or body.get("type") != FLEET_CHECKPOINT:
        return "malformed"
    if canonical(body) != record:
        return "not in canonical form"
    if body.get("n") != n:
        return f"numbered {body.get('n')!r}"
    if body.get("prev") != prev:
        return "does not continue the fleet checkpoint before it (deleted or replaced)"
    if body.get("alg") != ALG or not isinstance(body.get("heads"), dict):
        return "malformed"
    kid = body.get("kid")
    if kid not in keys:
        return f"signed with unknown kid {kid!r}"
    try:
        keys[str(kid)].verify(unb64url(str(body.get("sig", ""))), fleet_message(body))
    except (InvalidSignature, ValueError):
        return f"signature does not verify with key {kid!r}"
    return None
