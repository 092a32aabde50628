"""Sealed segments and raw-event pruning of the audit log (D10;
docs/audit-format.md §10): the log rotates at checkpoints, `verify_log`
checks every segment and the joins between them, pruning deletes only
sealed, rolled-up, old segments after a signed `audit-prune` event, and a
head deleted any other way is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac
from gateway.audit._format import segment_files
from gateway.audit._prune import AuditPruner
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from tests.audit.test_chain import Clock

DAY = 86400.0
T0 = 1767225600.0  # 2026-01-01T00:00:00Z, as in tests/audit/test_chain.py
REPO = Path(__file__).resolve().parents[2]


def event(i: int) -> dict[str, Any]:
    return {"event": "request", "incident": f"inc-{i:05d}", "tenant": "ores",
            "route": "hes-meter", "decision": "allow", "status": 200, "bytes_out": i}


def daily_log(path: Path, key: Ed25519PrivateKey, kid: str, clock: Clock, days: int,
              per_day: int = 6) -> ac.ChainedAuditLog:
    """A log that seals a segment a day (checkpoint every 3 events, one per
    4 hours): ``days`` days of events, the clock at the end of the last."""
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=3, segment_max_age_s=DAY,
                             clock=clock)
    for day in range(days):
        for i in range(per_day):
            clock.now = T0 + day * DAY + (i + 1) * DAY / (per_day + 1)
            log.record(event(day * 100 + i))
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- rotation --------------------------------------------------------------------
def test_rotation_by_size_seals_segments_that_join_up(tmp_path: Path, key: Ed25519PrivateKey,
                                                      kid: str, keys: dict[str, Any]) -> None:
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=4, segment_max_bytes=2000,
                             clock=Clock())
    for i in range(60):
        log.record(event(i))
    log.close()
    sealed = segment_files(tmp_path / "audit.segments")
    assert len(sealed) >= 3
    previous_last: bytes | None = None
    for segment in sealed:
        first_seq, last_seq = (int(x) for x in segment.stem.split("-"))
        seg_lines = lines_of(segment)
        assert json.loads(seg_lines[0])["seq"] == first_seq
        assert json.loads(seg_lines[-1])["seq"] == last_seq
        assert json.loads(seg_lines[-1])["type"] == "checkpoint"  # sealed at a checkpoint
        if previous_last is not None:
            assert seg_lines[0] == previous_last  # the anchor: a byte-for-byte copy
        previous_last = seg_lines[-1]
        assert (segment.stat().st_mode & 0o777) == 0o600
    assert lines_of(path)[0] == previous_last
    result = ac.verify_log(path, keys)
    assert (result.ok, result.events, result.files, result.first_seq) == \
        (True, 60, len(sealed) + 1, 1), result.problem
    assert result.checkpoints == 15 and result.last_seq == 75  # every 4 events; anchors once
    one = ac.verify(sealed[1], keys, allow_anchor=True)
    assert one.ok and one.first_seq > 1
    # Without allow_anchor a file must start at genesis.
    alone = ac.verify(sealed[1], keys)
    assert not alone.ok and "line(s) deleted or moved" in alone.problem


def test_rotation_by_age_and_reopening_keep_one_chain(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    daily_log(path, key, kid, clock, days=3).close()
    log = daily_log(path, key, kid, clock, days=2)  # reopened: continues
    log.close()
    sealed = segment_files(tmp_path / "audit.segments")
    assert len(sealed) >= 2
    result = ac.verify_log(path, keys)
    assert result.ok and result.events == 30, result.problem


def test_an_interrupted_rotation_is_finished_on_open(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=3, clock=Clock())
    for i in range(7):
        log.record(event(i))
    log.close()  # ends with a checkpoint at seq 10
    # The crash: the file was renamed into the segments, the new one not yet in place.
    (tmp_path / "audit.segments").mkdir()
    os.rename(path, tmp_path / "audit.segments" / "000000000001-000000000010.jsonl")
    (tmp_path / ".audit.jsonl.next").write_bytes(b"partial")
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=3, segment_max_bytes=10**6,
                             clock=Clock())
    assert not (tmp_path / ".audit.jsonl.next").exists()
    assert json.loads(lines_of(path)[0])["seq"] == 10
    log.record(event(99))
    log.close()
    result = ac.verify_log(path, keys)
    assert (result.ok, result.events, result.files) == (True, 8, 2), result.problem


# -- verify_log: what it catches --------------------------------------------------
@pytest.fixture()
def rotated(tmp_path: Path, key: Ed25519PrivateKey, kid: str) -> Path:
    path = tmp_path / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=4, segment_max_bytes=1500,
                             clock=Clock())
    for i in range(50):
        log.record(event(i))
    log.close()
    assert len(segment_files(tmp_path / "audit.segments")) >= 4
    return path


def test_a_middle_segment_deleted(rotated: Path, keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[1].unlink()
    result = ac.verify_log(rotated, keys)
    assert not result.ok and result.file == str(sealed[2])
    assert "does not continue" in result.problem and "missing" in result.problem


def test_two_segments_swapped(rotated: Path, keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    a, b = sealed[1].read_bytes(), sealed[2].read_bytes()
    sealed[1].write_bytes(b)
    sealed[2].write_bytes(a)
    result = ac.verify_log(rotated, keys)
    assert not result.ok and result.file == str(sealed[1]), result.problem


def test_a_byte_edited_in_a_segment_names_file_and_seq(rotated: Path,
                                                       keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    seg_lines = lines_of(sealed[2])
    target = json.loads(seg_lines[2])["seq"]
    seg_lines[2] = seg_lines[2].replace(b'"status":200', b'"status":201')
    sealed[2].write_bytes(b"".join(seg_lines))
    result = ac.verify_log(rotated, keys)
    assert not result.ok
    assert (result.file, result.first_bad_line, result.first_bad_seq) == \
        (str(sealed[2]), 3, target)
    assert result.problem.startswith(f"{sealed[2].name}: line 3 (seq {target}): hash mismatch")


def test_a_segment_cut_before_its_checkpoint(rotated: Path, keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[0].write_bytes(b"".join(lines_of(sealed[0])[:-1]))
    result = ac.verify_log(rotated, keys)
    assert not result.ok and "not sealed" in result.problem


def test_the_head_deleted_without_a_prune_record(rotated: Path, keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[0].unlink()
    sealed[1].unlink()
    result = ac.verify_log(rotated, keys)
    assert not result.ok and result.file == str(sealed[2])
    assert "no signed audit-prune event" in result.problem
    assert "lines deleted from the start" in result.problem


def test_a_segment_that_does_not_start_at_an_anchor(rotated: Path,
                                                    keys: dict[str, Any]) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[0].unlink()
    sealed[1].write_bytes(b"".join(lines_of(sealed[1])[1:]))  # anchor removed
    result = ac.verify_log(rotated, keys)
    assert not result.ok and "without a signed anchor" in result.problem


def test_an_emptied_oldest_segment(rotated: Path, keys: dict[str, Any]) -> None:
    """An empty file in the place of the oldest segment is no evidence of
    anything: it must not let the next file pass as the start of the log."""
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[0].write_bytes(b"")
    result = ac.verify_log(rotated, keys)
    assert not result.ok and result.file == str(sealed[0]), result.problem
    assert "empty segment" in result.problem


def prune_record(anchor: Path, anchor_hash: str | None = None) -> dict[str, Any]:
    first = json.loads(lines_of(anchor)[0])
    return {"event": "audit-prune", "actor": "gateway", "action": "prune",
            "segments": [], "pruned_from_seq": 1, "pruned_through_seq": first["seq"] - 1,
            "anchor_seq": first["seq"], "anchor_hash": anchor_hash or first["hash"],
            "policy": "raw_retention_days=1", "rolled_up_through": T0}


def test_an_unsigned_prune_record_accounts_for_nothing(
        rotated: Path, keys: dict[str, Any]) -> None:
    """§10: the record must be followed by a checkpoint. Anyone can append a
    well-chained line after the last one; only the key holder can sign it."""
    sealed = segment_files(rotated.parent / "audit.segments")
    record = prune_record(sealed[1])
    lines = lines_of(rotated)
    last = json.loads(lines[-1])
    fields = {**record, "seq": last["seq"] + 1, "prev": last["hash"], "ts": T0}
    body = ac.canonical(fields)
    rotated.write_bytes(b"".join([*lines, ac.seal(body, ac.line_hash(last["hash"], body))]))
    assert ac.verify_log(rotated, keys).ok  # an uncovered tail, so far legitimate
    sealed[0].unlink()
    result = ac.verify_log(rotated, keys)
    assert not result.ok and "no signed audit-prune event" in result.problem, result.problem


@pytest.mark.parametrize("names_the_anchor", [True, False])
def test_a_prune_record_must_name_the_anchor_by_its_hash(
        rotated: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any],
        names_the_anchor: bool) -> None:
    sealed = segment_files(rotated.parent / "audit.segments")
    log = ac.ChainedAuditLog(rotated, key, kid, clock=Clock())
    log.record(prune_record(sealed[1], None if names_the_anchor else "ab" * 32))
    log.close()  # signs it
    sealed[0].unlink()
    result = ac.verify_log(rotated, keys)
    assert result.ok is names_the_anchor, result.problem


def test_deleting_the_newest_files_with_the_prune_record_is_detected(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    """§10: only the files present count. Cut the active file, which holds
    the only prune record, and the remaining segments no longer account for
    their start: a failure at line 1 of the oldest file."""
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, key, kid, clock, days=6)
    outcome = pruner(log, keys, clock, 2.5, [clock.now]).prune()
    assert outcome.segments
    log.close()
    assert ac.verify_log(path, keys).ok
    assert b'"audit-prune"' in path.read_bytes()  # the record is in the active file
    remaining = segment_files(log.segments)
    assert remaining and all(b'"audit-prune"' not in f.read_bytes() for f in remaining)
    path.unlink()
    result = ac.verify_log(path, keys)
    assert not result.ok and result.file == str(remaining[0]), result.problem
    assert result.first_bad_line == 1 and "no signed audit-prune event" in result.problem


# -- pruning ------------------------------------------------------------------------
def pruner(log: ac.ChainedAuditLog, keys: dict[str, Any], clock: Clock, days: float,
           rolled: list[float | None]) -> AuditPruner:
    return AuditPruner(log, raw_retention_days=days, rolled_up_through=lambda: rolled[0],
                       public_keys=keys, clock=clock)


def test_two_years_of_daily_segments_keep_exactly_the_retention(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=1000, segment_max_age_s=DAY,
                             checkpoint_interval_s=DAY, clock=clock)
    rolled: list[float | None] = [None]
    prune = pruner(log, keys, clock, 31, rolled)
    pruned_total = 0
    for day in range(730):  # two simulated years, one event an hour, pruned nightly
        for hour in range(24):
            clock.now = T0 + day * DAY + hour * 3600 + 60
            log.record(event(day * 24 + hour))
        rolled[0] = clock.now  # the usage ledger flushed
        clock.now = T0 + (day + 1) * DAY  # midnight
        log.checkpoint()  # a day older than the bound: seals the day's segment
        outcome = prune.prune()
        pruned_total += len(outcome.segments)
        oldest = segment_files(log.segments)[0]
        last_ts = json.loads(lines_of(oldest)[-1])["ts"]
        # Exact: the oldest kept segment ends within the last 31 days, and
        # nothing older than 31 days is left.
        assert clock.now - 31 * DAY < last_ts <= clock.now
    assert pruned_total == 730 - 31
    assert len(segment_files(log.segments)) == 31
    log.close()
    result = ac.verify_log(path, keys)
    assert result.ok and result.first_seq > 1, result.problem
    # 31 days of hourly events, and each night's audit-prune event (in the 31
    # kept segments and the active file).
    assert result.events == 31 * 24 + 32


def test_the_boundary_is_exact_to_the_second(tmp_path: Path, key: Ed25519PrivateKey,
                                             kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, key, kid, clock, days=3)  # seals at T0+1d, T0+2d-ish
    sealed = segment_files(log.segments)
    last_ts = json.loads(lines_of(sealed[0])[-1])["ts"]
    rolled: list[float | None] = [clock.now + DAY]
    prune = pruner(log, keys, clock, 1, rolled)
    clock.now = last_ts + DAY - 1  # one second short of the retention
    assert prune.prune().segments == ()
    assert segment_files(log.segments)[0] == sealed[0]
    clock.now = last_ts + DAY  # exactly the retention: may go
    assert prune.prune().segments == (sealed[0].name,)
    log.close()


def test_a_log_with_no_sealed_segment_yet_prunes_nothing_and_says_so(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    # A fresh gateway (the demo's first minutes): segments are configured but
    # none is sealed yet. The nightly pruner keeps everything without failing.
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = ac.ChainedAuditLog(path, key, kid, segment_max_age_s=DAY, clock=clock)
    log.record(event(1))
    assert segment_files(log.segments) == []
    outcome = pruner(log, keys, clock, 1, [clock.now]).prune()
    assert outcome.segments == ()
    log.close()
    assert ac.verify_log(path, keys).ok


def test_nothing_is_pruned_before_it_is_rolled_up(tmp_path: Path, key: Ed25519PrivateKey,
                                                  kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, key, kid, clock, days=5)
    clock.now += 30 * DAY
    rolled: list[float | None] = [None]
    prune = pruner(log, keys, clock, 1, rolled)
    assert prune.prune().kept_because == "usage not rolled up yet"
    rolled[0] = T0 + 1.5 * DAY  # the ledger flushed only the first day and a half
    outcome = prune.prune()
    assert len(outcome.segments) == 1, outcome  # the first day; not the second
    rolled[0] = clock.now
    assert len(prune.prune().segments) >= 3
    log.close()


def test_pruning_is_recorded_signed_and_verifiable(tmp_path: Path, key: Ed25519PrivateKey,
                                                   kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, key, kid, clock, days=4)
    clock.now += 10 * DAY
    outcome = pruner(log, keys, clock, 2, [clock.now]).prune()
    assert len(outcome.segments) >= 2
    log.close()
    everything = [x for f in [*segment_files(log.segments), path] for x in lines_of(f)]
    records = [json.loads(x) for x in everything if b'"audit-prune"' in x]
    assert len({r["seq"] for r in records}) == 1  # (an anchor may repeat a line, not this)
    rec = records[0]
    assert (rec["anchor_seq"], rec["pruned_through_seq"]) == \
        (outcome.anchor_seq, outcome.anchor_seq - 1)
    assert rec["segments"] == list(outcome.segments) and rec["pruned_from_seq"] == 1
    assert rec["policy"] == "raw_retention_days=2"
    result = ac.verify_log(path, keys)
    assert result.ok and result.first_seq == outcome.anchor_seq, result.problem
    assert not (log.segments / outcome.segments[0]).exists()
    # A later deletion of the next segment, with no record of its own, is caught.
    remaining = segment_files(log.segments)
    if remaining:
        remaining[0].unlink()
        assert "no signed audit-prune event" in ac.verify_log(path, keys).problem


def test_a_tampered_segment_is_kept_as_evidence(tmp_path: Path, key: Ed25519PrivateKey,
                                                kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock()
    log = daily_log(path, key, kid, clock, days=4)
    sealed = segment_files(log.segments)
    seg_lines = lines_of(sealed[1])
    seg_lines[1] = seg_lines[1].replace(b'"status":200', b'"status":500')
    sealed[1].write_bytes(b"".join(seg_lines))
    clock.now += 30 * DAY
    outcome = pruner(log, keys, clock, 1, [clock.now]).prune()
    # Not even the first: its end is signed only in the tampered second one.
    assert outcome.segments == ()
    assert "does not verify" in outcome.kept_because
    assert sealed[1].name + ": line 2" in outcome.kept_because
    assert sealed[0].exists() and sealed[1].exists()
    log.close()


def backdated(line: bytes, ts: float) -> bytes:
    """The line with another ``ts`` and its hash recomputed: what anyone who
    can write the file can do to a checkpoint no later checkpoint covers."""
    fields = json.loads(line)
    del fields["hash"]
    fields["ts"] = ts
    body = ac.canonical(fields)
    return ac.seal(body, ac.line_hash(fields["prev"], body))


def two_segments(path: Path, key: Ed25519PrivateKey, kid: str, clock: Clock) -> list[Path]:
    """Segment A ends at T0, segment B ten days later; the active file is B's
    last checkpoint alone (its anchor)."""
    log = ac.ChainedAuditLog(path, key, kid, segment_max_bytes=1, clock=clock,
                             checkpoint_interval_s=100 * DAY)
    for when in (T0, T0 + 10 * DAY):
        clock.now = when
        for i in range(3):
            log.record(event(i))
        log.checkpoint()
    log.close()
    sealed = segment_files(log.segments)
    assert len(sealed) == 2 and len(lines_of(path)) == 1
    return sealed


def test_a_backdated_newest_segment_is_not_pruned(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    """Format §9: the last checkpoint's own ts is not signed. Backdating it
    (and its copy, the active file's anchor) must not get the gateway to sign
    the deletion of a segment that is not past the retention."""
    path, clock = tmp_path / "audit.jsonl", Clock()
    a, b = two_segments(path, key, kid, clock)
    forged = backdated(lines_of(b)[-1], T0 + 1)
    b.write_bytes(b"".join([*lines_of(b)[:-1], forged]))
    path.write_bytes(forged)
    assert ac.verify_log(path, keys).ok  # undetectable so far
    clock.now = T0 + 11 * DAY
    log = ac.ChainedAuditLog(path, key, kid, segment_max_bytes=1, clock=clock,
                             checkpoint_interval_s=100 * DAY)
    outcome = pruner(log, keys, clock, 5, [clock.now]).prune()
    log.close()
    assert outcome.segments == (a.name,) and b.exists()
    assert "newest sealed segment" in outcome.kept_because


def test_a_segment_whose_end_the_next_does_not_continue_is_kept(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    path, clock = tmp_path / "audit.jsonl", Clock(T0 + 10 * DAY)
    log = ac.ChainedAuditLog(path, key, kid, segment_max_bytes=1, clock=clock,
                             checkpoint_interval_s=100 * DAY)
    for day in range(3):
        clock.now = T0 + (10 + day) * DAY
        log.record(event(day))
        log.checkpoint()
    log.close()
    a, b, _ = segment_files(log.segments)
    # A's end backdated in A only: A verifies on its own, B on its own.
    a.write_bytes(b"".join([*lines_of(a)[:-1], backdated(lines_of(a)[-1], T0)]))
    assert ac.verify(a, keys, allow_anchor=True).ok and ac.verify(b, keys, allow_anchor=True).ok
    clock.now = T0 + 12 * DAY
    log = ac.ChainedAuditLog(path, key, kid, segment_max_bytes=1, clock=clock,
                             checkpoint_interval_s=100 * DAY)
    outcome = pruner(log, keys, clock, 5, [clock.now]).prune()
    log.close()
    assert outcome.segments == () and a.exists()
    assert "does not continue" in outcome.kept_because


# -- configuration and command line ----------------------------------------------------
def config_doc(audit: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "gateway": {"trust_domain": "t", "tenants_dir": "t", "relations": "r.json",
                    "data_dir": "d"},
        "tls": {"cert": "c", "key": "k", "trust_bundle": "b"},
        "upstreams": {name: {"url": "http://127.0.0.1:1"}
                      for name in ("hes", "clearing", "cmh", "itsm")}}
    if audit is not None:
        doc["audit"] = audit
    return doc


def test_the_audit_table_of_the_config(tmp_path: Path) -> None:
    default = GatewayConfig.from_mapping(config_doc(None), base=tmp_path, source="g.toml")
    assert (default.audit.raw_retention_days, default.audit.segment_max_age_s) == (90, DAY)
    cfg = GatewayConfig.from_mapping(config_doc(
        {"raw_retention_days": 0, "segment_max_mb": 8, "segment_max_age_h": 6,
         "checkpoint_every": 50}), base=tmp_path, source="g.toml")
    assert (cfg.audit.raw_retention_days, cfg.audit.segment_max_bytes,
            cfg.audit.segment_max_age_s, cfg.audit.checkpoint_every) == \
        (0, 8 * 1024 * 1024, 6 * 3600, 50)
    with pytest.raises(ConfigError, match=r"g.toml: audit.keep_days: unknown key"):
        GatewayConfig.from_mapping(config_doc({"keep_days": 3}), base=tmp_path,
                                   source="g.toml")
    with pytest.raises(ConfigError, match=r"audit.raw_retention_days: must be a number"):
        GatewayConfig.from_mapping(config_doc({"raw_retention_days": -1}), base=tmp_path,
                                   source="g.toml")


def test_gateway_audit_verify_reads_every_segment(rotated: Path, keys: dict[str, Any],
                                                  tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keys))

    def run() -> tuple[int, dict[str, Any]]:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "verify", "--log", str(rotated),
             "--keys", str(keys_file)], capture_output=True, text=True, timeout=60,
            check=False, cwd=REPO)
        return proc.returncode, json.loads(proc.stdout)

    code, out = run()
    assert code == 0 and out["ok"] and out["events"] == 50 and out["files"] >= 5, out
    sealed = segment_files(rotated.parent / "audit.segments")
    sealed[1].unlink()
    code, out = run()
    assert code == 1 and out["first_bad_file"] == str(sealed[2]), out
