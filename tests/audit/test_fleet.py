"""The audit trail of a fleet (docs/audit-format.md §13), on a real
PostgreSQL: replicas ship their chains line for line, the control plane
signs fleet checkpoints over every replica's head, each replica records the
fleet checkpoint it saw, and the verifier names the replica whose shipped
chain is truncated, rewritten or missing (D10)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    AuditShipper,
    ChainedAuditLog,
    fleet_event,
    published_fleet_keys,
    sign_fleet_checkpoint,
    verify_fleet,
)
from gateway.audit._format import audit_kid, public_key_document
from gateway.state import AuditTables
from tests.postgres import Cluster


class Replica:
    def __init__(self, root: Path, name: str, tables: AuditTables, **kw: Any) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = audit_kid(self.key.public_key())
        self.log = ChainedAuditLog(root / name / "audit.jsonl", self.key, self.kid,
                                   checkpoint_every=5, **kw)
        self.shipper = AuditShipper(self.log.path, name, tables)
        self.shipper.publish_keys(public_key_document(self.key, self.kid))

    def events(self, count: int, tag: str = "x") -> None:
        for i in range(count):
            self.log.record({"event": "request", "incident": f"{tag}{i}", "decision": "allow"})


@pytest.fixture()
def dsn(postgres: Cluster) -> str:
    return postgres.new_database()


@pytest.fixture()
def tables(dsn: str) -> Iterator[AuditTables]:
    opened = AuditTables(dsn)
    yield opened
    opened.close()


@pytest.fixture()
def control() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, audit_kid(key.public_key())


def all_lines(log: ChainedAuditLog) -> list[bytes]:
    from gateway.audit import segment_files, segments_dir

    seen: dict[int, bytes] = {}
    for path in [*segment_files(segments_dir(log.path)), log.path]:
        for raw in path.read_bytes().splitlines(keepends=True):
            seen.setdefault(json.loads(raw)["seq"], raw)
    return [seen[s] for s in sorted(seen)]


def test_the_shipper_copies_every_complete_line_byte_for_byte_once(
        tmp_path: Path, tables: AuditTables) -> None:
    rep = Replica(tmp_path, "data-0", tables, segment_max_bytes=2000)
    rep.events(23)
    assert rep.shipper.ship() > 0
    rep.events(7, "y")
    rep.shipper.ship()
    assert rep.shipper.ship() == 0  # nothing new: nothing shipped twice
    assert any(rep.log.segments.iterdir())  # the chain was sealed into segments meanwhile
    shipped = [line for _, line in tables.lines("data-0")]
    assert shipped == all_lines(rep.log)
    assert [seq for seq, _ in tables.lines("data-0")] == list(range(1, len(shipped) + 1))
    # A new shipper (a restart) resumes from the table, not from the start.
    again = AuditShipper(rep.log.path, "data-0", tables)
    rep.events(1, "z")
    assert again.ship() == 1


def test_a_partial_last_line_waits_for_its_end(tmp_path: Path, tables: AuditTables) -> None:
    rep = Replica(tmp_path, "data-0", tables)
    rep.events(2)
    rep.shipper.ship()
    before = tables.shipped_seq("data-0")
    with rep.log.path.open("ab") as fh:
        fh.write(b'{"event":"request","prev":')  # a write in progress
    assert rep.shipper.ship() == 0
    assert tables.shipped_seq("data-0") == before


def fleet_of_two(tmp_path: Path, tables: AuditTables,
                 control: tuple[Ed25519PrivateKey, str]) -> tuple[Replica, Replica]:
    a, b = Replica(tmp_path, "data-0", tables), Replica(tmp_path, "data-1", tables)
    key, kid = control
    AuditShipper(tmp_path / "c.jsonl", "control-0", tables).publish_keys(
        public_key_document(key, kid))
    for round_ in range(3):
        a.events(6, f"a{round_}")
        b.events(4, f"b{round_}")
        for rep in (a, b):
            rep.shipper.ship()
        signed = sign_fleet_checkpoint(tables, key, kid, now=1767225600.0 + round_)
        assert signed is not None and signed["n"] == round_ + 1
        latest = tables.latest_fleet_checkpoint()
        assert latest is not None
        for rep in (a, b):
            rep.log.record(fleet_event(*latest))  # each replica vouches for it
    for rep in (a, b):
        rep.log.checkpoint()
        rep.shipper.ship()
    return a, b


def test_a_fleet_verifies_and_each_fleet_checkpoint_names_every_head(
        tmp_path: Path, tables: AuditTables, control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    result = verify_fleet(tables, published_fleet_keys(tables))
    assert result.ok, result.problem
    assert result.fleet_checkpoints == 3
    assert set(result.replicas) == {"control-0", "data-0", "data-1"}
    assert all(result.replicas[r].ok and result.replicas[r].checkpoints >= 1
               for r in ("data-0", "data-1"))
    # The control plane published its key but shipped no chain here: noted, no failure.
    assert result.replicas["control-0"].problem == "no chain shipped"
    record = json.loads(tables.fleet_checkpoints()[-1][1])
    assert set(record["heads"]) == {"data-0", "data-1"}
    # Nothing moved since the last one: no new fleet checkpoint.
    key, kid = control
    assert sign_fleet_checkpoint(tables, key, kid, now=1767229999.0) is not None  # the events above
    assert sign_fleet_checkpoint(tables, key, kid, now=1767230000.0) is None


def drop(dsn: str, sql: str, *args: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql, args)


def test_a_truncated_replica_chain_is_named(
        dsn: str, tmp_path: Path, tables: AuditTables,
        control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    head = json.loads(tables.fleet_checkpoints()[1][1])["heads"]["data-1"]["seq"]
    # Cut data-1's shipped chain back before what fleet checkpoint 2 names
    # (its own checkpoints verify what is left: only the fleet sees the cut).
    drop(dsn, "DELETE FROM audit_lines WHERE replica = 'data-1' AND seq >= %s", head - 4)
    result = verify_fleet(tables, published_fleet_keys(tables))
    assert not result.ok and result.bad_replica == "data-1"
    assert "replica data-1: chain truncated" in result.problem


def test_a_missing_replica_chain_is_named(
        dsn: str, tmp_path: Path, tables: AuditTables,
        control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    drop(dsn, "DELETE FROM audit_lines WHERE replica = 'data-0'")
    result = verify_fleet(tables, published_fleet_keys(tables))
    assert not result.ok and result.bad_replica == "data-0"
    assert "replica data-0: chain missing" in result.problem


def test_a_rewritten_shipped_line_fails_that_replica(
        dsn: str, tmp_path: Path, tables: AuditTables,
        control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    line = dict(tables.lines("data-1"))[3]
    drop(dsn, "UPDATE audit_lines SET line = %s WHERE replica = 'data-1' AND seq = 3",
         line.replace(b'"allow"', b'"deny"'))
    result = verify_fleet(tables, published_fleet_keys(tables))
    assert not result.ok and result.bad_replica == "data-1"


@pytest.mark.parametrize("tamper", ["heads", "delete-middle", "delete-last"])
def test_a_tampered_or_deleted_fleet_checkpoint_fails(
        dsn: str, tmp_path: Path, tables: AuditTables,
        control: tuple[Ed25519PrivateKey, str], tamper: str) -> None:
    fleet_of_two(tmp_path, tables, control)
    if tamper == "heads":
        n, record = tables.fleet_checkpoints()[1]
        body = json.loads(record)
        body["heads"]["data-0"]["seq"] -= 1
        from gateway.audit._format import canonical
        drop(dsn, "UPDATE fleet_checkpoints SET record = %s WHERE n = %s", canonical(body), n)
        expected = "fleet checkpoint 2: signature does not verify"
    elif tamper == "delete-middle":
        drop(dsn, "DELETE FROM fleet_checkpoints WHERE n = 2")
        expected = "does not continue the fleet checkpoint before it"
    else:  # the replicas recorded it: its absence shows
        drop(dsn, "DELETE FROM fleet_checkpoints WHERE n = 3")
        expected = "fleet checkpoint 3 is missing"
    result = verify_fleet(tables, published_fleet_keys(tables))
    assert not result.ok and expected in result.problem, result.problem


def test_an_unknown_signer_of_a_fleet_checkpoint_fails(
        tmp_path: Path, tables: AuditTables, control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    keys = published_fleet_keys(tables)
    keys["keys"] = [k for k in keys["keys"] if k["kid"] != control[1]]
    result = verify_fleet(tables, keys)
    assert not result.ok and "fleet checkpoint 1: signed with unknown kid" in result.problem


def test_gateway_audit_verify_fleet_exit_codes(
        dsn: str, tmp_path: Path, tables: AuditTables,
        control: tuple[Ed25519PrivateKey, str]) -> None:
    fleet_of_two(tmp_path, tables, control)
    cmd = [sys.executable, "-m", "gateway", "audit", "verify", "--fleet", dsn]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] and doc["fleet_checkpoints"] == 3 and doc["keys"] == "database"
    assert "independent check" in doc["warning"]
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(published_fleet_keys(tables)))
    drop(dsn, "DELETE FROM audit_lines WHERE replica = 'data-1' AND seq > 3")
    bad = subprocess.run([*cmd, "--keys", str(keys)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["bad_replica"] == "data-1" and doc["keys"] == str(keys)
    gone = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--fleet",
                           dsn.replace("/t_", "/nope_")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert gone.returncode == 2 and "cannot read the fleet's audit tables" in gone.stderr
