"""The typed audit events (D10): each kind writes exactly the members the
gateway wrote before the kinds were typed (the expected records below are
literal, as the free dicts at each site built them), keys absent stay absent,
a ``None`` that was written stays written, and the line bytes through the
chain are those of the plain dict. A round trip through the writer and the
reference verifier is clean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    AdminEvent,
    AuditEvent,
    ChainedAuditLog,
    CmhFanoutEvent,
    PruneEvent,
    PushBatchEvent,
    PushDeadLetterEvent,
    PushDeliveredEvent,
    PushPartOutcome,
    RequestEvent,
    verify_log,
)

T0 = 1767225600.25
ANCHOR = "b6e9566e834c79d97db6cc068953f28240d7b2ee2675e6734d744a3aef200fa5"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


# Each case: the typed event, and the dict the site wrote before (literal).
CASES: list[tuple[str, AuditEvent, dict[str, Any]]] = [
    ("request-served",
     RequestEvent(incident="inc-1", tenant="ores", principal="app-1", cert_serial="1f2e",
                  cert_fingerprint="ab" * 32, method="GET", route="hes-meter",
                  upstream="hes", decision="allow", reason="ok", status=200,
                  resources=("1SAG1100042062",), bytes_in=0, bytes_out=321,
                  classification="C3"),
     {"event": "request", "incident": "inc-1", "tenant": "ores", "principal": "app-1",
      "cert_serial": "1f2e", "cert_fingerprint": "ab" * 32, "method": "GET",
      "route": "hes-meter", "upstream": "hes", "decision": "allow", "reason": "ok",
      "status": 200, "resources": ["1SAG1100042062"], "bytes_in": 0, "bytes_out": 321,
      "classification": "C3"}),
    # The gateway's own canary prober (D1): marked, and only then.
    ("request-canary",
     RequestEvent(incident="inc-c", tenant="fluvius", principal="canary", cert_serial="2a",
                  cert_fingerprint="cd" * 32, method="GET", route="/hes/meters/{serial}",
                  upstream="hes", decision="deny", reason="no-relation", status=403,
                  resources=("1CAN0000000001",), bytes_in=0, bytes_out=180,
                  classification=None, canary=True),
     {"event": "request", "incident": "inc-c", "tenant": "fluvius", "principal": "canary",
      "cert_serial": "2a", "cert_fingerprint": "cd" * 32, "method": "GET",
      "route": "/hes/meters/{serial}", "upstream": "hes", "decision": "deny",
      "reason": "no-relation", "status": 403, "resources": ["1CAN0000000001"],
      "bytes_in": 0, "bytes_out": 180, "classification": None, "canary": True}),
    # No caller, no route: the members are written as null, never left out.
    ("request-anonymous",
     RequestEvent(incident="inc-2", tenant="unknown", principal=None, cert_serial=None,
                  cert_fingerprint=None, method="POST", route=None, upstream="none",
                  decision="deny", reason="no-client-certificate", status=403,
                  resources=(), bytes_in=12, bytes_out=180, classification=None),
     {"event": "request", "incident": "inc-2", "tenant": "unknown", "principal": None,
      "cert_serial": None, "cert_fingerprint": None, "method": "POST", "route": None,
      "upstream": "none", "decision": "deny", "reason": "no-client-certificate",
      "status": 403, "resources": [], "bytes_in": 12, "bytes_out": 180,
      "classification": None}),
    ("admin-plain",
     AdminEvent.build(incident="inc-3", actor="ores/person/alice", action="revoke",
                      target="engie/cert 1f", reason="leaver", outcome="attempt"),
     {"event": "admin", "incident": "inc-3", "actor": "ores/person/alice",
      "action": "revoke", "target": "engie/cert 1f", "reason": "leaver",
      "outcome": "attempt", "detail": ""}),
    ("admin-approved",
     AdminEvent.build(incident="inc-4", actor="ores/person/bob", action="ca-rotate",
                      target="ca", reason="yearly", outcome="done",
                      detail="approved in pa-1",
                      extra={"requested_by": "ores/person/bob",
                             "approved_by": "ores/person/carol",
                             "pending_action": "ca-rotate"}),
     {"event": "admin", "incident": "inc-4", "actor": "ores/person/bob",
      "action": "ca-rotate", "target": "ca", "reason": "yearly", "outcome": "done",
      "detail": "approved in pa-1", "requested_by": "ores/person/bob",
      "approved_by": "ores/person/carol", "pending_action": "ca-rotate"}),
    ("admin-pending",
     AdminEvent.build(incident="inc-5", actor="ores/person/bob", action="principal-disable",
                      target="ores/person/dave", reason="leaver", outcome="pending",
                      detail="four-eyes",
                      extra={"pending": "pa-2", "requested_by": "ores/person/bob"}),
     {"event": "admin", "incident": "inc-5", "actor": "ores/person/bob",
      "action": "principal-disable", "target": "ores/person/dave", "reason": "leaver",
      "outcome": "pending", "detail": "four-eyes", "pending": "pa-2",
      "requested_by": "ores/person/bob"}),
    ("admin-denied",
     AdminEvent.build(incident="inc-6", actor="ores/person/carol", action="pending-deny",
                      target="pa-3", reason="no ticket", outcome="done",
                      extra={"requested_by": "ores/person/bob",
                             "denied_by": "ores/person/carol"}),
     {"event": "admin", "incident": "inc-6", "actor": "ores/person/carol",
      "action": "pending-deny", "target": "pa-3", "reason": "no ticket", "outcome": "done",
      "detail": "", "requested_by": "ores/person/bob", "denied_by": "ores/person/carol"}),
    # A request no admin route took (404, 405): its method, no actor known.
    ("admin-route-refused",
     AdminEvent.build(incident="inc-6b", actor="unknown", action="admin-route",
                      target="/nowhere", reason="", outcome="refused", detail="http-404",
                      extra={"method": "DELETE"}),
     {"event": "admin", "incident": "inc-6b", "actor": "unknown", "action": "admin-route",
      "target": "/nowhere", "reason": "", "outcome": "refused", "detail": "http-404",
      "method": "DELETE"}),
    ("push-batch-readings",
     PushBatchEvent(incident="inc-7", tenant="hes", batch_id="b-1", received=5, queued=3,
                    quarantined=1, refused=1,
                    quarantine_reasons={"unknown-meter": 1},
                    parts=(PushPartOutcome("fluvius", 2, "queued"),
                           PushPartOutcome("ores", 1, "queued"),
                           PushPartOutcome("sibelga", 1, "refused-no-endpoint"))),
     {"event": "push-batch", "incident": "inc-7", "tenant": "hes", "batch_id": "b-1",
      "received": 5, "queued": 3, "quarantined": 1, "refused": 1,
      "quarantine_reasons": {"unknown-meter": 1},
      "parts": [{"tenant": "fluvius", "records": 2, "status": "queued"},
                {"tenant": "ores", "records": 1, "status": "queued"},
                {"tenant": "sibelga", "records": 1, "status": "refused-no-endpoint"}]}),
    ("push-batch-meter-days",
     PushBatchEvent(incident="inc-8", tenant="hes", batch_id="d-1", received=96, queued=96,
                    quarantined=0, refused=0, quarantine_reasons={},
                    parts=(PushPartOutcome("ores", 96, "already-queued"),),
                    batch_format="meter-days/v1", meter_days=1),
     {"event": "push-batch", "incident": "inc-8", "tenant": "hes", "batch_id": "d-1",
      "received": 96, "queued": 96, "quarantined": 0, "refused": 0,
      "quarantine_reasons": {}, "format": "meter-days/v1", "meter_days": 1,
      "parts": [{"tenant": "ores", "records": 96, "status": "already-queued"}]}),
    ("cmh-queued",
     CmhFanoutEvent.queued(incident="inc-9", tenant="cmh", request="req-1",
                           operators=("ores", "proximus"), already_queued=False),
     {"event": "cmh-fanout", "incident": "inc-9", "tenant": "cmh", "request": "req-1",
      "operators": ["ores", "proximus"], "outcome": "queued"}),
    ("cmh-already-queued",
     CmhFanoutEvent.queued(incident="inc-10", tenant="cmh", request="req-1",
                           operators=("ores",), already_queued=True),
     {"event": "cmh-fanout", "incident": "inc-10", "tenant": "cmh", "request": "req-1",
      "operators": ["ores"], "outcome": "already-queued"}),
    ("cmh-quarantined",
     CmhFanoutEvent.quarantined(incident="inc-11", tenant="cmh", request="req-2",
                                reason="operator-mismatch", connection="c-1"),
     {"event": "cmh-fanout", "incident": "inc-11", "tenant": "cmh", "request": "req-2",
      "operators": [], "outcome": "quarantined",
      "quarantine_reasons": {"operator-mismatch": 1}, "connection": "c-1"}),
    # A quarantined booking without a connection writes "connection": null.
    ("cmh-quarantined-no-connection",
     CmhFanoutEvent.quarantined(incident="inc-12", tenant="cmh", request="req-3",
                                reason="coordinator-mismatch", connection=None),
     {"event": "cmh-fanout", "incident": "inc-12", "tenant": "cmh", "request": "req-3",
      "operators": [], "outcome": "quarantined",
      "quarantine_reasons": {"coordinator-mismatch": 1}, "connection": None}),
    ("push-delivered",
     PushDeliveredEvent(incident="inc-13", tenant="ores", batch_id="b-1", records=2,
                        attempts=1),
     {"event": "push-delivered", "incident": "inc-13", "tenant": "ores", "batch_id": "b-1",
      "records": 2, "attempts": 1}),
    ("push-dead-letter",
     PushDeadLetterEvent(incident="inc-14", tenant="ores", batch_id="b-1", records=2,
                         error="http-400"),
     {"event": "push-dead-letter", "incident": "inc-14", "tenant": "ores",
      "batch_id": "b-1", "records": 2, "error": "http-400"}),
    ("audit-prune",
     PruneEvent.of(segments=("000000000001-000000000003.jsonl",), first_seq=1,
                   anchor_seq=3, anchor_hash=ANCHOR, retention_days=1,
                   rolled_up_through=1767225604.0),
     {"event": "audit-prune", "actor": "gateway", "action": "prune",
      "segments": ["000000000001-000000000003.jsonl"], "pruned_from_seq": 1,
      "pruned_through_seq": 2, "anchor_seq": 3, "anchor_hash": ANCHOR,
      "policy": "raw_retention_days=1", "rolled_up_through": 1767225604.0}),
    ("audit-prune-fractional-days",
     PruneEvent.of(segments=("a.jsonl", "b.jsonl"), first_seq=7, anchor_seq=40,
                   anchor_hash=ANCHOR, retention_days=0.5, rolled_up_through=1767225604),
     {"event": "audit-prune", "actor": "gateway", "action": "prune",
      "segments": ["a.jsonl", "b.jsonl"], "pruned_from_seq": 7, "pruned_through_seq": 39,
      "anchor_seq": 40, "anchor_hash": ANCHOR, "policy": "raw_retention_days=0.5",
      "rolled_up_through": 1767225604}),
]
IDS = [name for name, _, _ in CASES]


@pytest.mark.parametrize(("name", "event", "expected"), CASES, ids=IDS)
def test_each_kind_writes_exactly_the_record_it_wrote_before(
        name: str, event: AuditEvent, expected: dict[str, Any]) -> None:
    record = event.as_record()
    assert record == expected
    assert sorted(record) == sorted(expected)  # absent stays absent, null stays written
    # Same JSON types too (a tuple would equal nothing here, an int 1 equals 1.0).
    assert json.dumps(record, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert [type(v) for _, v in sorted(record.items())] == [
        type(v) for _, v in sorted(expected.items())]


@pytest.mark.parametrize(("name", "event", "expected"), CASES, ids=IDS)
def test_each_record_is_fresh(name: str, event: AuditEvent,
                              expected: dict[str, Any]) -> None:
    """The writer may add members to what it gets; the event stays as built."""
    first = event.as_record()
    first["ts"] = 1.0
    for value in first.values():
        if isinstance(value, list):
            value.append("x")
        elif isinstance(value, dict):
            value["x"] = 1
    assert event.as_record() == expected


def test_the_lines_are_byte_identical_to_the_plain_dicts(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    typed, plain = tmp_path / "typed.jsonl", tmp_path / "plain.jsonl"
    for path, use_typed in ((typed, True), (plain, False)):
        log = ChainedAuditLog(path, key, kid, checkpoint_every=4, clock=Clock())
        for _, event, expected in CASES:
            log.record(event if use_typed else dict(expected))
        log.close()
    assert typed.read_bytes() == plain.read_bytes()
    result = verify_log(typed, keys)
    assert result.ok and result.events == len(CASES), result.problem
    events = [json.loads(line) for line in typed.read_text(encoding="utf-8").splitlines()
              if '"type":"checkpoint"' not in line]
    for (_, _, expected), written in zip(CASES, events, strict=True):
        assert {k: v for k, v in written.items()
                if k not in ("ts", "seq", "prev", "hash")} == expected


def test_a_request_event_names_at_most_twenty_resources() -> None:
    """D10: ids only, and a bounded number of them per line."""
    many = tuple(f"54144886001207{i:04d}" for i in range(25))
    event = RequestEvent(incident="inc-1", tenant="ores", principal="app-1", cert_serial="1",
                         cert_fingerprint="f", method="GET", route="r", upstream="u",
                         decision="allow", reason="ok", status=200, resources=many,
                         bytes_in=0, bytes_out=0, classification=None)
    assert event.as_record()["resources"] == list(many[:20])


def test_an_admin_extra_never_replaces_a_base_member() -> None:
    """As before: named extras only add (D6 fields); the actor stays the actor."""
    event = AdminEvent.build(incident="inc-1", actor="ores/person/alice", action="revoke",
                             target="t", reason="r", outcome="done",
                             extra={"actor": "ores/person/mallory", "event": "request",
                                    "requested_by": "ores/person/bob"})
    assert event.as_record() == {
        "event": "admin", "incident": "inc-1", "actor": "ores/person/alice",
        "action": "revoke", "target": "t", "reason": "r", "outcome": "done", "detail": "",
        "requested_by": "ores/person/bob"}


def test_an_admin_extra_outside_the_named_fields_is_refused() -> None:
    """D10: an admin event carries named fields only, never free content."""
    with pytest.raises(ValueError, match="body"):
        AdminEvent.build(incident="inc-1", actor="a", action="b", target="c", reason="d",
                         outcome="done", extra={"body": "secret"})


@pytest.mark.parametrize(("name", "event", "expected"), CASES, ids=IDS)
def test_the_kinds_are_frozen(name: str, event: AuditEvent,
                              expected: dict[str, Any]) -> None:
    """What was decided is what gets written: no stage edits an event after it."""
    with pytest.raises(AttributeError):
        setattr(event, "policy" if isinstance(event, PruneEvent) else "incident", "x")
    assert event.as_record() == expected
